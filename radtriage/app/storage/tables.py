"""The relational schema. Alembic migrations in `migrations/versions` create it; a test checks they agree."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# Stable constraint names, so migrations can refer to them on every database.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = 32  # uuid4 hex

orders = Table(
    "orders",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("source", String(16), nullable=False),
    Column("source_key", String(255), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("patient_ref", String(255), nullable=False),
    Column("requested_priority", Integer, nullable=False),
    Column("accession_number", String(64)),
    Column("placer_order_number", String(64)),
    Column("filler_order_number", String(64)),
    Column("procedure_code", String(64)),
    Column("ordering_provider", String(255)),
    Column("service_request_ref", String(255)),
    Column("imaging_study_ref", String(255)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("source", "source_key", name="uq_orders_source_key"),
)
Index("ix_orders_service_request_ref", orders.c.service_request_ref)
Index("ix_orders_patient_ref", orders.c.patient_ref)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("order_id", String(ID), ForeignKey("orders.id"), nullable=False, unique=True),
    Column("state", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("failure_code", String(32)),
    Column("failure_detail", Text),
    Column("retryable", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Automatic retries (radtriage.app.retry, migration 0009): when a job that failed for a retryable reason is
    # tried next (NULL: not waiting), and the end of its retry window (NULL: no window open).
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("retry_until", DateTime(timezone=True)),
    # With a broker (Celery): when the job id was last handed to it and at which priority; NULL when the broker
    # could not take it. The sweeper (radtriage.app.sweeper) re-queues from these.
    Column("enqueued_at", DateTime(timezone=True)),
    Column("enqueued_priority", Integer),
)
Index("ix_jobs_state", jobs.c.state)
Index("ix_jobs_next_attempt_at", jobs.c.next_attempt_at)
Index("ix_jobs_priority_created", jobs.c.priority, jobs.c.created_at)

job_events = Table(
    "job_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(ID), ForeignKey("jobs.id"), nullable=False),
    Column("from_state", String(16), nullable=False),
    Column("to_state", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("reason_code", String(32)),
    Column("detail", Text),
    Column("data", JSON, nullable=False, default=dict),
)
Index("ix_job_events_job_id", job_events.c.job_id)

results = Table(
    "results",
    metadata,
    Column("job_id", String(ID), ForeignKey("jobs.id"), primary_key=True),
    Column("priority", Integer, nullable=False),
    Column("priority_reason", Text, nullable=False, default=""),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("model_sha256", String(64), nullable=False),
    Column("model_placeholder", Boolean, nullable=False),
    Column("series_instance_uid", String(64), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    # [{"label": ..., "probability": ..., "threshold": ...}, ...] in model label order
    Column("findings", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Issue 10 (migration 0006): severity (geographic extent 0-8, None without a severity output); the findings
    # the policy names that the model cannot assess (a JSON list); shadow mode and what the model would have set.
    Column("severity", Float),
    Column("not_assessed", JSON, nullable=False, default=list),
    Column("shadow", Boolean, nullable=False, default=False),
    Column("model_priority", Integer),
)

# Heatmap overlays of a result's positive findings (PNG), written with the result; kept apart from `results` so
# that reading scores never loads pictures.
heatmaps = Table(
    "heatmaps",
    metadata,
    Column("job_id", String(ID), ForeignKey("results.job_id", ondelete="CASCADE"), primary_key=True),
    Column("label", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("png", LargeBinary, nullable=False),
)

# Site acceptance (issue 10): each `radtriage model validate-site` run, tied to the model's weights. Until one is
# recorded for the active model, shadow_mode "auto" keeps the service in shadow mode.
site_validations = Table(
    "site_validations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_sha256", String(64), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("recorded_by", String(255), nullable=False),
    Column("n", Integer, nullable=False),
    # AUROC, sensitivity, specificity, ECE with 95% CIs, the recommended operating points, the sample's source
    Column("metrics", JSON, nullable=False),
)
Index("ix_site_validations_model_sha256", site_validations.c.model_sha256)

# Operators' explicit shadow-mode decisions (`radtriage model shadow on|off|auto --reason ...`), newest wins.
shadow_overrides = Table(
    "shadow_overrides",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_sha256", String(64), nullable=False),
    Column("mode", String(8), nullable=False),  # on | off | auto (auto: back to the validation rule)
    Column("reason", Text, nullable=False),
    Column("recorded_by", String(255), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)
Index("ix_shadow_overrides_model_sha256", shadow_overrides.c.model_sha256)
