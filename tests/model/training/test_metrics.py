"""Metrics against values worked out by hand, and the properties the operating point must have."""

from __future__ import annotations

import numpy as np
import pytest

from radtriage.model.evaluation.metrics import (
    auroc,
    bootstrap_auroc_ci,
    calibration_bins,
    confusion_metrics,
    expected_calibration_error,
    finding_metrics,
    roc_curve,
    threshold_for_sensitivity,
)

Y = [1, 1, 0, 0, 1, 0]
P = [0.9, 0.4, 0.35, 0.1, 0.8, 0.6]


def test_confusion_metrics_by_hand() -> None:
    # At 0.5: called positive 0.9, 0.8 (true) and 0.6 (false); missed 0.4; correctly negative 0.35, 0.1.
    m = confusion_metrics(Y, P, 0.5)
    assert (m.tp, m.fp, m.tn, m.fn) == (2, 1, 2, 1)
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(2 / 3)
    assert m.specificity == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_threshold_is_inclusive() -> None:
    assert confusion_metrics([1], [0.5], 0.5).tp == 1


def test_auroc_by_hand_and_with_ties() -> None:
    # Positive-negative pairs ranked correctly: 0.9 beats 3, 0.8 beats 3, 0.4 beats 2 (0.35, 0.1) -> 8 of 9.
    assert auroc(Y, P) == pytest.approx(8 / 9)
    assert auroc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert auroc([1, 1, 0], [0.7, 0.5, 0.5]) == pytest.approx((1 + 0.5) / 2)
    assert auroc([1, 1], [0.2, 0.3]) is None


def test_roc_curve_spans_the_square_and_matches_the_area() -> None:
    fpr, tpr = roc_curve(Y, P)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    area = sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))
    assert area == pytest.approx(auroc(Y, P))


def test_undefined_rates_are_none_not_zero() -> None:
    m = confusion_metrics([0, 0], [0.1, 0.2], 0.5)
    assert m.precision is None and m.recall is None and m.specificity == 1.0


def test_ece_is_zero_for_perfectly_calibrated_bins() -> None:
    # In each bin the fraction of positives equals the predicted probability exactly.
    y = [1] + [0] * 19 + [1] * 11 + [0] * 9 + [1] * 19 + [0]
    p = [0.05] * 20 + [0.55] * 20 + [0.95] * 20
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)


def test_ece_is_near_zero_for_sampled_calibrated_data_and_large_when_overconfident() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(float)
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error([1, 0] * 50, [0.9] * 100) == pytest.approx(0.4)


def test_calibration_bins_put_one_in_the_last_bin() -> None:
    bins = calibration_bins([1, 0], [1.0, 0.0], bins=10)
    assert bins[-1].count == 1 and bins[0].count == 1


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_threshold_for_sensitivity_meets_the_target_and_is_the_highest_that_does(target: float) -> None:
    rng = np.random.default_rng(1)
    y = (rng.uniform(size=400) < 0.3).astype(float)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    threshold = threshold_for_sensitivity(y, p, target)
    assert threshold is not None
    assert confusion_metrics(y, p, threshold).recall >= target
    higher = np.min(p[p > threshold]) if np.any(p > threshold) else None
    if higher is not None:
        assert confusion_metrics(y, p, higher).recall < target


def test_threshold_without_positives_is_none() -> None:
    assert threshold_for_sensitivity([0, 0], [0.1, 0.2], 0.9) is None


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(2)
    y = (rng.uniform(size=200) < 0.5).astype(float)
    p = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    low, high = bootstrap_auroc_ci(y, p, resamples=300, seed=5)
    assert low is not None and high is not None
    assert low < auroc(y, p) < high
    assert (low, high) == bootstrap_auroc_ci(y, p, resamples=300, seed=5)


def test_finding_metrics_collects_everything() -> None:
    metrics = finding_metrics(Y, P, 0.5, bootstrap=50)
    assert set(metrics) >= {"accuracy", "precision", "recall", "specificity", "f1", "auroc", "auroc_ci95", "ece",
                            "calibration"}


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        auroc([2, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        auroc([1, 0], [0.1])
