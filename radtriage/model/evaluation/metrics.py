"""Classification metrics for one finding, written out so that each can be checked by hand (no scikit-learn).

Conventions: `y` holds 1 (finding present) and 0 (absent); `p` the model's probability; a case is called positive
when ``p >= threshold`` (the rule `FindingScore.positive` applies in the service). A metric whose denominator is
zero (precision with no positive calls, AUROC with one class only) is None, never 0 or 1 by convention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def _arrays(y: Sequence[float] | npt.NDArray[Any], p: Sequence[float] | npt.NDArray[Any]
            ) -> tuple[FloatArray, FloatArray]:
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    p_arr = np.asarray(p, dtype=np.float64).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"labels and scores differ in length ({y_arr.size} and {p_arr.size})")
    if not np.isin(y_arr, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(p_arr).all():
        raise ValueError("scores must be finite")
    return y_arr, p_arr


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


@dataclass(frozen=True)
class ConfusionMetrics:
    """Counts and rates at one threshold."""

    threshold: float
    n: int
    positives: int
    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float | None
    precision: float | None
    recall: float | None  # sensitivity
    specificity: float | None
    f1: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confusion_metrics(y: Sequence[float] | npt.NDArray[Any], p: Sequence[float] | npt.NDArray[Any],
                      threshold: float) -> ConfusionMetrics:
    y_arr, p_arr = _arrays(y, p)
    called = p_arr >= threshold
    truth = y_arr == 1.0
    tp = int(np.sum(called & truth))
    fp = int(np.sum(called & ~truth))
    tn = int(np.sum(~called & ~truth))
    fn = int(np.sum(~called & truth))
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return ConfusionMetrics(
        threshold=float(threshold), n=int(y_arr.size), positives=tp + fn, tp=tp, fp=fp, tn=tn, fn=fn,
        accuracy=_ratio(tp + tn, y_arr.size), precision=precision, recall=recall,
        specificity=_ratio(tn, tn + fp), f1=f1,
    )


def auroc(y: Sequence[float] | npt.NDArray[Any], p: Sequence[float] | npt.NDArray[Any]) -> float | None:
    """Area under the ROC curve: the probability that a random positive scores above a random negative.

    Computed as the Mann-Whitney U statistic with ties counted one half (average ranks), which equals the
    trapezoidal area under the empirical ROC curve.
    """
    y_arr, p_arr = _arrays(y, p)
    n_pos = int(np.sum(y_arr == 1.0))
    n_neg = y_arr.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(p_arr)
    rank_sum = float(np.sum(ranks[y_arr == 1.0]))
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _average_ranks(values: FloatArray) -> FloatArray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts).astype(np.float64)
    first = last - counts + 1
    ranks: FloatArray = ((first + last) / 2)[inverse]
    return ranks


def roc_curve(y: Sequence[float] | npt.NDArray[Any], p: Sequence[float] | npt.NDArray[Any]
              ) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates) at every distinct threshold, from (0, 0) to (1, 1)."""
    y_arr, p_arr = _arrays(y, p)
    n_pos = float(np.sum(y_arr == 1.0))
    n_neg = float(y_arr.size - n_pos)
    if not n_pos or not n_neg:
        return [], []
    fpr, tpr = [0.0], [0.0]
    for threshold in np.unique(p_arr)[::-1]:
        called = p_arr >= threshold
        tpr.append(float(np.sum(called & (y_arr == 1.0)) / n_pos))
        fpr.append(float(np.sum(called & (y_arr == 0.0)) / n_neg))
    return fpr, tpr


def bootstrap_auroc_ci(y: Sequence[float] | npt.NDArray[Any], p: Sequence[float] | npt.NDArray[Any], *,
                       resamples: int = 1000, confidence: float = 0.95, seed: int = 0
                       ) -> tuple[float | None, float | None]:
    """Percentile bootstrap confidence interval of the AUROC (cases resampled with replacement, seeded).

    Resamples that draw one class only are redrawn rather than dropped, so the interval is not biased towards
    the easier resamples. None, None when the data hold one class only.
    """
    y_arr, p_arr = _arrays(y, p)
    if auroc(y_arr, p_arr) is None:
        return None, None
    rng = np.random.default_rng(seed)
    values: list[float] = []
    while len(values) < resamples:
        index = rng.integers(0, y_arr.size, y_arr.size)
        value = auroc(y_arr[index], p_arr[index])
        if value is not None:
            values.append(value)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


