"""The patient split: no patient in two splits, deterministic, stratified, and checked when read back."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from radtriage.model.datasets import LabelledImage
from radtriage.model.training.split import (
    PatientLeakageError,
    check_no_patient_leakage,
    read_split,
    split_by_patient,
    write_split,
)


def synthetic_images(patients: int = 300, seed: int = 0) -> list[LabelledImage]:
    rng = random.Random(seed)
    images = []
    for patient in range(patients):
        source = "a" if patient % 3 else "b"
        abnormal = float(rng.random() < 0.4)
        for image in range(rng.randint(1, 4)):
            images.append(LabelledImage(
                path=Path(f"/nowhere/{patient}_{image}.png"), image_id=f"{source}:{patient}_{image}",
                patient_id=f"{source}:{patient}", source=source, labels={"Pneumonia": abnormal}, abnormal=abnormal,
            ))
    return images


def test_no_patient_has_images_in_two_splits() -> None:
    images = synthetic_images()
    assignment = split_by_patient(images, seed=7)
    splits_of = defaultdict(set)
    for image in images:
        splits_of[image.patient_id].add(assignment[image.image_id])
    assert all(len(splits) == 1 for splits in splits_of.values())


def test_split_is_80_10_10_by_patient_within_each_source_and_class() -> None:
    images = synthetic_images()
    assignment = split_by_patient(images, seed=7)
    per_stratum: dict[tuple[str, float | None], Counter[str]] = defaultdict(Counter)
    seen = set()
    for image in images:
        if image.patient_id not in seen:
            seen.add(image.patient_id)
            per_stratum[(image.source, image.abnormal)][assignment[image.image_id]] += 1
    for counts in per_stratum.values():
        total = sum(counts.values())
        assert abs(counts["train"] / total - 0.8) < 0.03
        assert abs(counts["val"] / total - 0.1) < 0.03
        assert abs(counts["test"] / total - 0.1) < 0.03


def test_split_is_deterministic_and_independent_of_input_order() -> None:
    images = synthetic_images()
    shuffled = list(images)
    random.Random(3).shuffle(shuffled)
    assert split_by_patient(images, seed=7) == split_by_patient(shuffled, seed=7)
    assert split_by_patient(images, seed=7) != split_by_patient(images, seed=8)


def test_leakage_check_names_the_problem_without_patient_ids() -> None:
    images = synthetic_images(patients=20)
    assignment = split_by_patient(images, seed=1)
    patient = next(p for p, n in Counter(i.patient_id for i in images).items() if n >= 2)
    first, second = [i for i in images if i.patient_id == patient][:2]
    assignment[first.image_id], assignment[second.image_id] = "train", "test"
    with pytest.raises(PatientLeakageError, match="1 patient") as raised:
        check_no_patient_leakage(images, assignment)
    assert patient not in str(raised.value)


def test_a_tampered_saved_split_is_refused(tmp_path: Path) -> None:
    images = synthetic_images(patients=30)
    assignment = split_by_patient(images, seed=1)
    path = tmp_path / "split.csv"
    write_split(path, images, assignment)
    assert read_split(path, images) == assignment

    patient = next(p for p, n in Counter(i.patient_id for i in images).items() if n >= 2)
    moved = next(i for i in images if i.patient_id == patient)
    other = {"train": "val", "val": "test", "test": "train"}[assignment[moved.image_id]]
    text = path.read_text().replace(f"{moved.image_id},{moved.patient_id},{moved.source},{assignment[moved.image_id]}",
                                    f"{moved.image_id},{moved.patient_id},{moved.source},{other}")
    path.write_text(text)
    with pytest.raises(PatientLeakageError, match=str(path)):
        read_split(path, images)


def test_fractions_must_add_up() -> None:
    with pytest.raises(ValueError, match="add up to 1"):
        split_by_patient(synthetic_images(patients=5), seed=1, fractions=(0.8, 0.1, 0.2))
