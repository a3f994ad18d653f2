"""Decoding DICOM pixels for display (radtriage.imaging.dicom_pixels) on real files and targeted synthetic ones."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, dcmread, dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.imaging.dicom_pixels import (
    check_analysable,
    load_image_file,
    pixels_for_display,
    read_dataset,
)
from tests.support.data import pydicom_data_dir

DATA = pydicom_data_dir()
SIIM_CHEST = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def decode(name: str) -> np.ndarray:
    return pixels_for_display(read_dataset((DATA / name).read_bytes()))


def code_of(call, *args) -> ErrorCode:  # type: ignore[no-untyped-def]
    with pytest.raises(TriageError) as caught:
        call(*args)
    return caught.value.code


def synthetic(pixels: np.ndarray, **attributes: object) -> Dataset:
    """A minimal grayscale dataset (native, little endian) around `pixels`; `attributes` override the defaults."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def unit_scaled(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    scaled: np.ndarray = (values - values.min()) / (values.max() - values.min())
    return scaled


# ------------------------------------------------------------------ encodings


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("RG1_J2KI.dcm", (1955, 1841)),  # JPEG 2000 (lossy), MONOCHROME1, 15 of 16 bits, a chest PA
        ("RG1_UNCR.dcm", (1955, 1841)),  # the same image, uncompressed
        ("emri_small_jpeg_ls_lossless.dcm", (64, 64)),  # JPEG-LS, 10 frames
        ("JPEG-LL.dcm", (1024, 256)),  # JPEG lossless (process 14), signed
        ("emri_small_RLE.dcm", (64, 64)),  # RLE, 10 frames
        ("color3d_jpeg_baseline.dcm", (480, 640)),  # JPEG baseline, YBR_FULL_422, 120 frames
        ("OBXXXX1A_rle.dcm", (600, 800)),  # RLE, PALETTE COLOR
    ],
)
def test_every_encoding_gives_one_unit_range_float32_frame(name: str, shape: tuple[int, int]) -> None:
    pixels = decode(name)
    assert pixels.shape == shape
    assert pixels.dtype == np.float32
    assert pixels.min() == 0.0 and pixels.max() == 1.0


@pytest.mark.parametrize(
    "lossless_copy", ["emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_2k_lossless.dcm"]
)
def test_lossless_encodings_decode_to_the_uncompressed_pixels(lossless_copy: str) -> None:
    np.testing.assert_array_equal(decode(lossless_copy), decode("emri_small.dcm"))


def test_lossless_jpeg_2000_chest_matches_the_uncompressed_one() -> None:
    np.testing.assert_array_equal(decode("RG1_J2KR.dcm"), decode("RG1_UNCR.dcm"))


def test_multi_frame_gives_the_first_frame() -> None:
    ds = dcmread(DATA / "emri_small.dcm")
    first = ds.pixel_array[0]
    np.testing.assert_allclose(pixels_for_display(ds), unit_scaled(first), atol=1e-6)
    assert not np.allclose(unit_scaled(ds.pixel_array[5]), unit_scaled(first))


# ------------------------------------------------------------------ polarity


def test_monochrome1_chest_comes_out_bright_where_dense() -> None:
    # RG1 is MONOCHROME1: low stored values are white. In the output high means dense, so it must run opposite
    # to the stored values; and the lungs (the middle of each half) are darker than the spine (the middle).
    stored = dcmread(DATA / "RG1_UNCR.dcm").pixel_array.astype(np.float64)
    shown = decode("RG1_UNCR.dcm")
    assert np.corrcoef(stored.ravel(), shown.ravel())[0, 1] < -0.9
    rows = slice(700, 1100)
    spine = shown[rows, 880:960].mean()
    right_lung, left_lung = shown[rows, 450:550].mean(), shown[rows, 1300:1400].mean()
    assert spine > right_lung and spine > left_lung


def test_flipping_the_photometric_tag_inverts_the_output() -> None:
    ds = dcmread(DATA / "RG1_UNCR.dcm")
    as_stored = pixels_for_display(ds)
    ds.PhotometricInterpretation = "MONOCHROME2"
    np.testing.assert_allclose(pixels_for_display(ds), 1.0 - as_stored, atol=1e-6)


def test_shared_monochrome1_twin_is_the_inverse_of_the_siim_chest(shared_data: Path) -> None:
    # Fake_MONOHR1.dcm holds the SIIM file's pixels with the tag changed to MONOCHROME1 (see the data card).
    dicom = shared_data / "dicom"
    monochrome2 = load_image_file(dicom / SIIM_CHEST)
    monochrome1 = load_image_file(dicom / "Fake_MONOHR1.dcm")
    np.testing.assert_allclose(monochrome1, 1.0 - monochrome2, atol=1e-6)


