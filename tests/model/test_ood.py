"""The out-of-distribution gate: images unlike the training chest films are not analysed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.model.ood import REFERENCE_FILE, fit_reference
from radtriage.model.placeholder import ensure_placeholder
from radtriage.model.preprocessing import to_model_input
from radtriage.model.scorer import XrvScorer
from radtriage.model.training.ood_reference import install_ood_reference


def synthetic_film(rng: np.random.Generator, *, inverted: bool = False) -> np.ndarray:
    """Two dark 'lungs' either side of a bright 'mediastinum', with some variation: a toy chest film."""
    y, x = np.mgrid[0:224, 0:224] / 224.0
    spread, height = rng.uniform(0.18, 0.22), rng.uniform(0.45, 0.55)
    lungs = np.exp(-(((x - 0.5 + spread) / 0.12) ** 2 + ((y - height) / 0.25) ** 2)) + np.exp(
        -(((x - 0.5 - spread) / 0.12) ** 2 + ((y - height) / 0.25) ** 2)
    )
    image = np.clip(0.8 - 0.6 * lungs * rng.uniform(0.8, 1.2) + rng.normal(0, 0.002, (224, 224)), 0, 1)
    return (1 - image if inverted else image).astype(np.float32)


def test_the_gate_keeps_the_kind_it_was_fitted_on_and_refuses_another() -> None:
    rng = np.random.default_rng(7)
    reference = fit_reference([to_model_input(synthetic_film(rng)) for _ in range(400)], k=8, quantile=0.995)
    kept = sum(1 for _ in range(50) if _passes(reference, to_model_input(synthetic_film(rng))))
    assert kept >= 45
    with pytest.raises(TriageError) as caught:
        reference.check(to_model_input(synthetic_film(rng, inverted=True)))
    assert caught.value.code is ErrorCode.OUT_OF_DISTRIBUTION


def _passes(reference, model_input) -> bool:
    try:
        reference.check(model_input)
    except TriageError:
        return False
    return True


# The shipped default model screens its inputs with the feature-space gate of radtriage/model/input_gate.py (its
# refusals of noise, photographs, inverted films and other body parts are tested on the shipped model in
# tests/model/training/test_default_model.py). This eigen-chest gate stays for artefacts that carry one
# (`radtriage model fit-ood`), so its checksum is tested here on an artefact fitted for the test.


def test_a_tampered_reference_stops_the_model_from_loading(tmp_path: Path) -> None:
    model = ensure_placeholder(tmp_path / "models")
    rng = np.random.default_rng(11)
    films = []
    for n in range(40):
        path = tmp_path / f"film{n}.png"
        Image.fromarray((synthetic_film(rng) * 255).astype(np.uint8)).save(path)
        films.append(path)
    install_ood_reference(model, films, k=8)
    assert XrvScorer.from_artefact(model).ood is not None  # the untouched reference loads
    data = bytearray((model / REFERENCE_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (model / REFERENCE_FILE).write_bytes(bytes(data))
    with pytest.raises(TriageError) as caught:
        XrvScorer.from_artefact(model)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
