"""What the model card and ``radtriage model evaluate`` report for a frozen-backbone triage model.

* `group_metrics`: one group of held-out images (a source's test split, or a whole source left out): AUROC with a
  95% bootstrap interval (scikit-learn ``roc_auc_score``) for "abnormality" against the acute-abnormality target
  ("Lung Opacity") and for Pneumonia; sensitivity and specificity at the shipped operating points; the share the
  default triage policy would raise to urgent or stat; ECE of "abnormality"; the JSRT non-nodule films flagged.
* `leave_one_source_out`: the recipe trained on every other source (all their images), then judged on the left-out
  source at the operating points *that* training chose: the figure that says how the model does at a hospital it
  never saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from radtriage.app.core.domain import FindingScore, Priority

from ..datasets import LabelledImage
from ..policy import ThresholdPolicy, default_policy
from ..sources import LUNG_OPACITY, SOURCES
from ..training.heads import bootstrap_ci
from ..training.recipe import ABNORMALITY, FittedTriage, RecipeSettings, fit_triage, target_matrix

Floats = npt.NDArray[np.float64]


def _auroc(y: Floats, p: Floats, resamples: int) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    known = ~np.isnan(y)
    y, p = y[known], p[known]
    record: dict[str, Any] = {"n": int(len(y)), "positives": int(np.sum(y == 1))}
    if len(np.unique(y)) < 2:
        return record
    low, high = bootstrap_ci(roc_auc_score, y, p, resamples=resamples)
    record.update(auroc=float(roc_auc_score(y, p)), auroc_ci95=[low, high],
                  average_precision=float(average_precision_score(y, p)))
    return record


def _rates(y: Floats, called: npt.NDArray[np.bool_]) -> dict[str, Any]:
    known = ~np.isnan(y)
    pos, neg = known & (y == 1), known & (y == 0)
    return {
        "sensitivity": float(np.mean(called[pos])) if pos.any() else None,
        "specificity": float(1.0 - np.mean(called[neg])) if neg.any() else None,
    }


def expected_calibration_error(y: Floats, p: Floats, bins: int = 10) -> float | None:
    """Case-weighted mean |observed - predicted| over equal-width bins (scikit-learn ``calibration_curve``)."""
    from sklearn.calibration import calibration_curve

    known = ~np.isnan(y)
    y, p = y[known], p[known]
    if len(y) == 0:
        return None
    if len(np.unique(y)) < 2:
        return float(abs(np.mean(y) - np.mean(p)))
    observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0.0, 1.0, bins + 1))[0]
    counts = counts[counts > 0]
    return float(np.sum(counts * np.abs(observed - predicted)) / counts.sum())


def urgent_flags(fitted: FittedTriage, probabilities: Floats, policy: ThresholdPolicy | None = None
                 ) -> npt.NDArray[np.bool_]:
    """Whether the (default) triage policy raises each image of a routine order to urgent or higher."""
    policy = policy or default_policy()
    flags = []
    for row in probabilities:
        findings = [FindingScore(label, float(p), fitted.thresholds[label]) for label, p in zip(fitted.labels, row,
                                                                                                 strict=True)]
        flags.append(policy.decide(findings, Priority.ROUTINE)[0] >= Priority.URGENT)
    return np.array(flags, dtype=bool)


def group_metrics(fitted: FittedTriage, images: Sequence[LabelledImage], features: npt.NDArray[Any], *,
                  resamples: int = 1000) -> dict[str, Any]:
    probabilities = fitted.probabilities(features)
    abnormality = probabilities.max(axis=1)
    targets = target_matrix(images, (LUNG_OPACITY, "Pneumonia"))
    urgent = urgent_flags(fitted, probabilities)
    flagged = abnormality >= fitted.abnormality_threshold
    record: dict[str, Any] = {
        "images": len(images),
        "urgent_share": float(np.mean(urgent)) if len(images) else None,
        ABNORMALITY: {**_auroc(targets[:, 0], abnormality, resamples), **_rates(targets[:, 0], flagged),
                      "ece": expected_calibration_error(targets[:, 0], abnormality),
                      "threshold": fitted.abnormality_threshold},
        "urgent_vs_acute_abnormality": _rates(targets[:, 0], urgent),
    }
    for j, label in enumerate(fitted.labels):
        y = target_matrix(images, (label,))[:, 0]
        if np.isnan(y).all():
            continue
        called = probabilities[:, j] >= fitted.thresholds[label]
        record[label] = {**_auroc(y, probabilities[:, j], resamples), **_rates(y, called),
                         "ece": expected_calibration_error(y, probabilities[:, j]),
                         "threshold": fitted.thresholds[label]}
    no_nodule = np.array([image.source == "jsrt" and image.labels.get("Nodule") == 0.0 for image in images])
    if no_nodule.any():
        record["jsrt_non_nodule"] = {"films": int(no_nodule.sum()), "urgent_share": float(np.mean(urgent[no_nodule])),
                                     "abnormality_flagged_share": float(np.mean(flagged[no_nodule]))}
    return record


def leave_one_source_out(images: Sequence[LabelledImage], clean: npt.NDArray[Any],
                         augmented: Sequence[npt.NDArray[Any]],
                         settings: RecipeSettings, *, sources: Sequence[str] = SOURCES, resamples: int = 1000,
                         on_fitted: Callable[[str, FittedTriage, npt.NDArray[np.bool_]], None] | None = None,
                         ) -> dict[str, Any]:
    """Per source: train the recipe on all images of the other sources, report on this one."""
    names = np.array([image.source for image in images])
    report: dict[str, Any] = {}
    for source in sources:
        held = names == source
        if not held.any():
            continue
        train = ~held
        fitted = fit_triage([im for im, k in zip(images, train, strict=True) if k], np.asarray(clean)[train],
                            [np.asarray(a)[train] for a in augmented], settings)
        held_images = [im for im, k in zip(images, held, strict=True) if k]
        report[source] = {"trained_on": sorted(set(names[train].tolist())), "labels": list(fitted.labels),
                          **group_metrics(fitted, held_images, np.asarray(clean)[held], resamples=resamples)}
        if on_fitted is not None:
            on_fitted(source, fitted, held)
    return report


__all__ = ["expected_calibration_error", "group_metrics", "leave_one_source_out", "urgent_flags"]
