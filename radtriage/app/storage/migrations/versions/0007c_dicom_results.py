"""Outbox of triage results to store in the PACS as DICOM SR and Secondary Capture (issue 13)

Revision ID: 0007c
Revises: 0007b
"""

import sqlalchemy as sa
from alembic import op

revision = "0007c"
down_revision = "0007b"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dicom_results_outbox",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_dicom_results_outbox")),
    )
    op.create_index("ix_dicom_results_outbox_state_next", "dicom_results_outbox", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("dicom_results_outbox")
