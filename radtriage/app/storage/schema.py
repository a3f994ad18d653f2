"""The whole schema on one MetaData. Each area declares its tables in its own module; this gathers them."""

from . import audit_tables, cds_tables, fhir_tables, messaging_tables, monitoring_tables, web_tables  # noqa: F401
from .tables import metadata

__all__ = ["metadata"]
