"""The outbox of results to store in the PACS by STOW-RS (radtriage.dicom_results). Migration 0007c creates it."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, String, Table

from .tables import ID, metadata

dicom_results_outbox = Table(
    "dicom_results_outbox",
    metadata,
    Column("job_id", String(ID), primary_key=True),
    Column("state", String(16), nullable=False),  # pending | sent | parked
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", String(200)),  # a status or an exception type, never patient data
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
)
Index("ix_dicom_results_outbox_state_next", dicom_results_outbox.c.state, dicom_results_outbox.c.next_attempt_at)
