"""automatic retries: when a failed job is next tried, and until when it is tried

Revision ID: 0009
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("retry_until", sa.DateTime(timezone=True), nullable=True))
    op.create_index(op.f("ix_jobs_next_attempt_at"), "jobs", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_next_attempt_at"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retry_until")
        batch.drop_column("next_attempt_at")
