"""severity, not assessed and shadow mode on results; site validations and shadow-mode overrides (issue 10)

Revision ID: 0006
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("results", sa.Column("severity", sa.Float(), nullable=True))
    # Results stored before this revision were made by models and policies that were never compared: "[]".
    op.add_column("results", sa.Column("not_assessed", sa.JSON(), nullable=False, server_default="[]"))
    op.add_column("results", sa.Column("shadow", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("results", sa.Column("model_priority", sa.Integer(), nullable=True))
    op.create_table(
        "site_validations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_by", sa.String(length=255), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_site_validations")),
    )
    op.create_index("ix_site_validations_model_sha256", "site_validations", ["model_sha256"])
    op.create_table(
        "shadow_overrides",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("recorded_by", sa.String(length=255), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_overrides")),
    )
    op.create_index("ix_shadow_overrides_model_sha256", "shadow_overrides", ["model_sha256"])


def downgrade() -> None:
    op.drop_index("ix_shadow_overrides_model_sha256", table_name="shadow_overrides")
    op.drop_table("shadow_overrides")
    op.drop_index("ix_site_validations_model_sha256", table_name="site_validations")
    op.drop_table("site_validations")
    with op.batch_alter_table("results") as batch:
        batch.drop_column("model_priority")
        batch.drop_column("shadow")
        batch.drop_column("not_assessed")
        batch.drop_column("severity")
