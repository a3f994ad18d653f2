"""Train / validation / test split by patient: deterministic, stratified, and checked for leakage.

Images of one patient are correlated (same anatomy, same devices, often the same disease episode), so they must
all fall in the same split; otherwise the test set measures recall of patients, not generalisation. Patients are
grouped into strata (their source and whether any of their images is abnormal) and each stratum is shuffled with
the seed and cut 80/10/10, so every split keeps each source's share of abnormal patients.

The split is saved with the run (``split.csv``: image_id, patient_id, source, split) and re-checked when read.
"""

from __future__ import annotations

import csv
import os
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from ..datasets import LabelledImage

SPLITS: Final = ("train", "val", "test")
DEFAULT_FRACTIONS: Final = (0.8, 0.1, 0.1)
SPLIT_CSV: Final = "split.csv"


class PatientLeakageError(ValueError):
    """A patient has images in more than one split."""


def patient_stratum(images: Sequence[LabelledImage]) -> str:
    """The stratum of one patient: source and whether any image is abnormal (unknown counts as its own class)."""
    values = {image.abnormal for image in images}
    status = "abnormal" if 1.0 in values else ("normal" if 0.0 in values else "unknown")
    return f"{images[0].source}/{status}"


def split_by_patient(
    images: Sequence[LabelledImage], seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, str]:
    """image_id -> "train" | "val" | "test", the same for every image of a patient.

    Deterministic: the same images and seed always give the same split, whatever their order.
    """
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers that add up to 1, got {list(fractions)}")
    by_patient: dict[str, list[LabelledImage]] = defaultdict(list)
    for image in images:
        by_patient[image.patient_id].append(image)
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, patient_images in by_patient.items():
        strata[patient_stratum(patient_images)].append(patient)

    rng = random.Random(seed)
    patient_split: dict[str, str] = {}
    for stratum in sorted(strata):
        patients = sorted(strata[stratum])
        rng.shuffle(patients)
        n_train = round(fractions[0] * len(patients))
        n_val = round(fractions[1] * len(patients))
        # Small strata: keep at least one patient in each evaluation split when the fraction asks for one.
        if len(patients) >= 3:
            n_val = max(n_val, 1 if fractions[1] > 0 else 0)
            n_train = min(n_train, len(patients) - n_val - (1 if fractions[2] > 0 else 0))
        for index, patient in enumerate(patients):
            patient_split[patient] = "train" if index < n_train else ("val" if index < n_train + n_val else "test")
    assignment = {image.image_id: patient_split[image.patient_id] for image in images}
    check_no_patient_leakage(images, assignment)
    return assignment


def check_no_patient_leakage(images: Iterable[LabelledImage], assignment: Mapping[str, str],
                             where: str = "the split") -> None:
    """Raise `PatientLeakageError` when any patient has images in two splits (the message holds no patient id)."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for image in images:
        split = assignment.get(image.image_id)
        if split is None:
            raise ValueError(f"{where} has no entry for image {image.image_id}")
        if split not in SPLITS:
            raise ValueError(f"{where}: image {image.image_id} is in unknown split {split!r}")
        splits_of[image.patient_id].add(split)
    leaking = [patient for patient, splits in splits_of.items() if len(splits) > 1]
    if leaking:
        raise PatientLeakageError(f"{where}: {len(leaking)} patient(s) have images in more than one split")


def write_split(path: str | os.PathLike[str], images: Sequence[LabelledImage], assignment: Mapping[str, str]) -> None:
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "patient_id", "source", "split"])
        for image in sorted(images, key=lambda i: i.image_id):
            writer.writerow([image.image_id, image.patient_id, image.source, assignment[image.image_id]])


def read_split(path: str | os.PathLike[str], images: Sequence[LabelledImage]) -> dict[str, str]:
    """A saved split, checked against `images`: every image present and no patient in two splits."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        assignment = {row["image_id"]: row["split"] for row in csv.DictReader(fh)}
    check_no_patient_leakage(images, assignment, where=str(path))
    return assignment


def split_counts(images: Sequence[LabelledImage], assignment: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """Images, patients and abnormal images per split and source, for the run's record and the model card."""
    counts: dict[str, dict[str, int]] = {}
    patients: dict[str, set[str]] = defaultdict(set)
    for image in images:
        key = f"{assignment[image.image_id]}/{image.source}"
        entry = counts.setdefault(key, {"images": 0, "patients": 0, "abnormal": 0, "normal": 0})
        entry["images"] += 1
        entry["abnormal"] += image.abnormal == 1.0
        entry["normal"] += image.abnormal == 0.0
        patients[key].add(image.patient_id)
    for key, members in patients.items():
        counts[key]["patients"] = len(members)
    return dict(sorted(counts.items()))


__all__ = [
    "DEFAULT_FRACTIONS",
    "SPLITS",
    "SPLIT_CSV",
    "PatientLeakageError",
    "check_no_patient_leakage",
    "read_split",
    "split_by_patient",
    "split_counts",
    "write_split",
]
