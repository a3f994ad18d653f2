"""Tables of the CDS Hooks door (radtriage.cds): the cards it issued and the feedback EHRs sent about them.

Cards are kept (not their text: their id, service, patient and result) so that feedback, which names only a
card's uuid, can be tied to the patient and result it was about. Migration 0007b creates them;
`radtriage.app.storage.cds_store` writes and reads them.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, Index, Integer, String, Table

from .tables import ID, metadata

cds_cards = Table(
    "cds_cards",
    metadata,
    Column("uuid", String(36), primary_key=True),
    Column("service_id", String(64), nullable=False),
    Column("hook_instance", String(64), nullable=False),
    Column("issuer", String(255), nullable=False),  # the EHR's iss ("" when JWTs are not checked)
    Column("patient_ref", String(255), nullable=False),  # patient data
    Column("job_id", String(ID)),  # the result the card shows, if one
    Column("issued_at", DateTime(timezone=True), nullable=False),
)

cds_feedback = Table(
    "cds_feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("card_uuid", String(36), nullable=False),
    Column("service_id", String(64), nullable=False),
    Column("issuer", String(255), nullable=False),
    Column("outcome", String(16), nullable=False),  # accepted | overridden
    Column("accepted_suggestions", JSON, nullable=False),  # [suggestion uuid, ...]
    Column("override_reason", JSON),  # {"reason": Coding, "userComment": ...}; may hold free text
    Column("outcome_timestamp", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)
Index("ix_cds_feedback_card_uuid", cds_feedback.c.card_uuid)
