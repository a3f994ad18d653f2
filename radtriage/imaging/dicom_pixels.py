"""From DICOM bytes (or a PNG/JPEG file) to one grayscale image that a person or a model can look at.

The output of `pixels_for_display` and `load_image_file` is always a 2-D ``float32`` array in [0, 1] in
MONOCHROME2 polarity (bright = dense: bone and contrast are white, air is black), whatever the input was:

1. Decode the first frame (JPEG baseline and lossless, JPEG-LS, JPEG 2000, RLE and native encodings; the decoders
   are the pylibjpeg plugins). For native pixel data pydicom clears the unused high bits of each stored value
   (PS3.5 8.1.1: only Bits Stored bits are meaningful; the rest may hold overlays or garbage) and sign-extends
   signed values.
2. Grayscale: apply the Modality LUT or Rescale Slope/Intercept (PS3.3 C.11.1), then the first VOI LUT or window
   (PS3.3 C.11.2), then invert MONOCHROME1, where the minimum value is white (PS3.3 C.7.6.3.1.2).
   Colour: palette colour through its LUT (PS3.3 C.7.6.3.1.5), YBR through pydicom's conversion to RGB, then
   luminance with the ITU-R BT.601 weights that PS3.3 C.7.6.3.1.2 uses for YBR_FULL.
3. Scale min-max to [0, 1]. A frame with no contrast at all, or with NaN/infinite values, is unreadable.

Nothing here puts patient data into an error message: details name only exception types, transfer syntaxes and
attribute keywords.
"""

from __future__ import annotations

import logging
from io import BytesIO
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from radtriage.app.core.errors import ErrorCode, TriageError

from .attributes import View, classify_view, is_chest, is_radiograph

log = logging.getLogger(__name__)

#: ITU-R BT.601 luma weights (the Y of YBR_FULL, PS3.3 C.7.6.3.1.2).
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

#: Header attributes that the Modality LUT and VOI LUT steps read. They are copied into a separate dataset so
#: that per-frame values of enhanced objects can override them, and because pydicom's windowing writes back
#: converted values into the dataset it is given.
_LUT_KEYWORDS = (
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
)


def _unreadable(detail: str) -> TriageError:
    return TriageError(ErrorCode.UNREADABLE_IMAGE, detail)


# --------------------------------------------------------------------------------------------- reading


def _looks_like_bare_dataset(data: bytes) -> bool:
    """True when the bytes start like a data set with no Part 10 preamble (PS3.10 7.1): a group 0002 or 0008 tag.

    Only then is pydicom's ``force`` used; on arbitrary bytes it would happily "read" garbage.
    """
    return data[:2] in (b"\x02\x00", b"\x08\x00")


def read_dataset(data: bytes) -> Dataset:
    """Parse DICOM Part 10 bytes (PS3.10 7.1); a bare data set without preamble is accepted too.

    Raises `TriageError(UNREADABLE_IMAGE)` for empty, corrupt or truncated input.
    """
    if not data:
        raise _unreadable("the DICOM file is empty")
    try:
        try:
            ds = dcmread(BytesIO(data))
        except InvalidDicomError:
            if not _looks_like_bare_dataset(data):
                raise
            ds = dcmread(BytesIO(data), force=True)
            if "TransferSyntaxUID" not in ds.file_meta:
                # No file meta: the encoding is the one pydicom detected while reading.
                implicit_vr, little_endian = ds.original_encoding
                if not little_endian:
                    raise _unreadable("bare big-endian data sets are not supported") from None
                ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
        # Elements are parsed lazily; touching every top-level one here makes a truncated file fail now, with the
        # right code, instead of later in some unrelated step.
        for _element in ds:
            pass
        if len(ds) == 0:
            # pydicom returns an empty data set (with only a warning) for a file cut short inside its first element.
            raise _unreadable("the DICOM file holds no data elements (truncated?)")
    except TriageError:
        raise
    except Exception as exc:  # pydicom raises many types for corrupt input; the type name is enough to debug
        raise _unreadable(f"the DICOM file could not be parsed ({type(exc).__name__})") from None
    return ds


# --------------------------------------------------------------------------------------------- header checks


def has_pixel_data(ds: Dataset) -> bool:
    return any(keyword in ds for keyword in _PIXEL_KEYWORDS)


def check_analysable(ds: Dataset) -> None:
    """Raise unless the header describes a frontal chest radiograph with pixels.

    Same rules as `radtriage.imaging.selection`, on the full header: NOT_A_RADIOGRAPH (Modality not CR/DX, or
    absent and the SOP class not CR/DX), NOT_A_CHEST (Body Part Examined present and not chest), LATERAL_ONLY
    (View Position names a lateral, decubitus or oblique view), UNREADABLE_IMAGE (no pixel data).
    """
    modality = ds.get("Modality")
    if not is_radiograph(modality, ds.get("SOPClassUID")):
        raise TriageError(ErrorCode.NOT_A_RADIOGRAPH, f"modality {modality or 'absent'} is not CR or DX")
    if not is_chest(ds.get("BodyPartExamined")):
        raise TriageError(ErrorCode.NOT_A_CHEST, "Body Part Examined does not name the chest")
    if classify_view(ds.get("ViewPosition"), ds.get("SeriesDescription")) is View.NOT_FRONTAL:
        raise TriageError(ErrorCode.LATERAL_ONLY, "the image is not a frontal (PA or AP) view")
    if not has_pixel_data(ds):
        raise _unreadable("the instance has no pixel data")


# --------------------------------------------------------------------------------------------- pixels


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    sequence = ds.get(keyword)
    return sequence[0] if sequence else None


