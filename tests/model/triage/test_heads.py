"""Linear heads, calibration, operating points and the 'supported' rule (synthetic data, bounded sizes)."""

from __future__ import annotations

import numpy as np

from radtriage.model.training.heads import (
    fit_linear_head,
    group_folds,
    operating_point,
    platt,
    sigmoid,
    source_balancing_weights,
    supported,
)


def _data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(float)
    return x, y


def test_head_learns_and_ignores_unknown_labels() -> None:
    x, y = _data()
    targets = np.stack([y, np.full_like(y, np.nan)], axis=1)  # second label: nothing known
    targets[:50, 1] = 1.0 - y[:50]
    head = fit_linear_head(x, targets)
    logits = head.logits(x)
    assert np.mean((logits[:, 0] > 0) == (y == 1)) > 0.85
    # Folding standardisation and a calibration into raw-feature weights changes nothing but the affine map.
    weight, bias = head.fold(np.array([2.0, 1.0]), np.array([0.5, 0.0]))
    np.testing.assert_allclose(x @ weight.T + bias, logits * [2.0, 1.0] + [0.5, 0.0], rtol=1e-6, atol=1e-6)


def test_platt_scaling_calibrates_overconfident_logits() -> None:
    rng = np.random.default_rng(1)
    true_logit = rng.normal(size=4000)
    y = (rng.random(4000) < sigmoid(true_logit)).astype(float)
    a, c = platt(5.0 * true_logit + 1.0, y)  # five times overconfident, shifted
    assert abs(a - 0.2) < 0.05 and abs(c + 0.2) < 0.1  # the true map: logit/5 - 0.2


def test_operating_point_meets_sensitivity_or_the_specificity_floor() -> None:
    x, y = _data(1000)
    p = sigmoid(x[:, 0])
    easy = operating_point(y, p, sensitivity=0.8, specificity_floor=0.5)
    assert easy.set_by == "sensitivity target" and easy.sensitivity >= 0.8
    strict = operating_point(y, p, sensitivity=0.99, specificity_floor=0.9)
    assert strict.set_by == "specificity floor" and strict.specificity >= 0.9 and strict.sensitivity < 0.99
    assert np.mean(p[y == 0] >= strict.threshold) <= 0.1


def test_a_finding_without_enough_validation_data_is_not_supported() -> None:
    x, y = _data(400)
    p = sigmoid(x[:, 0])
    assert supported(y, p, min_positives=30, min_negatives=30, min_auroc_lower=0.7)["supported"]
    few = np.zeros_like(y)
    few[:12] = 1.0  # like Pneumothorax: 12 positives
    record = supported(few, p, min_positives=30, min_negatives=30, min_auroc_lower=0.7)
    assert not record["supported"] and "12 positives" in record["why"]
    noise = supported(y, np.random.default_rng(3).random(len(y)), min_positives=30, min_negatives=30,
                      min_auroc_lower=0.7)
    assert not noise["supported"] and "lower bound" in noise["why"]


def test_folds_keep_patients_together_and_sources_weigh_alike() -> None:
    groups = [f"p{i // 3}" for i in range(90)]
    folds = group_folds(groups, 5, seed=0)
    for patient in set(groups):
        assert len({folds[i] for i, g in enumerate(groups) if g == patient}) == 1
    weights = source_balancing_weights(["a"] * 90 + ["b"] * 10)
    assert abs(weights[:90].sum() - weights[90:].sum()) < 1e-9 and abs(weights.mean() - 1.0) < 1e-9
