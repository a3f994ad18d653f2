"""The trained part of the triage model: linear heads on frozen features, their calibration and operating points.

* `fit_linear_head`: multi-label logistic regression (masked: a label a source does not state is not a negative),
  L2-regularised, on standardised features, with per-row weights (source balancing). Full-batch L-BFGS: the
  problem is convex and small, so the answer does not depend on a learning-rate schedule.
* `out_of_fold_logits`: the validation data every later choice is made on. Patient-grouped K-fold on the
  development images: each image is scored by a head that never saw its patient (nor any augmented copy of it).
* `platt`: calibration (logistic regression on the logit: a temperature and a bias per label), folded into the
  head's weights so that the network's sigmoid output *is* the calibrated probability.
* `operating_point`: the per-finding threshold, at a stated sensitivity *and* a specificity floor.
* `supported`: whether the validation data can support a finding at all (enough positives and negatives, and an
  AUROC whose 95% lower bound clears a floor). A finding that fails is not shipped; the service then reports it
  "not assessed" where the triage policy names it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LinearHead:
    """``logits = ((x - mean) / scale) @ weight.T + bias``; `fold` gives the equivalent raw-feature layer."""

    mean: Floats  # (F,)
    scale: Floats  # (F,)
    weight: Floats  # (L, F)
    bias: Floats  # (L,)

    def logits(self, features: npt.NDArray[Any]) -> Floats:
        standardised = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        result: Floats = standardised @ self.weight.T + self.bias
        return result

    def fold(self, temperature: Floats | None = None, shift: Floats | None = None) -> tuple[Floats, Floats]:
        """(weight, bias) on raw features, with calibration ``a * logit + c`` folded in."""
        a = np.ones(len(self.bias)) if temperature is None else np.asarray(temperature, dtype=np.float64)
        c = np.zeros(len(self.bias)) if shift is None else np.asarray(shift, dtype=np.float64)
        weight = self.weight / self.scale
        bias = self.bias - weight @ self.mean
        return weight * a[:, None], bias * a + c


def fit_linear_head(features: npt.NDArray[Any], targets: npt.NDArray[Any],
                    row_weights: npt.NDArray[Any] | None = None, *, l2: float = 1.0, max_iter: int = 60) -> LinearHead:
    """Masked multi-label logistic regression. `targets` (N, L) holds 1, 0 or NaN (unknown, ignored)."""
    x = np.asarray(features, dtype=np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    xs = torch.from_numpy((x - mean) / scale)
    y = torch.from_numpy(np.nan_to_num(np.asarray(targets, dtype=np.float64), nan=0.0))
    known = torch.from_numpy(~np.isnan(np.asarray(targets, dtype=np.float64))).to(torch.float64)
    rows = (torch.ones(len(x), dtype=torch.float64) if row_weights is None
            else torch.as_tensor(row_weights, dtype=torch.float64))
    weights = known * rows[:, None]
    per_label = weights.sum(dim=0).clamp_min(1.0)
    weight = torch.zeros((y.shape[1], x.shape[1]), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = xs @ weight.T + bias
        losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        loss: torch.Tensor = ((losses * weights).sum(dim=0) / per_label).sum() + l2 * (weight**2).sum() / x.shape[0]
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        optimiser.step(closure)  # type: ignore[no-untyped-call]
    return LinearHead(mean, scale, weight.detach().numpy().copy(), bias.detach().numpy().copy())


def group_folds(groups: Sequence[str], folds: int, seed: int) -> npt.NDArray[np.int64]:
    """A fold number per row, the same for every row of one group (patient); deterministic for a seed."""
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[i]: int(rank % folds) for rank, i in enumerate(order)}
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


def out_of_fold_logits(clean: npt.NDArray[Any], augmented: Sequence[npt.NDArray[Any]], targets: npt.NDArray[Any],
                       groups: Sequence[str], row_weights: npt.NDArray[Any], *, folds: int = 5, seed: int = 0,
                       l2: float = 1.0) -> Floats:
    """(N, L) logits for the clean rows, each from a head trained on the other folds (clean + augmented rows)."""
    fold = group_folds(groups, folds, seed)
    result = np.empty((len(clean), targets.shape[1]))
    for k in range(folds):
        train, held = fold != k, fold == k
        head = fit_linear_head(*stack_variants(clean[train], [a[train] for a in augmented], targets[train],
                                                row_weights[train]), l2=l2)
        result[held] = head.logits(clean[held])
    return result


def stack_variants(clean: npt.NDArray[Any], augmented: Sequence[npt.NDArray[Any]], targets: npt.NDArray[Any],
                   row_weights: npt.NDArray[Any]) -> tuple[Floats, Floats, Floats]:
    """Clean and augmented copies as one training set: (features, targets, row weights)."""
    copies = 1 + len(augmented)
    features = np.concatenate([clean, *augmented]).astype(np.float64)
    return features, np.tile(targets, (copies, 1)), np.tile(row_weights, copies) / copies


def source_balancing_weights(sources: Sequence[str]) -> Floats:
    """Row weights under which every source carries the same total weight (mean 1)."""
    names, counts = np.unique(np.asarray(sources), return_counts=True)
    per_source = dict(zip(names.tolist(), counts.tolist(), strict=True))
    raw = np.array([1.0 / per_source[s] for s in sources])
    result: Floats = raw * len(raw) / raw.sum()
    return result


def sigmoid(x: npt.NDArray[Any]) -> Floats:
    result: Floats = 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))
    return result


def platt(logits: npt.NDArray[Any], y: npt.NDArray[Any]) -> tuple[float, float]:
    """(a, c) so that ``sigmoid(a * logit + c)`` is calibrated on (`logits`, `y`) (Platt scaling)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e4).fit(np.asarray(logits, dtype=np.float64).reshape(-1, 1), np.asarray(y))
    return float(model.coef_[0, 0]), float(model.intercept_[0])


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    sensitivity: float
    specificity: float
    #: Why the threshold is where it is: "sensitivity target" or "specificity floor".
    set_by: str


