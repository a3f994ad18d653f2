"""monitoring: final reports and their labels, drafts and threshold versions per result, local threshold
versions, image observations (input drift), monitoring alerts

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_observations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("view_position", sa.String(length=16), nullable=True),
        sa.Column("manufacturer", sa.String(length=64), nullable=True),
        sa.Column("patient_age", sa.Float(), nullable=True),
        sa.Column("patient_sex", sa.String(length=1), nullable=True),
        sa.Column("photometric", sa.String(length=16), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("pixel_mean", sa.Float(), nullable=True),
        sa.Column("pixel_std", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_observations")),
    )
    with op.batch_alter_table("image_observations", schema=None) as batch_op:
        batch_op.create_index("ix_image_observations_recorded_at", ["recorded_at"], unique=False)
        batch_op.create_index("ix_image_observations_sop_instance_uid", ["sop_instance_uid"], unique=False)

    op.create_table(
        "monitoring_alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("limit_value", sa.Float(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitoring_alerts")),
    )
    with op.batch_alter_table("monitoring_alerts", schema=None) as batch_op:
        batch_op.create_index("ix_monitoring_alerts_raised_at", ["raised_at"], unique=False)

    op.create_table(
        "threshold_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("target_sensitivity", sa.Float(), nullable=True),
        sa.Column("cases", sa.Integer(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_threshold_versions")),
        sa.UniqueConstraint("model_sha256", "version", name="uq_threshold_versions_model_sha256"),
    )
    op.create_table(
        "final_reports",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("report_key", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("coded", sa.JSON(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("service_request_ref", sa.String(length=255), nullable=True),
        sa.Column("placer_order_number", sa.String(length=64), nullable=True),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("match", sa.String(length=16), nullable=False),
        sa.Column("quality", sa.String(length=16), nullable=False),
        sa.Column("superseded", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_final_reports_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_final_reports")),
    )
    with op.batch_alter_table("final_reports", schema=None) as batch_op:
        batch_op.create_index("ix_final_reports_job_id", ["job_id"], unique=False)
        batch_op.create_index("ix_final_reports_received_at", ["received_at"], unique=False)
        batch_op.create_index("ix_final_reports_source_key", ["source", "report_key"], unique=False)

    op.create_table(
        "result_annotations",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("thresholds_version", sa.String(length=32), nullable=False),
        sa.Column("draft_mode", sa.String(length=8), nullable=False),
        sa.Column("draft_text", sa.Text(), nullable=True),
        sa.Column("draft_findings", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_result_annotations_job_id_jobs")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_result_annotations")),
    )
    op.create_table(
        "report_labels",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_ref", sa.String(length=255), nullable=False),
        sa.Column("image_path", sa.String(length=1024), nullable=True),
        sa.Column("view", sa.String(length=16), nullable=True),
        sa.Column("sex", sa.String(length=1), nullable=True),
        sa.Column("age", sa.Float(), nullable=True),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("certainty", sa.String(length=16), nullable=False),
        sa.Column("report_ref", sa.String(length=255), nullable=True),
        sa.Column("final_report_id", sa.String(length=32), nullable=True),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["final_report_id"], ["final_reports.id"], name=op.f("fk_report_labels_final_report_id_final_reports")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_report_labels_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_labels")),
    )
    with op.batch_alter_table("report_labels", schema=None) as batch_op:
        batch_op.create_index("ix_report_labels_job_id", ["job_id"], unique=False)
        batch_op.create_index("ix_report_labels_study_instance_uid", ["study_instance_uid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("report_labels", schema=None) as batch_op:
        batch_op.drop_index("ix_report_labels_study_instance_uid")
        batch_op.drop_index("ix_report_labels_job_id")

    op.drop_table("report_labels")
    op.drop_table("result_annotations")
    with op.batch_alter_table("final_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_final_reports_source_key")
        batch_op.drop_index("ix_final_reports_received_at")
        batch_op.drop_index("ix_final_reports_job_id")

    op.drop_table("final_reports")
    op.drop_table("threshold_versions")
    with op.batch_alter_table("monitoring_alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_monitoring_alerts_raised_at")

    op.drop_table("monitoring_alerts")
    with op.batch_alter_table("image_observations", schema=None) as batch_op:
        batch_op.drop_index("ix_image_observations_sop_instance_uid")
        batch_op.drop_index("ix_image_observations_recorded_at")

    op.drop_table("image_observations")
