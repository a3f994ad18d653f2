"""Choosing the drafting margin offline from `radtriage score` output and a labelled folder."""

from __future__ import annotations

import csv
from pathlib import Path

from click.testing import CliRunner

from radtriage.model.artefact import read_manifest
from radtriage.model.registry import SHIPPED_DEFAULT
from radtriage.monitoring.cli_commands import monitor_group


def write_split(folder: Path, name: str, rows: list[tuple[str, float, bool]], labels: list[str]) -> Path:
    """A `radtriage score` CSV: every finding the given distance below its threshold (negative: above)."""
    thresholds = read_manifest(SHIPPED_DEFAULT).thresholds
    path = folder / f"{name}.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", *labels, "not_analysed"])
        writer.writeheader()
        for image, below, _ in rows:
            writer.writerow({"file": str(folder / image), **{x: thresholds[x] - below for x in labels},
                             "not_analysed": ""})
    return path


def test_the_margin_is_chosen_on_one_split_and_measured_on_another(tmp_path: Path) -> None:
    labels = list(read_manifest(SHIPPED_DEFAULT).labels)
    validation = [(f"v{i}.png", d, a) for i, (d, a) in enumerate([(0.03, False), (0.025, False), (0.002, True),
                                                                   (0.02, False), (0.015, False), (-0.1, True)])]
    test = [(f"t{i}.png", d, a) for i, (d, a) in enumerate([(0.03, False), (0.008, True), (0.02, False), (-0.2, True)])]
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "patient_id", "Pneumonia", "no_finding"])
        for image, _, abnormal in validation + test:
            writer.writerow([image, image[:2], int(abnormal), int(not abnormal)])
    choose = write_split(tmp_path, "val", validation, labels)
    measure = write_split(tmp_path, "test", test, labels)
    result = CliRunner().invoke(monitor_group, ["draft-margin", "--labels", str(tmp_path), "--choose-on", str(choose),
                                                "--measure-on", str(measure), "--target-npv", "1.0"])
    assert result.exit_code == 0, result.output
    chosen, measured = result.output.strip().splitlines()
    # At margin 0 the abnormal study 0.002 below every threshold is drafted; the smallest margin that keeps it out
    # (0.005) drafts the four normal validation studies; on the test split it drafts both normals and the abnormal
    # study 0.008 below.
    assert "margin 0.005" in chosen and "drafted 4/6" in chosen and "NPV 1.000" in chosen
    assert "drafted 3/4" in measured and "NPV 0.667" in measured and "abnormal drafted 1" in measured
