"""Tables of the HL7 v2 door (radtriage.hl7): message log, HL7 order context and outbox.

They live on the shared `metadata`, so Alembic migrations and the schema test see one schema; migration 0002
creates them. The rows are written by `radtriage.hl7.store` and `radtriage.hl7.outbox`.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint

from .tables import ID, metadata

#: One row per message received and answered with AA or AE: the sender and MSH-10 identify a message, and a
#: message sent again is answered with the stored ACK and changes nothing (HL7 v2.5.1 section 2.10.1).
#: AR answers are not stored: AR means "try again later", so the retry must be processed.
hl7_message_log = Table(
    "hl7_message_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sender", String(255), nullable=False),  # MSH-3.1^MSH-4.1
    Column("control_id", String(199), nullable=False),  # MSH-10 (ST 199 in v2.5)
    Column("message_code", String(16), nullable=False),  # e.g. ORM^O01
    Column("payload_sha256", String(64), nullable=False),  # spots a re-used MSH-10 without keeping the message
    Column("ack_code", String(2), nullable=False),
    Column("ack", Text, nullable=False),  # the exact ACK sent (holds no patient data)
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("sender", "control_id", name="uq_hl7_message_log_sender_control_id"),
)

#: The HL7 identifiers of each order received over HL7 (placer/filler numbers with their namespaces, PID-3,
#: OBR-4, accession, requested procedure and step ids), which the priority updates to the RIS repeat.
hl7_order_context = Table(
    "hl7_order_context",
    metadata,
    Column("order_id", String(ID), ForeignKey("orders.id"), primary_key=True),
    Column("context", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: Messages to the RIS. Written by the pipeline's publishing stage (the ResultPublisher), sent by
#: the outbox sender: in id order per patient, retried with backoff, parked on AE for a person to look at.
hl7_outbox = Table(
    "hl7_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", String(ID), ForeignKey("orders.id"), nullable=False),
    Column("job_id", String(ID), nullable=False),
    Column("kind", String(16), nullable=False),  # "priority" (ORM XO / OMI) or "result" (ORU)
    Column("patient_key", String(64), nullable=False),  # sha256 of the patient reference: the ordering key
    Column("control_id", String(64), nullable=False),  # MSH-10 of the payload
    Column("payload", Text, nullable=False),  # the ER7 message; encoded per its MSH-18 when sent
    Column("state", String(16), nullable=False),  # pending | sent | parked | discarded
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", String(255)),  # no patient data: "AR 207", "no answer: ConnectionRefusedError"
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
    UniqueConstraint("job_id", "kind", name="uq_hl7_outbox_job_id_kind"),
)
Index("ix_hl7_outbox_state_id", hl7_outbox.c.state, hl7_outbox.c.id)
Index("ix_hl7_outbox_patient_key_id", hl7_outbox.c.patient_key, hl7_outbox.c.id)
