"""FHIR order resources (ServiceRequest, ImagingStudy) kept as the EHR sent them

Revision ID: 0007
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fhir_resources",
        sa.Column("resource_type", sa.String(length=32), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("patient_ref", sa.String(length=255), nullable=False),
        sa.Column("resource", sa.JSON(), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name="fk_fhir_resources_order_id_orders"),
        sa.PrimaryKeyConstraint("resource_type", "id", name=op.f("pk_fhir_resources")),
    )
    op.create_index("ix_fhir_resources_patient_ref", "fhir_resources", ["resource_type", "patient_ref"])
    op.create_index("ix_fhir_resources_order_id", "fhir_resources", ["order_id"])
    op.create_table(
        "fhir_resource_identifiers",
        sa.Column("resource_type", sa.String(length=32), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["resource_type", "resource_id"],
            ["fhir_resources.resource_type", "fhir_resources.id"],
            name="fk_fhir_resource_identifiers_resource",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "resource_type", "resource_id", "system", "value", name=op.f("pk_fhir_resource_identifiers")
        ),
    )
    op.create_index("ix_fhir_resource_identifiers_value", "fhir_resource_identifiers", ["value"])


def downgrade() -> None:
    op.drop_table("fhir_resource_identifiers")
    op.drop_table("fhir_resources")
