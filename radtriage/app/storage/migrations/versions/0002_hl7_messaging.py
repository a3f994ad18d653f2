"""HL7 v2 door: message log (MSH-10 de-duplication), HL7 order context, outbox to the RIS

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hl7_message_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sender", sa.String(length=255), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=False),
        sa.Column("message_code", sa.String(length=16), nullable=False),
        sa.Column("payload_sha256", sa.String(length=64), nullable=False),
        sa.Column("ack_code", sa.String(length=2), nullable=False),
        sa.Column("ack", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_message_log")),
        sa.UniqueConstraint("sender", "control_id", name="uq_hl7_message_log_sender_control_id"),
    )
    op.create_table(
        "hl7_order_context",
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_hl7_order_context_order_id_orders")),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_hl7_order_context")),
    )
    op.create_table(
        "hl7_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("patient_key", sa.String(length=64), nullable=False),
        sa.Column("control_id", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_hl7_outbox_order_id_orders")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_outbox")),
        sa.UniqueConstraint("job_id", "kind", name="uq_hl7_outbox_job_id_kind"),
    )
    with op.batch_alter_table("hl7_outbox", schema=None) as batch_op:
        batch_op.create_index("ix_hl7_outbox_patient_key_id", ["patient_key", "id"], unique=False)
        batch_op.create_index("ix_hl7_outbox_state_id", ["state", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("hl7_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_hl7_outbox_state_id")
        batch_op.drop_index("ix_hl7_outbox_patient_key_id")

    op.drop_table("hl7_outbox")
    op.drop_table("hl7_order_context")
    op.drop_table("hl7_message_log")
