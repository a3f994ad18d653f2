"""Quality gates: what must hold before an image is scored, so that the answer is "not analysed", not a guess.

The header gates (modality, body part, view) live in `radtriage.imaging.dicom_pixels.check_analysable`; these
are the gates about whether the model may be trusted on this image:

* patient age, where the header gives it (PatientAge, PS3.5 AS value representation "nnnD|W|M|Y"): younger
  than `min_patient_age_years` → OUTSIDE_INTENDED_USE (the shipped model was validated on adults);
* image size: the shorter side below `min_side_px` → IMAGE_QUALITY (an icon or a thumbnail, not a radiograph);
* bit depth: Bits Stored below `min_bits_stored` → IMAGE_QUALITY;
* contrast: the 1st–99th percentile spread of the display image below `min_contrast` → IMAGE_QUALITY (blank,
  burnt-out or nearly uniform images).

Not yet here: an out-of-distribution check on the image content (see the project notes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..app.core.errors import ErrorCode, TriageError

_AGE = re.compile(r"(\d{3})([DWMY])\Z")
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


@dataclass(frozen=True)
class QualityGates:
    min_patient_age_years: float = 18.0
    min_side_px: int = 256
    min_bits_stored: int = 8
    min_contrast: float = 0.05


def patient_age_years(value: Any) -> float | None:
    """PatientAge (VR AS, PS3.5 6.2) in years, or None when absent or not well formed."""
    match = _AGE.match(str(value or "").strip().upper())
    if match is None:
        return None
    return int(match.group(1)) * _DAYS_PER_UNIT[match.group(2)] / 365.25


def check_header(dataset: Any, gates: QualityGates) -> None:
    """Gates read from the DICOM header (a pydicom Dataset)."""
    age = patient_age_years(dataset.get("PatientAge"))
    if age is not None and age < gates.min_patient_age_years:
        raise TriageError(
            ErrorCode.OUTSIDE_INTENDED_USE,
            f"the patient is younger than {gates.min_patient_age_years:g} years; the model is for adults",
        )
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if min(rows, columns) < gates.min_side_px:
        raise TriageError(ErrorCode.IMAGE_QUALITY, f"the image is smaller than {gates.min_side_px} pixels a side")
    bits = int(dataset.get("BitsStored", 0) or 0)
    if bits < gates.min_bits_stored:
        raise TriageError(ErrorCode.IMAGE_QUALITY, f"the image has fewer than {gates.min_bits_stored} bits a pixel")


def check_pixels(image01: npt.NDArray[Any], gates: QualityGates) -> None:
    """Gates on the decoded display image (2-D, [0, 1]). Size is gated on the DICOM header only: a PNG or JPEG
    handed to `radtriage score` has already been resampled by whoever exported it."""
    low, high = np.percentile(image01, [1.0, 99.0])
    if float(high - low) < gates.min_contrast:
        raise TriageError(ErrorCode.IMAGE_QUALITY, "the image has almost no contrast (blank or burnt out)")
