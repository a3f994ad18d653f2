"""Acquisition-chain augmentation: reproducible, in range, and actually different from the input."""

from __future__ import annotations

import numpy as np

from radtriage.model.training.acquisition import acquisition_augment, equalise


def _film() -> np.ndarray:
    y, x = np.mgrid[0:300, 0:260] / 300.0
    return np.clip(0.2 + 0.6 * np.exp(-((x - 0.45) ** 2 + (y - 0.5) ** 2) * 8), 0, 1).astype(np.float32)


def test_augmented_copies_are_reproducible_in_range_and_vary() -> None:
    film = _film()
    first = acquisition_augment(film, np.random.default_rng(7))
    again = acquisition_augment(film, np.random.default_rng(7))
    other = acquisition_augment(film, np.random.default_rng(8))
    np.testing.assert_array_equal(first, again)
    assert first.ndim == 2 and first.dtype == np.float32 and 0.0 <= first.min() and first.max() <= 1.0
    assert not np.array_equal(first, other)


def test_equalise_spreads_the_grey_scale_and_keeps_order() -> None:
    film = _film() * 0.3 + 0.2  # a flat, low-contrast export
    flat = equalise(film)
    assert flat.min() == 0.0 and flat.max() == 1.0
    order = np.argsort(film.ravel())
    assert np.all(np.diff(flat.ravel()[order]) >= -1e-6)
