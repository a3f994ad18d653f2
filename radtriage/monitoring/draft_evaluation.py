"""Choosing the drafting margin offline: scored, labelled images → margin for a target NPV, and its NPV and share.

Input: the CSV that ``radtriage score`` writes (one row per image: ``file``, one probability column per finding,
...) and the labelled folder the images come from (``labels.csv`` layout, `radtriage.model.datasets`). The
reference standard is each image's ``abnormal`` label. Choose the margin on one split (validation) and measure it
on another (held-out test): a margin chosen and measured on the same images flatters itself.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..model.datasets import read_labelled_folder
from ..model.drafting import DraftPerformance, draft_performance, margin_for_npv


def scored_and_labelled(scores_csv: str | os.PathLike[str], labels_folder: str | os.PathLike[str],
                        labels: Sequence[str]) -> tuple[list[float], list[list[float]]]:
    """(abnormal 1/0, probabilities per label) for the scored images that have an abnormal label."""
    known = {str(image.path.resolve()): image for image in read_labelled_folder(labels_folder, check_images=False)}
    abnormal: list[float] = []
    probabilities: list[list[float]] = []
    with open(scores_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("not_analysed"):
                continue
            image = known.get(str(Path(row["file"]).resolve()))
            if image is None or image.abnormal is None:
                continue
            abnormal.append(float(image.abnormal))
            probabilities.append([float(row[label]) for label in labels])
    return abnormal, probabilities


def choose_and_measure(thresholds: Mapping[str, float], target_npv: float,
                       choose_on: tuple[list[float], list[list[float]]],
                       measure_on: tuple[list[float], list[list[float]]] | None = None,
                       ) -> tuple[DraftPerformance | None, DraftPerformance | None]:
    """The margin chosen on `choose_on` for `target_npv`, and how drafting at it does on `measure_on`."""
    values = list(thresholds.values())
    chosen = margin_for_npv(*choose_on, values, target_npv)
    if chosen is None or measure_on is None:
        return chosen, None
    return chosen, draft_performance(*measure_on, values, chosen.margin)
