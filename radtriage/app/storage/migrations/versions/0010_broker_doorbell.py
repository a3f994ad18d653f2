"""jobs: when the job's id was last handed to the broker, and at which priority (the Celery queue's sweeper)

Revision ID: 0010
Revises: 0007c
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0007c"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("enqueued_priority", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("enqueued_priority")
        batch.drop_column("enqueued_at")
