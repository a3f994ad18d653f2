"""PNG/JPEG to DICOM Secondary Capture (radtriage.imaging.wrap): the object is valid and takes the pipeline."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.imaging.attributes import instance_info_from_dataset
from radtriage.imaging.dicom_pixels import check_analysable, load_image_file, pixels_for_display, read_dataset
from radtriage.imaging.selection import select_instance
from radtriage.imaging.wrap import wrap_image_as_dicom


@pytest.fixture
def chest_png(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (48, 40), dtype=np.uint8)
    path = tmp_path / "Doe_John_chest.png"  # a name with a "patient" in it: it must not reach the object
    Image.fromarray(pixels).save(path)
    return path, pixels


def test_wrapped_png_is_a_secondary_capture_holding_the_same_pixels(chest_png: tuple[Path, np.ndarray]) -> None:
    path, pixels = chest_png
    data = wrap_image_as_dicom(path, patient_id="DEMO-0001", view_position="PA")
    ds = dcmread(BytesIO(data))  # no force: a proper Part 10 file with preamble and file meta
    assert ds.preamble is not None and ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == SecondaryCaptureImageStorage == ds.file_meta.MediaStorageSOPClassUID
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert (ds.ConversionType, ds.Modality, ds.BodyPartExamined, ds.ViewPosition) == ("WSD", "DX", "CHEST", "PA")
    assert (ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.SamplesPerPixel) == (
        "MONOCHROME2",
        8,
        8,
        1,
    )
    assert ds.PatientID == "DEMO-0001" and str(ds.PatientName) == ""
    assert b"Doe" not in data and b"John" not in data
    np.testing.assert_array_equal(ds.pixel_array, pixels)


def test_wrapped_image_passes_selection_and_the_header_checks(chest_png: tuple[Path, np.ndarray]) -> None:
    path, _ = chest_png
    ds = read_dataset(wrap_image_as_dicom(path, patient_id="DEMO-0001"))
    info = instance_info_from_dataset(ds)
    assert select_instance([info]) == info
    check_analysable(ds)
    np.testing.assert_allclose(pixels_for_display(ds), load_image_file(path), atol=1e-6)


def test_images_of_one_study_share_the_study_uid_but_nothing_else(chest_png: tuple[Path, np.ndarray]) -> None:
    path, _ = chest_png
    study_uid = "1.2.826.0.1.3680043.8.498.1"
    first = dcmread(BytesIO(wrap_image_as_dicom(path, patient_id="P", study_uid=study_uid, view_position="PA")))
    second = dcmread(BytesIO(wrap_image_as_dicom(path, patient_id="P", study_uid=study_uid, view_position="LL")))
    assert first.StudyInstanceUID == second.StudyInstanceUID == study_uid
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    lateral = instance_info_from_dataset(second)
    assert select_instance([lateral, instance_info_from_dataset(first)]).view_position == "PA"
    with pytest.raises(TriageError) as caught:
        check_analysable(second)
    assert caught.value.code is ErrorCode.LATERAL_ONLY


def test_without_a_study_uid_each_image_gets_a_new_study(chest_png: tuple[Path, np.ndarray]) -> None:
    path, _ = chest_png
    first = dcmread(BytesIO(wrap_image_as_dicom(path, patient_id="P")))
    second = dcmread(BytesIO(wrap_image_as_dicom(path, patient_id="P")))
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert "ViewPosition" not in first


def test_sixteen_bit_and_rgb_inputs_become_8_bit_monochrome(tmp_path: Path) -> None:
    ramp = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint16) * 1000  # 0 .. 62000
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    rgb = np.stack([np.full((8, 8), 200, np.uint8), np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)], axis=-1)
    rgb[0, 0] = 0
    Image.fromarray(rgb).save(tmp_path / "colour.jpg", quality=100)

    wide = dcmread(BytesIO(wrap_image_as_dicom(tmp_path / "wide.png", patient_id="P"))).pixel_array
    assert wide.dtype == np.uint8 and wide.min() == 0 and wide.max() == 255
    np.testing.assert_array_equal(wide, np.round(ramp / 62000 * 255).astype(np.uint8))

    colour = dcmread(BytesIO(wrap_image_as_dicom(tmp_path / "colour.jpg", patient_id="P")))
    assert colour.SamplesPerPixel == 1 and colour.PhotometricInterpretation == "MONOCHROME2"


@pytest.mark.parametrize(("folder", "pattern"), [("nih", "*.png"), ("covid", "*.jp*g")])
def test_real_chest_images_round_trip(shared_data: Path, folder: str, pattern: str) -> None:
    image = min((shared_data / "cxr" / folder / "images").glob(pattern))
    ds = read_dataset(wrap_image_as_dicom(image, patient_id="DEMO-0002", view_position="PA"))
    check_analysable(ds)
    np.testing.assert_allclose(pixels_for_display(ds), load_image_file(image), atol=1e-6)


def test_a_file_that_is_not_an_image_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(TriageError) as caught:
        wrap_image_as_dicom(path, patient_id="P")
    assert caught.value.code is ErrorCode.UNREADABLE_IMAGE
