"""The feature-space input gate and the child detector: refusals carry coded reasons."""

from __future__ import annotations

import numpy as np
import pytest

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.model.input_gate import check_gate, fit_child_detector, fit_feature_gate, fit_inverted_detector


def test_novelty_gate_keeps_its_own_kind_and_refuses_the_far_and_the_off_subspace() -> None:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(4, 50))
    train = rng.normal(size=(600, 4)) @ basis + 0.05 * rng.normal(size=(600, 50))
    gate = fit_feature_gate(train, k=4, quantile=0.99)
    fresh = rng.normal(size=(300, 4)) @ basis + 0.05 * rng.normal(size=(300, 50))
    assert gate.refuses(fresh).mean() < 0.05
    far = 8.0 * rng.normal(size=(50, 4)) @ basis
    off = rng.normal(size=(50, 50))  # nothing like the training subspace
    assert gate.refuses(far).mean() > 0.9 and gate.refuses(off).all()


def test_child_detector_limit_keeps_adult_refusals_near_the_target() -> None:
    rng = np.random.default_rng(1)
    n = 600
    is_child = rng.random(n) < 0.15
    features = rng.normal(size=(n, 20)) + 1.5 * is_child[:, None] * (np.arange(20) < 3)
    groups = [f"p{i}" for i in range(n)]
    detector = fit_child_detector(features, is_child, groups, adult_refusal=0.02)
    cv = detector.cross_validation
    assert cv["adults_refused"] <= 0.05 and cv["children_refused"] > 0.3
    assert detector.probability(features[is_child]).mean() > detector.probability(features[~is_child]).mean()


@pytest.mark.parametrize(("measures", "code"), [
    ((9.0, 1.0, 0.0), ErrorCode.OUT_OF_DISTRIBUTION),
    ((1.0, 99.0, 0.0), ErrorCode.OUT_OF_DISTRIBUTION),
    ((float("nan"), 1.0, 0.0), ErrorCode.OUT_OF_DISTRIBUTION),
    ((1.0, 1.0, 0.95), ErrorCode.OUTSIDE_INTENDED_USE),
])
def test_check_gate_refuses_with_a_coded_reason(measures: tuple[float, float, float], code: ErrorCode) -> None:
    with pytest.raises(TriageError) as refused:
        check_gate(*measures, limits=(2.0, 10.0), child_limit=0.9)
    assert refused.value.code is code and "not analysed" in refused.value.detail


def test_check_gate_lets_an_ordinary_adult_film_through() -> None:
    check_gate(1.0, 5.0, 0.2, limits=(2.0, 10.0), child_limit=0.9)


def test_without_enough_children_the_detector_refuses_nobody() -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(200, 10))
    is_child = np.zeros(200, dtype=bool)
    is_child[:3] = True
    detector = fit_child_detector(features, is_child, [f"p{i}" for i in range(200)], adult_refusal=0.01)
    assert (detector.probability(features) < detector.limit).all()


def test_inverted_detector_tells_a_film_from_its_negative() -> None:
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:64, 0:64] / 64.0
    template = 0.6 * (np.abs(x - 0.5) < 0.08) - 0.4 * (np.abs(np.abs(x - 0.5) - 0.25) < 0.12) * (y > 0.2)
    films = template.ravel() + 0.2 * rng.normal(size=(150, 64 * 64))
    weight, bias, figures = fit_inverted_detector(films)
    assert figures["films_refused"] < 0.05 and figures["inverted_refused"] > 0.95
    assert ((-films) @ weight + bias > 0).mean() > 0.95


def test_novelty_is_reported_before_polarity_and_polarity_before_age() -> None:
    with pytest.raises(TriageError) as novel:
        check_gate(9.0, 1.0, 0.99, limits=(2.0, 10.0), child_limit=0.9, inverted=0.99)
    assert novel.value.code is ErrorCode.OUT_OF_DISTRIBUTION
    with pytest.raises(TriageError) as inverted:
        check_gate(1.0, 1.0, 0.99, limits=(2.0, 10.0), child_limit=0.9, inverted=0.99)
    assert inverted.value.code is ErrorCode.IMAGE_QUALITY and "inverted" in inverted.value.detail
