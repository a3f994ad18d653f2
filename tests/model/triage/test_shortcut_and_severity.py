"""The source-shortcut and severity measurements on synthetic data whose answers are known."""

from __future__ import annotations

import numpy as np

from radtriage.model.evaluation.shortcut import fit_severity, severity_cross_validation, source_shortcut


def test_source_shortcut_separates_distinct_sources_and_not_identical_ones() -> None:
    rng = np.random.default_rng(0)
    sources = ["a"] * 100 + ["b"] * 100
    groups = [f"p{i}" for i in range(200)]
    distinct = rng.normal(size=(200, 5)) + np.r_[np.zeros(100), 3 * np.ones(100)][:, None]
    same = rng.normal(size=(200, 5))
    assert source_shortcut(distinct, sources, groups)["balanced_accuracy"] > 0.95
    assert source_shortcut(same, sources, groups)["balanced_accuracy"] < 0.7


def test_severity_is_ranked_on_held_out_patients() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(90, 30))
    extent = np.clip(4 + 1.5 * features[:, 0] + 0.3 * rng.normal(size=90), 0, 8)
    groups = [f"p{i // 2}" for i in range(90)]
    cv = severity_cross_validation(features, extent, extent / 8 * 6, groups)
    assert cv["spearman_geographic_extent"] > 0.8 and len(cv["predicted"]) == 90
    weight, bias = fit_severity(features, extent, cv["alpha"])
    assert np.corrcoef(features @ weight + bias, extent)[0, 1] > 0.9
