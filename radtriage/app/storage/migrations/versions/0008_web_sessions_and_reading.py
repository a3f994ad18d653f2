"""web sessions revocable on the server, sign-in failures (lockout, slow-down), claimed/read studies

Revision ID: 0008
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
    )
    op.create_index("ix_web_sessions_username", "web_sessions", ["username"])
    op.create_table(
        "web_sign_in_failures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("address", sa.String(length=255), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sign_in_failures")),
    )
    op.create_index("ix_web_sign_in_failures_username", "web_sign_in_failures", ["username"])
    op.create_index("ix_web_sign_in_failures_address", "web_sign_in_failures", ["address"])
    op.create_table(
        "study_reading",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("read_by", sa.String(length=64), nullable=True),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_study_reading")),
    )


def downgrade() -> None:
    op.drop_table("study_reading")
    op.drop_index("ix_web_sign_in_failures_address", "web_sign_in_failures")
    op.drop_index("ix_web_sign_in_failures_username", "web_sign_in_failures")
    op.drop_table("web_sign_in_failures")
    op.drop_index("ix_web_sessions_username", "web_sessions")
    op.drop_table("web_sessions")
