"""The triage recipe: which rows train, how findings are chosen, calibrated and given operating points.

`fit_triage` is one training of the recipe on a set of development images (cached features of their clean and
augmented copies). It is called once for the shipped model (development split of every source) and once per
source for the leave-one-source-out evaluation (every image of the other sources), so that the headline figures
measure exactly the recipe that ships.

Steps, all on the development images only:

1. Out-of-fold logits (patient-grouped K-fold) for every candidate finding: the validation data.
2. Per finding: Platt calibration on those logits, then `heads.supported` (enough positives and negatives, AUROC
   lower bound above a floor). Unsupported findings are not shipped.
3. Per shipped finding: the operating point at the target sensitivity and the specificity floor.
4. "Abnormality" = the highest calibrated finding probability; its operating point and ECE on the out-of-fold
   data, against the "Lung Opacity" target (any acute parenchymal abnormality, which every source labels).
5. The final head: trained on all development rows (clean and augmented), with the calibration folded in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..datasets import LabelledImage
from ..sources import LUNG_OPACITY
from .heads import (
    LinearHead,
    OperatingPoint,
    fit_linear_head,
    operating_point,
    out_of_fold_logits,
    platt,
    sigmoid,
    source_balancing_weights,
    stack_variants,
    supported,
)

#: Findings the recipe tries; only those the validation data supports are shipped.
CANDIDATE_FINDINGS: Final = (
    "Pneumonia", LUNG_OPACITY, "Infiltration", "Atelectasis", "Edema", "Effusion", "Consolidation", "Pneumothorax",
)
ABNORMALITY: Final = "abnormality"
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class RecipeSettings:
    candidates: tuple[str, ...] = CANDIDATE_FINDINGS
    target_sensitivity: float = 0.9
    specificity_floor: float = 0.8
    min_positives: int = 30
    min_negatives: int = 30
    min_auroc_lower: float = 0.75
    #: A finding whose validation precision at its operating point is below this would mostly raise false alarms.
    min_precision: float = 0.5
    balance_sources: bool = True
    l2: float = 1.0
    folds: int = 5
    seed: int = 20261206


@dataclass
class FittedTriage:
    """One training of the recipe: what ships (labels, folded weights, thresholds) and the validation record."""

    labels: tuple[str, ...]
    weight: Floats  # (len(labels), F) on raw pooled features, calibration folded in
    bias: Floats
    thresholds: dict[str, float]
    abnormality_threshold: float
    validation: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, features: npt.NDArray[Any]) -> Floats:
        """(N, len(labels)) calibrated probabilities."""
        return sigmoid(np.asarray(features, dtype=np.float64) @ self.weight.T + self.bias)

    def abnormality(self, features: npt.NDArray[Any]) -> Floats:
        result: Floats = self.probabilities(features).max(axis=1)
        return result


def target_matrix(images: Sequence[LabelledImage], labels: Sequence[str]) -> Floats:
    """(N, L): 1 present, 0 absent, NaN where the source does not say."""
    matrix = np.full((len(images), len(labels)), np.nan)
    for row, image in enumerate(images):
        for column, label in enumerate(labels):
            if label in image.labels:
                matrix[row, column] = float(image.labels[label])
    return matrix


def _calibrated(logits: Floats, targets: Floats) -> tuple[Floats, Floats, Floats]:
    """Per column: Platt (a, c) on the known rows, and the calibrated probabilities."""
    a, c = np.ones(logits.shape[1]), np.zeros(logits.shape[1])
    for j in range(logits.shape[1]):
        known = ~np.isnan(targets[:, j])
        if known.sum() and len(np.unique(targets[known, j])) == 2:
            a[j], c[j] = platt(logits[known, j], targets[known, j])
    return a, c, sigmoid(logits * a + c)


def fit_triage(images: Sequence[LabelledImage], clean: npt.NDArray[Any], augmented: Sequence[npt.NDArray[Any]],
               settings: RecipeSettings = RecipeSettings()) -> FittedTriage:
    """Train the recipe on `images` (rows of `clean` and of each array in `augmented`)."""
    targets = target_matrix(images, settings.candidates)
    groups = [image.patient_id for image in images]
    rows = (source_balancing_weights([image.source for image in images]) if settings.balance_sources
            else np.ones(len(images)))
    oof = out_of_fold_logits(np.asarray(clean), augmented, targets, groups, rows, folds=settings.folds,
                             seed=settings.seed, l2=settings.l2)
    a, c, calibrated = _calibrated(oof, targets)
    findings: dict[str, Any] = {}
    shipped: list[int] = []
    points: dict[str, OperatingPoint] = {}
    for j, label in enumerate(settings.candidates):
        known = ~np.isnan(targets[:, j])
        record = supported(targets[known, j], calibrated[known, j], min_positives=settings.min_positives,
                           min_negatives=settings.min_negatives, min_auroc_lower=settings.min_auroc_lower)
        if record["supported"]:
            point = operating_point(targets[known, j], calibrated[known, j], sensitivity=settings.target_sensitivity,
                                    specificity_floor=settings.specificity_floor)
            record["operating_point"] = vars(point)
            precision = float(np.mean(targets[known, j][calibrated[known, j] >= point.threshold]))
            record["precision_at_operating_point"] = precision
            if precision < settings.min_precision:
                record.update(supported=False, why=f"validation precision {precision:.2f} at its operating point "
                                                   f"(threshold {point.threshold:.3f}) < {settings.min_precision}")
            else:
                points[label] = point
                shipped.append(j)
        findings[label] = record
    if not shipped:
        raise ValueError("the validation data support no finding; nothing to ship")
    final = fit_linear_head(*stack_variants(np.asarray(clean), augmented, targets, rows), l2=settings.l2)
    weight, bias = final.fold(a, c)
    abnormality_oof = calibrated[:, shipped].max(axis=1)
    opacity = targets[:, settings.candidates.index(LUNG_OPACITY)]
    known = ~np.isnan(opacity)
    abnormal_point = operating_point(opacity[known], abnormality_oof[known], sensitivity=settings.target_sensitivity,
                                     specificity_floor=settings.specificity_floor)
    labels = tuple(settings.candidates[j] for j in shipped)
    return FittedTriage(
        labels=labels, weight=weight[shipped], bias=bias[shipped],
        thresholds={label: points[label].threshold for label in labels},
        abnormality_threshold=abnormal_point.threshold,
        validation={
            "method": f"{settings.folds}-fold patient-grouped out-of-fold predictions on the development images",
            "findings": findings,
            ABNORMALITY: {"target": LUNG_OPACITY, "operating_point": vars(abnormal_point)},
            "settings": vars(settings) | {"candidates": list(settings.candidates)},
            "out_of_fold": {"logits": oof, "calibrated": calibrated, "targets": targets},
        },
    )


def head_only(clean: npt.NDArray[Any], targets: Floats, sources: Sequence[str], settings: RecipeSettings
              ) -> LinearHead:
    """An uncalibrated head on clean rows only (for quick comparisons)."""
    rows = source_balancing_weights(sources) if settings.balance_sources else np.ones(len(sources))
    return fit_linear_head(clean, targets, row_weights=rows, l2=settings.l2)


def public_validation(fitted: FittedTriage) -> Mapping[str, Any]:
    """The validation record without the per-image arrays (for JSON)."""
    return {k: v for k, v in fitted.validation.items() if k != "out_of_fold"}


__all__ = ["ABNORMALITY", "CANDIDATE_FINDINGS", "FittedTriage", "RecipeSettings", "fit_triage", "public_validation",
           "target_matrix"]
