"""The relational schema. Alembic migrations in `migrations/versions` create it; a test checks they agree."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
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
    # With a broker (Celery): when the job id was last handed to it and at which priority; NULL when the broker
    # could not take it. The sweeper (radtriage.app.sweeper) re-queues from these.
    Column("enqueued_at", DateTime(timezone=True)),
    Column("enqueued_priority", Integer),
)
Index("ix_jobs_state", jobs.c.state)
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
