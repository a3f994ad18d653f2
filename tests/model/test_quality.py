"""Quality gates: an image the model should not be trusted on is "not analysed", with the reason."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.model.quality import QualityGates, check_pixels, patient_age_years
from radtriage.model.scorer import XrvScorer
from tests.support.data import pydicom_data_dir


def chest(**changes: object) -> bytes:
    ds = pydicom.dcmread(pydicom_data_dir() / "RG1_UNCR.dcm")
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("text", "years"),
    [("045Y", 45.0), ("018Y", 18.0), ("006M", 0.5), ("026W", 26 * 7 / 365.25), ("010D", 10 / 365.25)],
)
def test_patient_age_is_read_as_the_dicom_as_value_representation(text: str, years: float) -> None:
    assert patient_age_years(text) == pytest.approx(years)


@pytest.mark.parametrize("text", [None, "", "45", "45Y", "045X", "abc"])
def test_a_missing_or_malformed_age_is_unknown_not_zero(text: str | None) -> None:
    assert patient_age_years(text) is None


def test_an_adult_chest_passes_every_gate(placeholder_scorer: XrvScorer) -> None:
    placeholder_scorer.prepare(chest(PatientAge="045Y"))


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"PatientAge": "007Y"}, ErrorCode.OUTSIDE_INTENDED_USE),
        ({"PatientAge": "011M"}, ErrorCode.OUTSIDE_INTENDED_USE),
        ({"BitsStored": 6, "HighBit": 5}, ErrorCode.IMAGE_QUALITY),
    ],
)
def test_a_study_failing_a_gate_is_not_analysed(placeholder_scorer: XrvScorer, changes: dict, code: ErrorCode) -> None:
    with pytest.raises(TriageError) as caught:
        placeholder_scorer.prepare(chest(**changes))
    assert caught.value.code is code
    assert not caught.value.retryable


def test_a_thumbnail_is_refused_by_its_header() -> None:
    from radtriage.model.quality import check_header

    ds = pydicom.dcmread(pydicom_data_dir() / "RG1_UNCR.dcm", stop_before_pixels=True)
    ds.Rows, ds.Columns = 128, 120
    with pytest.raises(TriageError) as caught:
        check_header(ds, QualityGates())
    assert caught.value.code is ErrorCode.IMAGE_QUALITY


def test_a_flat_image_is_refused_and_a_real_one_is_not() -> None:
    flat = np.full((512, 512), 0.5, dtype=np.float32)
    flat[0, 0] = 1.0  # one bright pixel is not contrast
    with pytest.raises(TriageError) as caught:
        check_pixels(flat, QualityGates())
    assert caught.value.code is ErrorCode.IMAGE_QUALITY
    ramp = np.tile(np.linspace(0, 1, 512, dtype=np.float32), (512, 1))
    check_pixels(ramp, QualityGates())


def test_the_age_gate_is_a_site_setting(placeholder_dir) -> None:
    lenient = XrvScorer.from_artefact(placeholder_dir, gates=QualityGates(min_patient_age_years=0))
    lenient.prepare(chest(PatientAge="007Y"))