# ------------------------------------------------------------------ stored values, LUTs


def test_unused_high_bits_are_ignored_for_unsigned_12_of_16_bits() -> None:
    rng = np.random.default_rng(1)
    true_values = rng.integers(0, 4096, (32, 48), dtype=np.uint16)
    garbage = rng.integers(1, 16, true_values.shape, dtype=np.uint16) << 12
    ds = synthetic(true_values | garbage, BitsStored=12, HighBit=11)
    np.testing.assert_allclose(pixels_for_display(ds), unit_scaled(true_values), atol=1e-6)


def test_unused_high_bits_are_ignored_and_sign_extended_for_signed_12_of_16_bits() -> None:
    rng = np.random.default_rng(2)
    true_values = rng.integers(-2048, 2048, (32, 48)).astype(np.int16)
    garbage = rng.integers(1, 16, true_values.shape, dtype=np.uint16) << 12
    stored = ((true_values.view(np.uint16) & 0x0FFF) | garbage).view(np.int16)
    ds = synthetic(stored, BitsStored=12, HighBit=11)
    np.testing.assert_allclose(pixels_for_display(ds), unit_scaled(true_values), atol=1e-6)


def test_rescale_slope_is_applied_before_anything_else() -> None:
    ramp = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    plain = pixels_for_display(synthetic(ramp))
    negated = pixels_for_display(synthetic(ramp, RescaleSlope=-1, RescaleIntercept=100))
    np.testing.assert_allclose(negated, 1.0 - plain, atol=1e-6)


def test_window_saturates_values_outside_it() -> None:
    ramp = np.tile(np.arange(1000, dtype=np.uint16), (4, 1))
    shown = pixels_for_display(synthetic(ramp, WindowCenter=500, WindowWidth=200))
    assert np.all(shown[:, :390] == 0.0) and np.all(shown[:, 610:] == 1.0)
    assert 0.4 < shown[0, 500] < 0.6


def test_window_in_the_enhanced_functional_groups_is_used() -> None:
    ramp = np.tile(np.arange(1000, dtype=np.uint16), (4, 1))
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = 500, 200
    group = Dataset()
    group.FrameVOILUTSequence = [voi]
    shown = pixels_for_display(synthetic(ramp, SharedFunctionalGroupsSequence=[group]))
    assert np.all(shown[:, :390] == 0.0) and np.all(shown[:, 610:] == 1.0)


def test_a_window_that_blanks_the_image_is_ignored() -> None:
    ramp = np.tile(np.arange(1000, dtype=np.uint16), (4, 1))
    shown = pixels_for_display(synthetic(ramp, WindowCenter=50000, WindowWidth=10))
    np.testing.assert_allclose(shown, unit_scaled(ramp), atol=1e-6)


def test_modality_lut_and_voi_lut_files_decode() -> None:
    # mlut_18: a Modality LUT Sequence on signed 12-bit data; vlut_04: a VOI LUT Sequence (pydicom test files).
    for name in ("mlut_18.dcm", "vlut_04.dcm"):
        shown = decode(name)
        assert shown.shape == (512, 512) and shown.min() == 0.0 and shown.max() == 1.0


def test_colour_becomes_bt601_luminance() -> None:
    rgb = np.zeros((3, 3, 3), dtype=np.uint8)  # row 2 stays black, so min-max scaling keeps the weights as they are
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[1, :] = (255, 255, 255)
    ds = synthetic(rgb[..., 0], SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0)
    ds.PixelData = rgb.tobytes()
    shown = pixels_for_display(ds)
    np.testing.assert_allclose(shown[0], [0.299, 0.587, 0.114], atol=1e-6)
    np.testing.assert_allclose(shown[1], 1.0, atol=1e-6)


# ------------------------------------------------------------------ unreadable input


def test_constant_image_is_unreadable() -> None:
    assert code_of(pixels_for_display, synthetic(np.full((8, 8), 7, dtype=np.uint16))) is ErrorCode.UNREADABLE_IMAGE


