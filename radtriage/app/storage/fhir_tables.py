"""Tables of the FHIR door (radtriage.fhir): the order resources an EHR sent, served back by id and search.

An EHR's ServiceRequest (and the ImagingStudy it came with) is kept as sent, under the id the service answered
with, so that ``Task.basedOn`` and ``DiagnosticReport.basedOn`` point at something a client can read. Migration
0007 creates them; `radtriage.app.storage.fhir_resource_store` writes and reads them.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, ForeignKeyConstraint, Index, String, Table

from .tables import ID, metadata

fhir_resources = Table(
    "fhir_resources",
    metadata,
    Column("resource_type", String(32), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("order_id", String(ID), nullable=False),
    Column("patient_ref", String(255), nullable=False),  # as `ImagingOrder.patient_ref`: patient data
    Column("resource", JSON, nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(["order_id"], ["orders.id"], name="fk_fhir_resources_order_id_orders"),
)
Index("ix_fhir_resources_patient_ref", fhir_resources.c.resource_type, fhir_resources.c.patient_ref)
Index("ix_fhir_resources_order_id", fhir_resources.c.order_id)

#: One row per identifier of a stored resource, for token searches (``identifier=system|value``).
fhir_resource_identifiers = Table(
    "fhir_resource_identifiers",
    metadata,
    Column("resource_type", String(32), primary_key=True),
    Column("resource_id", String(64), primary_key=True),
    Column("system", String(255), primary_key=True),  # "" when the identifier has none
    Column("value", String(255), primary_key=True),
    ForeignKeyConstraint(
        ["resource_type", "resource_id"],
        ["fhir_resources.resource_type", "fhir_resources.id"],
        name="fk_fhir_resource_identifiers_resource",
        ondelete="CASCADE",
    ),
)
Index("ix_fhir_resource_identifiers_value", fhir_resource_identifiers.c.value)
