"""The whole schema on one MetaData. Each area declares its tables in its own module; this gathers them."""

from . import (  # noqa: F401  (imported for their tables)
    audit_tables,
    cds_tables,
    dicom_results_tables,
    fhir_tables,
    messaging_tables,
    monitoring_tables,
    web_tables,
)
from .tables import metadata

__all__ = ["metadata"]
