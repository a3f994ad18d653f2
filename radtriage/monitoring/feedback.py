"""Feedback to training: studies with final-report labels → a training set the model-lifecycle pipeline reads.

`export_training_set` retrieves each labelled, scored study's frontal image (the instance the model scored) from
the image archive (the service's `StudySource`: DICOMweb from the PACS, or a folder), writes it under
``<out>/images/`` with a name that holds no patient data (a hash of the SOP Instance UID), and records the path
in ``report_labels.image_path``. `radtriage.model.datasets.DatabaseLabelledStudies(engine, out)` then lists the
studies for training, with patients hashed so the split keeps each patient on one side.

It also writes ``<out>/labels.csv`` in radtriage's own layout (``read_labelled_folder``), so the export can be
copied to a training machine without the database. Uncertain labels are left empty there (unknown, masked in
training), as they are left out by the database adapter.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, select, update

from ..app.core.domain import InstanceInfo
from ..app.core.errors import TriageError
from ..app.core.ports import StudySource
from ..app.storage.monitoring_tables import final_reports, report_labels
from ..app.storage.tables import results
from ..model.datasets import ABNORMAL, LABELS_CSV, XRV_LABELS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportSummary:
    studies: int
    exported: int
    already_there: int
    failed: dict[str, int]
    labels_csv: Path


def export_training_set(engine: Engine, source: StudySource, out: str | os.PathLike[str]) -> ExportSummary:
    folder = Path(out)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with engine.connect() as conn:
        rows = conn.execute(
            select(report_labels, results.c.series_instance_uid, results.c.sop_instance_uid)
            .join(final_reports, and_(final_reports.c.id == report_labels.c.final_report_id,
                                      final_reports.c.superseded.is_(False)))
            .join(results, results.c.job_id == report_labels.c.job_id)
            .order_by(report_labels.c.study_instance_uid, report_labels.c.label)
        ).mappings().all()
    studies: dict[str, dict[str, Any]] = {}
    for row in rows:
        study = studies.setdefault(row["job_id"], {"row": row, "labels": {}})
        study["labels"][row["label"]] = (row["value"], row["certainty"])
    exported = already = 0
    failed: dict[str, int] = {}
    csv_rows = []
    for job_id, study in studies.items():
        row = study["row"]
        name = f"images/{hashlib.sha256(row['sop_instance_uid'].encode()).hexdigest()[:24]}.dcm"
        target = folder / name
        if target.exists():
            already += 1
        else:
            try:
                data = source.retrieve_instance(InstanceInfo(
                    row["study_instance_uid"], row["series_instance_uid"], row["sop_instance_uid"]))
            except TriageError as error:
                failed[error.code.value] = failed.get(error.code.value, 0) + 1
                log.warning("export: job %s not retrieved (%s)", job_id, error.code.value)
                continue
            partial = target.with_suffix(".part")
            partial.write_bytes(data)
            partial.replace(target)
            exported += 1
        with engine.begin() as conn:
            conn.execute(update(report_labels).where(report_labels.c.job_id == job_id).values(image_path=name))
        csv_rows.append(_csv_row(name, row, study["labels"]))
    labels_csv = folder / LABELS_CSV
    columns = ["image", "patient_id", "age", "sex", "view", *XRV_LABELS, "no_finding"]
    partial_csv = labels_csv.with_suffix(".part")
    with partial_csv.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(csv_rows)
    partial_csv.replace(labels_csv)
    return ExportSummary(len(studies), exported, already, failed, labels_csv)


def _csv_row(name: str, row: Any, labels: dict[str, tuple[float, str]]) -> dict[str, str]:
    values: dict[str, str] = {
        "image": name,
        "patient_id": hashlib.sha256(row["patient_ref"].encode()).hexdigest()[:16],
        "age": "" if row["age"] is None else f"{row['age']:g}",
        "sex": row["sex"] or "",
        "view": row["view"] or "",
    }
    for label in XRV_LABELS:
        value, certainty = labels.get(label, (None, "unmentioned"))
        values[label] = "" if value is None or certainty == "uncertain" else str(int(value))
    abnormal = labels.get(ABNORMAL)
    values["no_finding"] = "" if abnormal is None or abnormal[1] == "uncertain" else str(int(1 - abnormal[0]))
    return values
