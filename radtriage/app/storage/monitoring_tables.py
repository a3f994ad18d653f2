"""Tables of drafting and continuous evaluation (radtriage.monitoring); migration 0004 creates them.

* `final_reports`: every radiologist's report received (FHIR or HL7), matched or not; amended ones supersede.
* `report_labels`: labels per (study, finding) read from the current final report of a scored study. It is the
  table `radtriage.model.datasets.DatabaseLabelledStudies` reads for training on a site's own data;
  ``image_path`` is filled when the study's image is exported (`radtriage.monitoring.feedback`).
* `result_annotations`: per scored job, the threshold version used and the draft (shadow or sent).
* `threshold_versions`: locally recalibrated operating points, versioned per model (by weights' sha256).
* `image_observations`: DICOM metadata and simple pixel statistics of each scored image (input drift).
* `monitoring_alerts`: drift and performance alerts raised.
"""

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
    String,
    Table,
    Text,
    UniqueConstraint,
)

from .tables import ID, metadata

final_reports = Table(
    "final_reports",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("source", String(16), nullable=False),  # "fhir" | "hl7"
    #: What identifies the report at its sender (DiagnosticReport id or identifier; HL7 filler order number):
    #: a report with the same key is an amendment of the earlier one.
    Column("report_key", String(255), nullable=False),
    Column("status", String(16), nullable=False),  # final | amended | corrected (as sent)
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("issued_at", DateTime(timezone=True)),
    Column("text", Text, nullable=False, default=""),
    #: [{"label": ..., "value": 1.0 | 0.0 | null (uncertain), "code": "system|code"}] from coded findings.
    Column("coded", JSON, nullable=False, default=list),
    Column("study_instance_uid", String(64)),
    Column("accession_number", String(64)),
    Column("service_request_ref", String(255)),
    Column("placer_order_number", String(64)),
    Column("job_id", String(ID), ForeignKey("jobs.id")),
    #: matched (to a scored study) | not-scored (its order was never scored) | unmatched (no order found)
    Column("match", String(16), nullable=False),
    #: ok | empty (no text, no codes) | not-english (text the label extractor cannot read)
    Column("quality", String(16), nullable=False),
    #: True once a later report (an amendment, or a newer report for the same study) replaced this one.
    Column("superseded", Boolean, nullable=False, default=False),
)
Index("ix_final_reports_source_key", final_reports.c.source, final_reports.c.report_key)
Index("ix_final_reports_job_id", final_reports.c.job_id)
Index("ix_final_reports_received_at", final_reports.c.received_at)

report_labels = Table(
    "report_labels",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_instance_uid", String(64), nullable=False),
    Column("patient_ref", String(255), nullable=False),
    #: The exported frontal image, relative to the export folder; empty until the study is exported.
    Column("image_path", String(1024)),
    Column("view", String(16)),
    Column("sex", String(1)),
    Column("age", Float),
    #: A torchxrayvision label name, or "abnormal" for the report's overall normal/abnormal call.
    Column("label", String(64), nullable=False),
    #: 1.0 present, 0.0 absent (negated or not mentioned); for an uncertain mention the value is 1.0 and
    #: `certainty` says "uncertain" (readers that cannot use it leave it out).
    Column("value", Float, nullable=False),
    #: stated | negated | unmentioned | uncertain | coded
    Column("certainty", String(16), nullable=False, default="stated"),
    Column("report_ref", String(255)),
    Column("final_report_id", String(ID), ForeignKey("final_reports.id")),
    Column("job_id", String(ID), ForeignKey("jobs.id")),
    Column("labelled_at", DateTime(timezone=True)),
)
Index("ix_report_labels_job_id", report_labels.c.job_id)
Index("ix_report_labels_study_instance_uid", report_labels.c.study_instance_uid)

threshold_versions = Table(
    "threshold_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_sha256", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("thresholds", JSON, nullable=False),  # {label: threshold}
    Column("target_sensitivity", Float),
    Column("cases", Integer, nullable=False, default=0),
    #: {label: {"positives": n, "sensitivity": achieved, "specificity": ...}} on the sample that chose it.
    Column("details", JSON, nullable=False, default=dict),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("active", Boolean, nullable=False, default=False),
    UniqueConstraint("model_sha256", "version", name="uq_threshold_versions_model_sha256"),
)

result_annotations = Table(
    "result_annotations",
    metadata,
    Column("job_id", String(ID), ForeignKey("jobs.id"), primary_key=True),
    #: "manifest" or "local-<n>": which operating points scored the study.
    Column("thresholds_version", String(32), nullable=False),
    #: The drafting mode when the study was scored ("off", "shadow", "on") and the draft, if one was made.
    Column("draft_mode", String(8), nullable=False),
    Column("draft_text", Text),
    Column("draft_findings", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

image_observations = Table(
    "image_observations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("modality", String(16)),
    Column("view_position", String(16)),
    Column("manufacturer", String(64)),
    Column("patient_age", Float),
    Column("patient_sex", String(1)),
    Column("photometric", String(16)),
    Column("rows", Integer),
    Column("columns", Integer),
    #: Statistics of the preprocessed model input, scaled to [0, 1].
    Column("pixel_mean", Float),
    Column("pixel_std", Float),
)
Index("ix_image_observations_sop_instance_uid", image_observations.c.sop_instance_uid)
Index("ix_image_observations_recorded_at", image_observations.c.recorded_at)

monitoring_alerts = Table(
    "monitoring_alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("raised_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(32), nullable=False),  # output-drift | input-drift | performance-floor
    Column("subject", String(64), nullable=False),  # the finding or attribute
    Column("value", Float),
    Column("limit_value", Float),
    Column("detail", Text, nullable=False, default=""),
)
Index("ix_monitoring_alerts_raised_at", monitoring_alerts.c.raised_at)
