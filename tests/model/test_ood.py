"""The out-of-distribution gate: images unlike the training chest films are not analysed."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.imaging.dicom_pixels import load_image_file, pixels_for_display, read_dataset
from radtriage.model.ood import REFERENCE_FILE, fit_reference
from radtriage.model.preprocessing import to_model_input
from radtriage.model.registry import SHIPPED_DEFAULT
from radtriage.model.scorer import XrvScorer
from tests.support.data import pydicom_data_dir


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


@pytest.fixture(scope="module")
def shipped() -> XrvScorer:
    scorer = XrvScorer.from_artefact(SHIPPED_DEFAULT)
    assert scorer.ood is not None, "the shipped model carries its out-of-distribution reference"
    return scorer


def test_the_shipped_gate_passes_an_adult_chest_film(shipped: XrvScorer) -> None:
    shipped.prepare((pydicom_data_dir() / "RG1_J2KI.dcm").read_bytes())


@pytest.mark.parametrize("name", ["RG3_J2KI.dcm", "MR2_J2KI.dcm", "US1_UNCR.dcm"])
def test_the_shipped_gate_refuses_other_images_even_without_their_headers(shipped: XrvScorer, name: str) -> None:
    """The header gates would stop these first; here their pixels come as a bare image (as a PNG would)."""
    pixels = pixels_for_display(read_dataset((pydicom_data_dir() / name).read_bytes()))
    with pytest.raises(TriageError) as caught:
        shipped.prepare_array(pixels)
    assert caught.value.code is ErrorCode.OUT_OF_DISTRIBUTION


def test_a_tampered_reference_stops_the_model_from_loading(tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(SHIPPED_DEFAULT, copy)
    data = bytearray((copy / REFERENCE_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / REFERENCE_FILE).write_bytes(bytes(data))
    with pytest.raises(TriageError) as caught:
        XrvScorer.from_artefact(copy)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE


def test_held_out_chest_films_pass_and_inverted_ones_do_not(shipped: XrvScorer, shared_data: Path) -> None:
    with (SHIPPED_DEFAULT / "split.csv").open(newline="") as fh:
        held_out = [r for r in csv.DictReader(fh) if r["split"] == "test" and r["source"] == "nih"]
    images = [load_image_file(shared_data / "cxr" / "nih" / r["image_id"].split(":", 1)[1]) for r in held_out]
    kept = sum(_passes(shipped.ood, to_model_input(image)) for image in images)
    assert kept / len(images) >= 0.95
    inverted = sum(not _passes(shipped.ood, to_model_input(1 - image)) for image in images[:20])
    assert inverted >= 15