def operating_point(y: npt.NDArray[Any], p: npt.NDArray[Any], *, sensitivity: float,
                    specificity_floor: float) -> OperatingPoint:
    """The highest threshold with sensitivity >= `sensitivity`, raised until specificity >= `specificity_floor`.

    A threshold is never below the lowest probability the negatives can be told apart at: when the target
    sensitivity would flag more than (1 - floor) of the negatives, the floor wins and sensitivity is what it is.
    """
    y_arr, p_arr = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    positives, negatives = np.sort(p_arr[y_arr == 1.0])[::-1], np.sort(p_arr[y_arr == 0.0])
    by_sensitivity = float(positives[max(math.ceil(sensitivity * positives.size - 1e-9), 1) - 1])
    # The smallest threshold that keeps at least `floor` of the negatives below it.
    keep = math.ceil(specificity_floor * negatives.size - 1e-9)
    by_floor = float(np.nextafter(negatives[keep - 1], 1.0)) if keep > 0 else 0.0
    threshold, set_by = (by_sensitivity, "sensitivity target") if by_sensitivity >= by_floor else (
        by_floor, "specificity floor")
    return OperatingPoint(threshold, float(np.mean(positives >= threshold)), float(np.mean(negatives < threshold)),
                          set_by)


def supported(y: npt.NDArray[Any], p: npt.NDArray[Any], *, min_positives: int, min_negatives: int,
              min_auroc_lower: float, resamples: int = 500, seed: int = 0) -> dict[str, Any]:
    """Whether validation data can support this finding, and the figures that decided it."""
    from sklearn.metrics import roc_auc_score

    y_arr, p_arr = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    n_pos, n_neg = int(np.sum(y_arr == 1.0)), int(np.sum(y_arr == 0.0))
    record: dict[str, Any] = {"positives": n_pos, "negatives": n_neg}
    if n_pos < min_positives or n_neg < min_negatives:
        record.update(supported=False, why=f"{n_pos} positives and {n_neg} negatives in validation "
                                           f"(needs {min_positives} and {min_negatives})")
        return record
    low, high = bootstrap_ci(roc_auc_score, y_arr, p_arr, resamples=resamples, seed=seed)
    record.update(auroc=float(roc_auc_score(y_arr, p_arr)), auroc_ci95=[low, high])
    if low is None or low < min_auroc_lower:
        record.update(supported=False, why=f"validation AUROC 95% lower bound {low:.2f} < {min_auroc_lower}")
    else:
        record.update(supported=True, why="enough validation data and AUROC lower bound above the floor")
    return record


def bootstrap_ci(statistic: Any, y: npt.NDArray[Any], p: npt.NDArray[Any], *, resamples: int = 1000,
                 seed: int = 0, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of ``statistic(y, p)``; resamples with one class only are redrawn."""
    y_arr, p_arr = np.asarray(y), np.asarray(p)
    if len(np.unique(y_arr)) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    values: list[float] = []
    for _ in range(resamples * 3):
        index = rng.integers(0, y_arr.size, y_arr.size)
        if len(np.unique(y_arr[index])) == 2:
            values.append(float(statistic(y_arr[index], p_arr[index])))
        if len(values) == resamples:
            break
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


__all__ = [
    "LinearHead", "OperatingPoint", "bootstrap_ci", "fit_linear_head", "group_folds", "operating_point",
    "out_of_fold_logits", "platt", "sigmoid", "source_balancing_weights", "stack_variants", "supported",
]