@dataclass(frozen=True)
class CalibrationBin:
    lower: float
    upper: float
    count: int
    mean_predicted: float | None
    fraction_positive: float | None


def calibration_bins(y: Sequence[float] | npt.NDArray[Any], p: Sequence[float] | npt.NDArray[Any],
                     bins: int = 10) -> list[CalibrationBin]:
    """Equal-width probability bins for a reliability diagram; the last bin includes 1.0."""
    y_arr, p_arr = _arrays(y, p)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p_arr, edges[1:-1], right=False), 0, bins - 1)
    result = []
    for b in range(bins):
        members = index == b
        count = int(np.sum(members))
        result.append(CalibrationBin(
            lower=float(edges[b]), upper=float(edges[b + 1]), count=count,
            mean_predicted=float(np.mean(p_arr[members])) if count else None,
            fraction_positive=float(np.mean(y_arr[members])) if count else None,
        ))
    return result


def expected_calibration_error(y: Sequence[float] | npt.NDArray[Any], p: Sequence[float] | npt.NDArray[Any],
                               bins: int = 10) -> float | None:
    """ECE: the case-weighted mean, over probability bins, of |fraction positive - mean predicted probability|."""
    y_arr, _ = _arrays(y, p)
    if y_arr.size == 0:
        return None
    total = 0.0
    for b in calibration_bins(y, p, bins):
        if b.count and b.mean_predicted is not None and b.fraction_positive is not None:
            total += b.count / y_arr.size * abs(b.fraction_positive - b.mean_predicted)
    return total


def threshold_for_sensitivity(y: Sequence[float] | npt.NDArray[Any], p: Sequence[float] | npt.NDArray[Any],
                              target: float) -> float | None:
    """The highest threshold at which sensitivity (recall) on these data is at least `target`.

    With n positives, at least k = ceil(target * n) of them must score >= the threshold, so the threshold is the
    k-th highest positive score; any higher threshold misses one more positive. A higher threshold means fewer
    false positives, so this is the most specific operating point that meets the target. None without positives.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y_arr, p_arr = _arrays(y, p)
    positive_scores = np.sort(p_arr[y_arr == 1.0])[::-1]
    if positive_scores.size == 0:
        return None
    needed = math.ceil(target * positive_scores.size - 1e-9)
    return float(positive_scores[needed - 1])


def finding_metrics(y: Sequence[float] | npt.NDArray[Any], p: Sequence[float] | npt.NDArray[Any], threshold: float,
                    *, bootstrap: int = 1000, seed: int = 0, bins: int = 10) -> dict[str, Any]:
    """Everything the evaluation report shows for one finding in one group of cases."""
    y_arr, p_arr = _arrays(y, p)
    low, high = bootstrap_auroc_ci(y_arr, p_arr, resamples=bootstrap, seed=seed) if bootstrap else (None, None)
    metrics = confusion_metrics(y_arr, p_arr, threshold).to_dict()
    metrics.update(
        auroc=auroc(y_arr, p_arr),
        auroc_ci95=[low, high],
        ece=expected_calibration_error(y_arr, p_arr, bins),
        calibration=[asdict(b) for b in calibration_bins(y_arr, p_arr, bins)] if y_arr.size else [],
    )
    return metrics


__all__ = [
    "CalibrationBin",
    "ConfusionMetrics",
    "auroc",
    "bootstrap_auroc_ci",
    "calibration_bins",
    "confusion_metrics",
    "expected_calibration_error",
    "finding_metrics",
    "roc_curve",
    "threshold_for_sensitivity",
]