def _lut_attributes(ds: Dataset) -> Dataset:
    """The Modality/VOI LUT attributes that apply to frame 1.

    Enhanced multi-frame objects keep them in functional groups (PS3.3 C.7.6.16.2.9 Pixel Value Transformation,
    C.7.6.16.2.10 Frame VOI LUT), per frame or shared; per-frame values win over shared ones, which win over the
    top level.
    """
    attributes = Dataset()
    for keyword in _LUT_KEYWORDS:
        if keyword in ds:
            attributes[keyword] = ds[keyword]
    groups = [_first_item(ds, "SharedFunctionalGroupsSequence"), _first_item(ds, "PerFrameFunctionalGroupsSequence")]
    for group in groups:
        if group is None:
            continue
        for macro in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            item = _first_item(group, macro)
            if item is None:
                continue
            for keyword in _LUT_KEYWORDS:
                if keyword in item:
                    attributes[keyword] = item[keyword]
    return attributes


def _decode_first_frame(ds: Dataset) -> np.ndarray:
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        return np.asarray(pixel_array(ds, index=0))
    except Exception as exc:  # a missing decoder, a truncated or corrupt codestream, inconsistent attributes
        syntax = getattr(transfer_syntax, "name", None) or "unknown transfer syntax"
        raise _unreadable(f"the pixel data could not be decoded ({type(exc).__name__}; {syntax})") from None


def _apply_grayscale_luts(frame: np.ndarray, attributes: Dataset) -> np.ndarray:
    """Modality LUT, then VOI LUT (PS3.3 C.11.1, C.11.2). A window that cannot be used is skipped, not fatal."""
    values = np.asarray(apply_modality_lut(frame, attributes))
    if "VOILUTSequence" in attributes and values.dtype.kind == "f" and np.array_equal(values, np.round(values)):
        # A VOI LUT is indexed by integer values; a rescale with integral slope and intercept yields floats.
        values = values.astype(np.int64)
    try:
        windowed = np.asarray(apply_voi_lut(values, attributes, index=0, prefer_lut=True), dtype=np.float64)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        # Window Width < 1, an unknown VOI LUT Function, a malformed LUT: the header is wrong, the pixels are not.
        log.warning("ignoring an unusable VOI LUT / window (%s)", type(exc).__name__)
        return values.astype(np.float64)
    if np.ptp(windowed) == 0 and np.ptp(values) > 0:
        # A window that clips the whole image to one value (seen with stale windows after re-processing) would
        # turn a good image into a blank one; the full range is the better view.
        log.warning("ignoring a VOI LUT / window that leaves no contrast")
        return values.astype(np.float64)
    return windowed


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb[..., :3], dtype=np.float64) @ LUMA_WEIGHTS


def _scale_to_unit_range(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise _unreadable(f"expected one 2-D image, got an array of shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise _unreadable("the image holds NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        raise _unreadable("the image has no contrast (every pixel has the same value)")
    return ((values - low) / (high - low)).astype(np.float32)


def pixels_for_display(ds: Dataset) -> np.ndarray:
    """The first frame as a float32 2-D array in [0, 1], MONOCHROME2 polarity; see the module docstring.

    Raises `TriageError(UNREADABLE_IMAGE)` when there are no pixels, they cannot be decoded, or they are blank.
    """
    if not has_pixel_data(ds):
        raise _unreadable("the instance has no pixel data (none stored, or the file is truncated)")
    frame = _decode_first_frame(ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples_per_pixel = int(ds.get("SamplesPerPixel", 1) or 1)
    try:
        if photometric in ("MONOCHROME1", "MONOCHROME2") and samples_per_pixel == 1:
            values = _apply_grayscale_luts(frame, _lut_attributes(ds))
            if photometric == "MONOCHROME1":
                values = -values  # min-max below maps the old maximum to 0: black where it was white
        elif photometric == "PALETTE COLOR":
            values = _luminance(apply_color_lut(frame, ds))
        elif frame.ndim == 3 and frame.shape[-1] in (3, 4):
            # RGB, or YBR that pydicom has already converted to RGB while decoding.
            values = _luminance(frame)
        else:
            raise _unreadable(f"unsupported Photometric Interpretation {photometric}")
    except TriageError:
        raise
    except Exception as exc:
        raise _unreadable(f"the pixel values could not be transformed ({type(exc).__name__})") from None
    return _scale_to_unit_range(values)


# --------------------------------------------------------------------------------------------- files


def _is_dicom_file(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom") or _looks_like_bare_dataset(head)


def read_image_luminance(path: str | PathLike[str]) -> np.ndarray:
    """The luminance of a PNG/JPEG (any Pillow can read) as stored: uint8 for 8-bit files, wider types otherwise.

    EXIF orientation is applied; alpha is ignored; colour becomes BT.601 luminance (float64).
    Raises `TriageError(UNREADABLE_IMAGE)` when Pillow cannot read the file.
    """
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(f"the image file could not be read ({type(exc).__name__})") from None
    if image.mode in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(image)
    if image.mode == "1":
        return np.asarray(image.convert("L"))
    return _luminance(np.asarray(image.convert("RGB")))


def load_image_file(path: str | PathLike[str]) -> np.ndarray:
    """A DICOM, PNG or JPEG file as `pixels_for_display` returns it (float32, 2-D, [0, 1], bright = dense)."""
    file_path = Path(path)
    try:
        dicom = _is_dicom_file(file_path)
    except OSError as exc:
        raise _unreadable(f"the image file could not be opened ({type(exc).__name__})") from None
    if dicom:
        return pixels_for_display(read_dataset(file_path.read_bytes()))
    return _scale_to_unit_range(read_image_luminance(file_path))
