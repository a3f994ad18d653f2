"""Labelled chest X-rays for training and evaluation, from wherever a site has them.

Every adapter returns the same thing: a list of `LabelledImage`, one per image, with

* labels per finding in torchxrayvision's names (``xrv.datasets.default_pathologies``): 1.0 present, 0.0 absent;
  a finding the source says nothing about is *missing from the mapping*, never guessed as 0 (training masks it);
* ``abnormal``: any abnormal finding (1.0 / 0.0), or None when the source does not say;
* a severity where the source has one (the COVID-19 collection's radiologist scores);
* the patient (namespaced by source, so two sources' patient "12" stay two patients), sex, age and view, which
  the split and the subgroup analysis need.

Adapters:

* `read_labelled_folder`: a folder with ``labels.csv`` (radtriage's own layout, also NIH's in ``../shared/data``)
  or with ``metadata.csv`` (+ ``severity.csv``) in the layout of the COVID-19 Image Data Collection.
* `from_xrv_dataset`: a torchxrayvision dataset object whose images are on local disk.
* `DatabaseLabelledStudies`: studies in radtriage's own database with labels taken from radiologists' final
  reports (how a hospital collects data from its own PACS).

`set_label` is the labelling command: it sets or corrects one label of one study in a ``labels.csv``.

Bad input stops with a `DatasetError` that names the file and the problem (missing columns, unknown labels,
values that are not 0/1, images that are not there). Messages name files, rows and columns, never patient data.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

#: torchxrayvision's label names (``xrv.datasets.default_pathologies``), copied so that reading a CSV needs no torch.
XRV_LABELS: Final = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis", "Effusion",
    "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion", "Fracture",
    "Lung Opacity", "Enlarged Cardiomediastinum",
)
ABNORMAL: Final = "abnormal"

LABELS_CSV: Final = "labels.csv"
COVID_METADATA_CSV: Final = "metadata.csv"
COVID_SEVERITY_CSV: Final = "severity.csv"

#: Columns of radtriage's labels.csv besides the label columns.
REQUIRED_COLUMNS: Final = ("image", "patient_id")
OPTIONAL_COLUMNS: Final = ("age", "sex", "view", "no_finding", "finding_labels", "study_id", "source")

#: COVID-19 Image Data Collection diagnoses (``finding``) that are a pneumonia (infectious or lipoid).
COVID_PNEUMONIA_FINDINGS: Final = frozenset({
    "COVID-19", "SARS", "Pneumocystis", "Streptococcus", "Klebsiella", "Varicella", "Mycoplasma Bacterial Pneumonia",
    "E.Coli", "Legionella", "Bacterial", "Chlamydophila", "Influenza", "Pneumonia", "Lipoid",
})
COVID_NO_FINDING: Final = "No Finding"
#: The collection's mark for an image that has not been diagnosed yet.
COVID_UNLABELLED: Final = "todo"
COVID_SEVERITY_COLUMNS: Final = ("geographic_extent_mean", "opacity_mean")


class DatasetError(ValueError):
    """A data source cannot be used as it is; the message names the file and the problem."""


@dataclass(frozen=True)
class LabelledImage:
    """One labelled image. `labels` holds only what the source states (see the module docstring)."""

    path: Path
    #: Stable identity of the image across runs: ``<source>:<path relative to its folder>``.
    image_id: str
    #: Namespaced by source (``nih:61``), so that splitting by patient never merges two sources' patients.
    patient_id: str
    source: str
    labels: Mapping[str, float] = field(default_factory=dict)
    abnormal: float | None = None
    severity: Mapping[str, float] = field(default_factory=dict)
    sex: str | None = None
    age: float | None = None
    #: As the source wrote it ("PA", "AP", "AP Supine", ...); `view_group` folds it into PA / AP / other.
    view: str | None = None
    #: The source's own diagnosis text, where it has one (COVID-19 collection: ``finding``).
    diagnosis: str | None = None

    @property
    def view_group(self) -> str:
        return view_group(self.view)


def view_group(view: str | None) -> str:
    """"PA", "AP" (including AP supine/erect) or "other" (lateral, unknown)."""
    text = (view or "").strip().upper()
    if text == "PA":
        return "PA"
    if text.startswith("AP"):
        return "AP"
    return "other"


def age_band(age: float | None) -> str:
    """Age bands for subgroup analysis: child, adult 18-39, 40-64, 65+, unknown."""
    if age is None or not math.isfinite(age):
        return "unknown"
    if age < 18:
        return "<18"
    if age < 40:
        return "18-39"
    if age < 65:
        return "40-64"
    return "65+"


def normalise_label(name: str) -> str | None:
    """The torchxrayvision name of a label column, or None when it is not one (spaces and underscores agree)."""
    key = name.strip().replace("_", " ").casefold()
    for label in XRV_LABELS:
        if label.replace("_", " ").casefold() == key:
            return label
    return None


# ------------------------------------------------------------------------------------------- CSV folders


def read_labelled_folder(folder: str | os.PathLike[str], source: str | None = None,
                         *, check_images: bool = True) -> list[LabelledImage]:
    """The images of a folder in either supported layout (see the module docstring).

    `source` names the data set in ids and reports (default: the folder's name, e.g. "nih", "covid").
    With `check_images`, an image named in the CSV that is not on disk is an error.
    """
    folder = Path(folder)
    source = source or folder.name
    if (folder / LABELS_CSV).exists():
        images = read_labels_csv(folder / LABELS_CSV, source)
    elif (folder / COVID_METADATA_CSV).exists():
        images = read_covid_folder(folder, source)
    else:
        raise DatasetError(f"{folder}: neither {LABELS_CSV} nor {COVID_METADATA_CSV} found")
    if check_images:
        missing = [image for image in images if not image.path.is_file()]
        if missing:
            raise DatasetError(f"{folder}: {len(missing)} image(s) named in the CSV are missing, "
                               f"first {missing[0].path.relative_to(folder)}")
    return images


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot be read as CSV ({type(exc).__name__})") from exc


def _label_columns(path: Path, columns: Sequence[str]) -> dict[str, str]:
    """Label column -> torchxrayvision name; any column that is neither known nor a label is an error."""
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
    labels: dict[str, str] = {}
    unknown: list[str] = []
    for column in columns:
        if column in REQUIRED_COLUMNS or column in OPTIONAL_COLUMNS:
            continue
        label = normalise_label(column)
        if label is None:
            unknown.append(column)
        else:
            labels[column] = label
    if unknown:
        raise DatasetError(f"{path}: unknown label column(s) {', '.join(unknown)} "
                           "(label columns must be torchxrayvision label names)")
    return labels


def _binary(path: Path, row_number: int, column: str, text: str) -> float | None:
    value = text.strip()
    if value == "":
        return None
    if value in ("0", "1", "0.0", "1.0"):
        return float(value)
    raise DatasetError(f"{path}: row {row_number}, column {column}: expected 0, 1 or empty")


def _optional_float(text: str | None) -> float | None:
    try:
        value = float((text or "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _sex(text: str | None) -> str | None:
    value = (text or "").strip().upper()[:1]
    return value if value in ("M", "F") else None


def read_labels_csv(path: str | os.PathLike[str], source: str) -> list[LabelledImage]:
    """radtriage's labels.csv (the NIH layout in ../shared/data): one row per image, one 0/1 column per finding.

    ``no_finding`` = 1 means "no abnormal finding": every label column of that row must then be 0 or empty, and
    the empty ones are read as 0. ``abnormal`` is 1 when any finding is 1, 0 when ``no_finding`` is 1.
    """
    path = Path(path)
    columns, rows = _read_csv(path)
    label_columns = _label_columns(path, columns)
    folder = path.parent
    images: list[LabelledImage] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        relative = (row.get("image") or "").strip()
        patient = (row.get("patient_id") or "").strip()
        if not relative or not patient:
            raise DatasetError(f"{path}: row {number}: image and patient_id must not be empty")
        if relative in seen:
            raise DatasetError(f"{path}: row {number}: image {relative} is listed twice")
        seen.add(relative)
        labels: dict[str, float] = {}
        for column, label in label_columns.items():
            value = _binary(path, number, column, row.get(column) or "")
            if value is not None:
                labels[label] = value
        no_finding = _binary(path, number, "no_finding", row.get("no_finding") or "")
        if no_finding == 1.0:
            if any(value == 1.0 for value in labels.values()):
                raise DatasetError(f"{path}: row {number}: no_finding is 1 but a finding is also 1")
            labels = dict.fromkeys(label_columns.values(), 0.0)
        if any(value == 1.0 for value in labels.values()):
            abnormal: float | None = 1.0
        elif no_finding is not None:
            abnormal = 1.0 - no_finding
        else:
            abnormal = None
        images.append(LabelledImage(
            path=folder / relative,
            image_id=f"{source}:{relative}",
            patient_id=f"{source}:{patient}",
            source=source,
            labels=labels,
            abnormal=abnormal,
            sex=_sex(row.get("sex")),
            age=_optional_float(row.get("age")),
            view=(row.get("view") or "").strip() or None,
            diagnosis=(row.get("finding_labels") or "").strip() or None,
        ))
    return images


def covid_labels(finding: str) -> tuple[dict[str, float], float | None]:
    """Labels and "abnormal" for a COVID-19 Image Data Collection diagnosis.

    The collection records one diagnosis per image, a cause of pneumonia in all but a few rows; it says nothing
    about effusion, atelectasis and the other findings, so those stay unknown. ARDS without a pneumonia is
    abnormal but not labelled Pneumonia. "todo" rows are not yet diagnosed: nothing is known.
    """
    parts = {part.strip() for part in finding.replace(",", "/").split("/") if part.strip()}
    if not parts or parts == {COVID_UNLABELLED}:
        return {}, None
    if parts == {COVID_NO_FINDING}:
        return {"Pneumonia": 0.0}, 0.0
    if parts & COVID_PNEUMONIA_FINDINGS:
        return {"Pneumonia": 1.0}, 1.0
    return {}, 1.0


def read_covid_folder(folder: str | os.PathLike[str], source: str = "covid") -> list[LabelledImage]:
    """A folder in the layout of the COVID-19 Image Data Collection: metadata.csv and optional severity.csv."""
    folder = Path(folder)
    metadata = folder / COVID_METADATA_CSV
    columns, rows = _read_csv(metadata)
    needed = ("image", "patient_id", "finding")
    missing = [name for name in needed if name not in columns]
    if missing:
        raise DatasetError(f"{metadata}: missing column(s) {', '.join(missing)}")
    severity: dict[str, dict[str, float]] = {}
    severity_path = folder / COVID_SEVERITY_CSV
    if severity_path.exists():
        severity_columns, severity_rows = _read_csv(severity_path)
        absent = [name for name in ("image", *COVID_SEVERITY_COLUMNS) if name not in severity_columns]
        if absent:
            raise DatasetError(f"{severity_path}: missing column(s) {', '.join(absent)}")
        for number, row in enumerate(severity_rows, start=2):
            scores = {name: _optional_float(row.get(name)) for name in COVID_SEVERITY_COLUMNS}
            if any(value is None for value in scores.values()):
                raise DatasetError(f"{severity_path}: row {number}: severity scores must be numbers")
            severity[row["image"].strip()] = {name: float(value) for name, value in scores.items() if value is not None}
    images: list[LabelledImage] = []
    for number, row in enumerate(rows, start=2):
        relative = (row.get("image") or "").strip()
        patient = (row.get("patient_id") or "").strip()
        if not relative or not patient:
            raise DatasetError(f"{metadata}: row {number}: image and patient_id must not be empty")
        finding = (row.get("finding") or "").strip()
        labels, abnormal = covid_labels(finding)
        images.append(LabelledImage(
            path=folder / relative,
            image_id=f"{source}:{relative}",
            patient_id=f"{source}:{patient}",
            source=source,
            labels=labels,
            abnormal=abnormal,
            severity=severity.pop(relative, {}),
            sex=_sex(row.get("sex")),
            age=_optional_float(row.get("age")),
            view=(row.get("view") or "").strip() or None,
            diagnosis=finding or None,
        ))
    if severity:
        raise DatasetError(f"{severity_path}: {len(severity)} scored image(s) are not in {COVID_METADATA_CSV}, "
                           f"first {next(iter(severity))}")
    return images


# ------------------------------------------------------------------------------------- torchxrayvision


#: torchxrayvision dataset class -> the CSV column that holds the image file name (relative to ``imgpath``).
_XRV_IMAGE_COLUMNS: Final = {"NIH_Dataset": "Image Index", "COVID19_Dataset": "filename"}


def from_xrv_dataset(dataset: Any, source: str) -> list[LabelledImage]:
    """The images of a torchxrayvision dataset object that are present on local disk.

    torchxrayvision's classes read the full published CSVs (NIH's lists 112,120 images) whether or not the images
    are there; a site usually has a subset, so absent images are skipped. Its label matrix uses NaN for unknown,
    which stays unknown here. Supported classes: ``NIH_Dataset``, ``COVID19_Dataset``.
    """
    kind = type(dataset).__name__
    column = _XRV_IMAGE_COLUMNS.get(kind)
    if column is None:
        raise DatasetError(f"torchxrayvision dataset {kind} is not supported (supported: {sorted(_XRV_IMAGE_COLUMNS)})")
    table = dataset.csv
    image_root = Path(dataset.imgpath)
    patient_column = "patientid" if "patientid" in table.columns else "Patient ID"
    images: list[LabelledImage] = []
    for index in range(len(table)):
        row = table.iloc[index]
        relative = str(row[column])
        path = image_root / relative
        if not path.is_file():
            continue
        labels: dict[str, float] = {}
        for label_index, name in enumerate(dataset.pathologies):
            label = normalise_label(name)
            value = float(dataset.labels[index][label_index])
            if label is not None and math.isfinite(value):
                labels[label] = value
        known = list(labels.values())
        abnormal = 1.0 if any(value == 1.0 for value in known) else (0.0 if known and kind == "NIH_Dataset" else None)
        age = row.get("Patient Age", row.get("age"))
        images.append(LabelledImage(
            path=path,
            image_id=f"{source}:{relative}",
            patient_id=f"{source}:{row[patient_column]}",
            source=source,
            labels=labels,
            abnormal=abnormal,
            sex=_sex(str(row.get("Patient Gender", row.get("sex", "")))),
            age=_optional_float(str(age)),
            view=str(row.get("view", "")) or None,
        ))
    return images


# ------------------------------------------------------------------------------------ radtriage database


class LabelledStudySource(Protocol):
    """Anything that lists labelled images (a folder, a database, ...)."""

    def labelled_images(self) -> list[LabelledImage]: ...


class DatabaseLabelledStudies:
    """Studies in radtriage's database with labels from radiologists' final reports.

    The table `report_labels` (declared in ``radtriage/app/storage/monitoring_tables.py``, created by migration
    0004, filled by `radtriage.monitoring.reports`) is the interface: one row per (study, finding) as read from
    the final report, plus the path of the study's exported frontal image (written by
    `radtriage.monitoring.feedback`). Rows whose image is not exported yet, and uncertain mentions ("possible
    effusion"), are left out: an uncertain label is missing, never guessed. Patient references are hashed before
    they leave this class: the split needs to know which images share a patient, not who it is.
    """

    def __init__(self, engine: Any, image_root: str | os.PathLike[str], source: str = "radtriage") -> None:
        self._engine = engine
        self._image_root = Path(image_root)
        self._source = source

    def labelled_images(self) -> list[LabelledImage]:
        from sqlalchemy import select

        table = report_labels_table()
        by_study: dict[str, dict[str, Any]] = {}
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(table)
                .where(table.c.image_path.is_not(None), table.c.image_path != "")
                .order_by(table.c.study_instance_uid, table.c.label)
            ).mappings()
            for row in rows:
                if row["certainty"] == "uncertain":
                    continue
                study = by_study.setdefault(row["study_instance_uid"], {
                    "patient": hashlib.sha256(row["patient_ref"].encode()).hexdigest()[:16],
                    "image": row["image_path"], "view": row["view"], "sex": row["sex"], "age": row["age"],
                    "labels": {},
                })
                if row["label"] == ABNORMAL:
                    study["abnormal"] = float(row["value"])
                    continue
                label = normalise_label(row["label"])
                if label is None:
                    raise DatasetError(f"table {table.name}: unknown label {row['label']!r} "
                                       f"(study row {row['id']})")
                study["labels"][label] = float(row["value"])
        images = []
        for uid, study in by_study.items():
            labels = study["labels"]
            abnormal = study.get("abnormal", 1.0 if any(v == 1.0 for v in labels.values()) else None)
            images.append(LabelledImage(
                path=self._image_root / study["image"],
                image_id=f"{self._source}:{uid}",
                patient_id=f"{self._source}:{study['patient']}",
                source=self._source,
                labels=labels,
                abnormal=abnormal,
                sex=_sex(study["sex"]),
                age=study["age"],
                view=study["view"],
            ))
        return images


def report_labels_table() -> Any:
    """The SQLAlchemy table `DatabaseLabelledStudies` reads: the service's own ``report_labels`` table."""
    from radtriage.app.storage.monitoring_tables import report_labels

    return report_labels


# ------------------------------------------------------------------------------------------ labelling


@dataclass(frozen=True)
class LabelChange:
    """What `set_label` did: the value before (None: unknown or a new row) and after."""

    image: str
    label: str
    before: float | None
    after: float | None
    added_row: bool


def set_label(labels_csv: str | os.PathLike[str], image: str, label: str, value: str | int | float | None,
              *, patient_id: str | None = None) -> LabelChange:
    """Set or correct one label of one image in a labels.csv; the CLI's ``radtriage label``.

    `label` is a torchxrayvision label name (a new column is added when the file has none for it) or
    "no_finding". `value` is 1, 0, or None / "" for "unknown". An image not yet in the file is added when
    `patient_id` is given. ``no_finding`` and ``finding_labels`` are kept consistent with the findings. The file
    is rewritten atomically (a temporary file renamed over it), so a crash never leaves half a file.
    """
    path = Path(labels_csv)
    columns, rows = _read_csv(path) if path.exists() else (["image", "patient_id", "no_finding"], [])
    _label_columns(path, columns)  # refuses a file that is already invalid
    if label == "no_finding":
        column = "no_finding"
    else:
        canonical = normalise_label(label)
        if canonical is None:
            raise DatasetError(f"unknown label {label!r}: use a torchxrayvision label name or no_finding")
        existing = [c for c in columns if normalise_label(c) == canonical]
        column = existing[0] if existing else canonical
        if not existing:
            columns.append(column)
    text = "" if value is None or str(value).strip() == "" else str(value).strip()
    new_value = _binary(path, 0, column, text) if text else None
    text = "" if new_value is None else str(int(new_value))

    matches = [row for row in rows if (row.get("image") or "").strip() == image]
    added = not matches
    if added:
        if not patient_id:
            raise DatasetError(f"{path}: image {image} is not listed; give its patient id to add it")
        row = dict.fromkeys(columns, "")
        row.update(image=image, patient_id=patient_id)
        rows.append(row)
    else:
        row = matches[0]
    before = _binary(path, 0, column, row.get(column) or "")
    row[column] = text
    _make_consistent(row, columns, changed=column)
    _write_csv_atomically(path, columns, rows)
    return LabelChange(image=image, label=column, before=before, after=new_value, added_row=added)


def _make_consistent(row: dict[str, str], columns: Sequence[str], changed: str) -> None:
    findings = [c for c in columns if normalise_label(c) is not None]
    if changed == "no_finding":
        if row.get("no_finding") == "1":
            for column in findings:
                row[column] = "0"
    elif "no_finding" in columns:
        values = [row.get(c, "") for c in findings]
        if "1" in values:
            row["no_finding"] = "0"
        elif all(v == "0" for v in values):
            row["no_finding"] = "1"
    if "finding_labels" in columns:
        positive = [c for c in findings if row.get(c) == "1"]
        row["finding_labels"] = "|".join(sorted(positive)) if positive else (
            "No Finding" if row.get("no_finding") == "1" else "")


def _write_csv_atomically(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="raise")
            writer.writeheader()
            for row in rows:
                writer.writerow({column: row.get(column, "") for column in columns})
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


__all__ = [
    "ABNORMAL",
    "XRV_LABELS",
    "DatabaseLabelledStudies",
    "DatasetError",
    "LabelChange",
    "LabelledImage",
    "LabelledStudySource",
    "age_band",
    "covid_labels",
    "from_xrv_dataset",
    "normalise_label",
    "read_covid_folder",
    "read_labelled_folder",
    "read_labels_csv",
    "report_labels_table",
    "set_label",
    "view_group",
]
