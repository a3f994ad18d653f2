"""Every image source in ``../shared/data/cxr`` as `LabelledImage` lists, with the labels the triage model learns.

`radtriage.model.datasets` reads radtriage's own ``labels.csv`` layout (NIH) and the COVID-19 collection. Two more
sources have layouts of their own:

* **JSRT** (``jsrt/labels.csv``: image, patient_id, view, Nodule, no_nodule): scanned PA films from Japan. A film
  chosen as a non-nodule case is the closest thing in the data to a normal film from another hospital, so it is a
  *negative* for every acute finding. A nodule is not an acute finding: the nodule films are negatives for
  pneumonia (they were chosen for the nodule) and unknown for "Lung Opacity" (a nodule is a focal opacity).
* **TBX11K** (``tbx11k-tb/labels.csv``: image, label, tb_type): tuberculosis films from Chinese hospitals, no
  patient ids (each image is its own patient) and no normal films from the same hospitals. Tuberculosis shows as
  lung opacities (infiltrates, consolidation, cavities, calcified scars); whether a film also is "pneumonia" in
  the NIH sense is not stated, so that label stays unknown.

`triage_labels` adds the one derived target the model learns besides the sources' own findings: "Lung Opacity"
(any acute parenchymal abnormality: NIH pneumonia, the COVID-19 collection's pneumonias and ARDS, tuberculosis),
which every source can label and is therefore the target that can be judged leaving each source out.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from .datasets import DatasetError, LabelledImage, read_labelled_folder

#: The folder names in ../shared/data/cxr, in the order reports list them.
SOURCES: Final = ("nih", "covid", "jsrt", "tbx11k-tb")
#: Sources whose films are all abnormal (leave-one-source-out reports sensitivity only).
ALL_ABNORMAL_SOURCES: Final = frozenset({"covid", "tbx11k-tb"})
LUNG_OPACITY: Final = "Lung Opacity"


def _rows(path: Path, needed: Sequence[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot be read as CSV ({type(exc).__name__})") from exc
    missing = [name for name in needed if name not in columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
    return rows


def read_jsrt_folder(folder: str | os.PathLike[str], source: str = "jsrt") -> list[LabelledImage]:
    folder = Path(folder)
    images = []
    for number, row in enumerate(_rows(folder / "labels.csv", ("image", "patient_id", "Nodule")), start=2):
        nodule = row["Nodule"].strip()
        if nodule not in ("0", "1"):
            raise DatasetError(f"{folder / 'labels.csv'}: row {number}: Nodule must be 0 or 1")
        relative = row["image"].strip()
        has_nodule = nodule == "1"
        labels = {"Nodule": float(has_nodule), "Pneumonia": 0.0}
        if not has_nodule:
            labels[LUNG_OPACITY] = 0.0
        images.append(LabelledImage(
            path=folder / relative, image_id=f"{source}:{relative}", patient_id=f"{source}:{row['patient_id'].strip()}",
            source=source, labels=labels, abnormal=float(has_nodule), view=(row.get("view") or "PA").strip(),
            diagnosis="nodule" if has_nodule else "no nodule",
        ))
    return images


def read_tbx11k_folder(folder: str | os.PathLike[str], source: str = "tbx11k-tb") -> list[LabelledImage]:
    folder = Path(folder)
    images = []
    for row in _rows(folder / "labels.csv", ("image", "label")):
        relative = row["image"].strip()
        images.append(LabelledImage(
            # No patient ids: each image is its own patient (the data card says to split by image).
            path=folder / relative, image_id=f"{source}:{relative}", patient_id=f"{source}:{relative}",
            source=source, labels={LUNG_OPACITY: 1.0}, abnormal=1.0, view="PA",
            diagnosis=f"tuberculosis ({(row.get('tb_type') or 'unknown').strip()})",
        ))
    return images


def triage_labels(image: LabelledImage) -> LabelledImage:
    """`image` with "Lung Opacity" set where its own labels imply it (see the module docstring)."""
    if LUNG_OPACITY in image.labels or image.source in ("jsrt", "tbx11k-tb"):
        return image
    labels = dict(image.labels)
    if image.labels.get("Pneumonia") == 1.0 or (image.source == "covid" and image.abnormal == 1.0):
        labels[LUNG_OPACITY] = 1.0
    elif image.abnormal == 0.0:
        labels[LUNG_OPACITY] = 0.0
    return dataclasses.replace(image, labels=labels)


def read_source(folder: str | os.PathLike[str]) -> list[LabelledImage]:
    """One source folder, whichever layout it has; images missing on disk are an error."""
    folder = Path(folder)
    if folder.name == "jsrt":
        images = read_jsrt_folder(folder)
    elif folder.name.startswith("tbx11k"):
        images = read_tbx11k_folder(folder)
    else:
        images = read_labelled_folder(folder, check_images=False)
    missing = [image for image in images if not image.path.is_file()]
    if missing:
        raise DatasetError(f"{folder}: {len(missing)} image(s) named in the CSV are missing")
    return [triage_labels(image) for image in images]


def read_sources(root: str | os.PathLike[str], names: Sequence[str] = SOURCES) -> list[LabelledImage]:
    """Every image of the named sources under `root` (e.g. ../shared/data/cxr), in source order."""
    images: list[LabelledImage] = []
    for name in names:
        images.extend(read_source(Path(root) / name))
    return images


__all__ = [
    "ALL_ABNORMAL_SOURCES", "LUNG_OPACITY", "SOURCES", "read_jsrt_folder", "read_source", "read_sources",
    "read_tbx11k_folder", "triage_labels",
]