def test_nan_in_float_pixel_data_is_unreadable() -> None:
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    values[3, 3] = np.nan
    ds = synthetic(values.view(np.uint32))
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.FloatPixelData = values.tobytes()
    assert code_of(pixels_for_display, ds) is ErrorCode.UNREADABLE_IMAGE


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")  # pydicom notes the truncation
@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: bytes(range(256)) * 64, id="random bytes"),
        pytest.param(lambda data: data[:1000], id="truncated in the header"),
        pytest.param(lambda data: data[: len(data) // 2], id="truncated in the pixels"),
        pytest.param(lambda data: data[:-200], id="end cut off"),
    ],
)
def test_corrupt_bytes_are_unreadable_and_the_message_names_no_patient(corrupt) -> None:  # type: ignore[no-untyped-def]
    original = (DATA / "RG1_J2KI.dcm").read_bytes()
    with pytest.raises(TriageError) as caught:
        pixels_for_display(read_dataset(corrupt(original)))
    assert caught.value.code is ErrorCode.UNREADABLE_IMAGE
    header = dcmread(DATA / "RG1_J2KI.dcm", stop_before_pixels=True)
    for identifying in (str(header.PatientName), str(header.PatientID), str(header.StudyInstanceUID)):
        assert identifying not in str(caught.value)


def test_png_bytes_are_not_dicom() -> None:
    buffer = BytesIO()
    Image.new("L", (4, 4)).save(buffer, format="PNG")
    assert code_of(read_dataset, buffer.getvalue()) is ErrorCode.UNREADABLE_IMAGE


def test_dataset_without_preamble_or_file_meta_is_read() -> None:
    ramp = np.arange(256, dtype=np.uint16).reshape(16, 16)
    ds = synthetic(ramp)
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    del ds.file_meta
    buffer = BytesIO()
    dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)  # a bare data set, as some archives export
    assert buffer.getvalue()[128:132] != b"DICM"
    np.testing.assert_allclose(pixels_for_display(read_dataset(buffer.getvalue())), unit_scaled(ramp), atol=1e-6)


# ------------------------------------------------------------------ header checks


def test_check_analysable_accepts_the_chest_pa() -> None:
    check_analysable(read_dataset((DATA / "RG1_J2KI.dcm").read_bytes()))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("RG3_J2KI.dcm", ErrorCode.NOT_A_CHEST), ("MR2_J2KI.dcm", ErrorCode.NOT_A_RADIOGRAPH)],
)
def test_check_analysable_rejects_other_studies(name: str, expected: ErrorCode) -> None:
    assert code_of(check_analysable, read_dataset((DATA / name).read_bytes())) is expected


def test_check_analysable_rejects_a_lateral_and_a_header_without_pixels() -> None:
    ds = dcmread(DATA / "RG1_J2KI.dcm")
    ds.ViewPosition = "LL"
    assert code_of(check_analysable, ds) is ErrorCode.LATERAL_ONLY
    header_only = dcmread(DATA / "RG1_J2KI.dcm", stop_before_pixels=True)
    assert code_of(check_analysable, header_only) is ErrorCode.UNREADABLE_IMAGE


def test_check_analysable_uses_the_sop_class_when_modality_is_absent() -> None:
    ds = dcmread(DATA / "RG1_J2KI.dcm")
    del ds.Modality
    check_analysable(ds)  # CR Image Storage: a radiograph
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    assert code_of(check_analysable, ds) is ErrorCode.NOT_A_RADIOGRAPH


# ------------------------------------------------------------------ image files


def test_png_jpeg_and_dicom_files_load_the_same(tmp_path: Path) -> None:
    gradient = np.add.outer(np.arange(64), np.arange(96)).astype(np.float64)
    eight_bit = np.round(gradient / gradient.max() * 255).astype(np.uint8)
    expected = unit_scaled(eight_bit)

    Image.fromarray(eight_bit).save(tmp_path / "gray8.png")
    Image.fromarray(eight_bit.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    Image.fromarray(np.stack([eight_bit] * 3, axis=-1)).save(tmp_path / "rgb.png")
    Image.fromarray(eight_bit).save(tmp_path / "gray.jpg", quality=95)
    dcmwrite(tmp_path / "gray.dcm", synthetic(eight_bit), enforce_file_format=False)

    for name in ("gray8.png", "gray16.png", "rgb.png", "gray.dcm"):
        loaded = load_image_file(tmp_path / name)
        assert loaded.dtype == np.float32, name
        np.testing.assert_allclose(loaded, expected, atol=1e-3, err_msg=name)
    np.testing.assert_allclose(load_image_file(tmp_path / "gray.jpg"), expected, atol=0.05)  # lossy


def test_an_image_file_that_is_not_an_image_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    assert code_of(load_image_file, path) is ErrorCode.UNREADABLE_IMAGE


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_file_is_unreadable_not_misclassified(keep: float) -> None:
    from tests.support.data import pydicom_data_dir

    data = (pydicom_data_dir() / "RG1_J2KI.dcm").read_bytes()
    with pytest.raises(TriageError) as err:
        ds = read_dataset(data[: int(len(data) * keep)])
        check_analysable(ds)
        pixels_for_display(ds)
    assert err.value.code is ErrorCode.UNREADABLE_IMAGE
