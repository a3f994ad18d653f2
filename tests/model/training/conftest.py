"""Tiny synthetic data sets and one tiny trained run, made once per test session.

The images are 64x64 PNGs: "abnormal" ones have a bright blob in one lung field, so a network can learn something
in one epoch, but nothing here depends on it learning well. Two folders: ``site`` in radtriage's labels.csv
layout (the NIH layout) and ``ext`` in the COVID-19 collection's layout, used only for external evaluation.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from radtriage.model.training.config import TrainingConfig
from radtriage.model.training.trainer import train

LABELS = ("Pneumonia", "Effusion")
NIH_COLUMNS = ["image", "patient_id", "age", "sex", "view", "Effusion", "Pneumonia", "no_finding", "finding_labels"]


def _write_image(path: Path, abnormal: bool, rng: np.random.Generator) -> None:
    pixels = rng.normal(90, 20, (64, 64))
    pixels[:, 30:34] += 60  # a "spine"
    if abnormal:
        pixels[18:40, 8:26] += 100
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


def make_site_folder(root: Path, patients: int = 16, seed: int = 0) -> Path:
    """A labels.csv folder: `patients` patients with two images each, half of the patients abnormal."""
    rng = np.random.default_rng(seed)
    folder = root / "site"
    rows = []
    for patient in range(patients):
        abnormal = patient % 2 == 1
        for image in range(2):
            name = f"images/{patient:03d}_{image}.png"
            _write_image(folder / name, abnormal, rng)
            effusion = int(abnormal and patient % 4 == 1)
            rows.append({
                "image": name, "patient_id": str(patient), "age": str(30 + patient), "sex": "MF"[patient % 2],
                "view": "PA" if (patient + image) % 3 else "AP", "Effusion": str(effusion),
                "Pneumonia": str(int(abnormal)), "no_finding": str(int(not abnormal)),
                "finding_labels": ("Effusion|Pneumonia" if effusion else "Pneumonia") if abnormal else "No Finding",
            })
    with (folder / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=NIH_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return folder


def make_ext_folder(root: Path, seed: int = 1) -> Path:
    """A COVID-collection layout folder: metadata.csv + severity.csv, mostly abnormal, one not yet labelled."""
    rng = np.random.default_rng(seed)
    folder = root / "ext"
    findings = ["COVID-19", "COVID-19", "Streptococcus", "No Finding", "todo", "COVID-19, ARDS"]
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "metadata.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "patient_id", "offset", "sex", "age", "finding", "view", "license"])
        for index, finding in enumerate(findings):
            name = f"images/e{index}.jpg"
            _write_image(folder / name, finding not in ("No Finding", "todo"), rng)
            writer.writerow([name, f"p{index // 2}", "0", "F", "50", finding, "AP Supine" if index % 2 else "PA", ""])
    with (folder / "severity.csv").open("w", newline="") as fh:
        fh.write("image,geographic_extent_mean,opacity_mean\nimages/e0.jpg,4.5,3.0\n")
    return folder


def tiny_config(site: Path, ext: Path | None = None, **changes: Any) -> TrainingConfig:
    """A recipe that trains in about a second: 32x32 images, two epochs, the sources above."""
    data = (str(site),) if ext is None else (str(site), str(ext))
    base = TrainingConfig(data=data, train_sources=("site",), labels=LABELS, image_size=32, epochs=2, batch_size=8)
    return base.replace(**changes)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-data")
    return make_site_folder(root), make_ext_folder(root)


@pytest.fixture(scope="session")
def tiny_run(tiny_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained for 2 epochs on the tiny data (train split of ``site``; ``ext`` external)."""
    site, ext = tiny_data
    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(site, ext), run)
    return run
