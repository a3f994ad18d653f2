"""What the DICOM header says about an image: is it a radiograph, of the chest, taken from the front?

One vocabulary, used both before pixels are fetched (`selection`, on QIDO-RS metadata) and after
(`dicom_pixels.check_analysable`, on the full header), so the two can never disagree.

References: Modality (0008,0060) defined terms, PS3.3 C.7.3.1.1.1; Body Part Examined (0018,0015), PS3.16
CID 4031 / Annex L; View Position (0018,5101) defined terms for DX and CR, PS3.3 C.8.11.5 (AP, PA, LL, RL, RLD,
LLD, RLO, LLO).
"""

from __future__ import annotations

import enum
import re

from pydicom import Dataset
from pydicom.multival import MultiValue

from radtriage.app.core.domain import InstanceInfo

#: Modalities that are projection radiographs. "DR" is not a DICOM defined term, but some equipment writes it.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR"})

#: SOP classes that are projection radiographs whatever the Modality says (used when Modality is absent).
#: Computed Radiography Image Storage, Digital X-Ray Image Storage for Presentation and for Processing (PS3.4 B.5).
#: Mammography and intra-oral X-ray are radiographs too, but never of the chest, so they are not listed.
RADIOGRAPH_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",
        "1.2.840.10008.5.1.4.1.1.1.1",
        "1.2.840.10008.5.1.4.1.1.1.1.1",
    }
)

#: Body Part Examined values that mean "chest". An empty value (type 2 attribute present but blank) counts too.
CHEST_BODY_PARTS = frozenset({"", "CHEST", "THORAX", "LUNG", "LUNGS"})

#: Series Description words that mark a lateral or oblique view when View Position is absent.
_LATERAL_WORDS = re.compile(r"\b(LAT|LATERAL|LATERALE|LL|RL|LLD|RLD|LLO|RLO|OBL|OBLIQUE)\b")
_PA_WORDS = re.compile(r"\b(PA|P-A)\b")
_AP_WORDS = re.compile(r"\b(AP|A-P)\b")


class View(enum.IntEnum):
    """How an image was projected, ordered from most to least preferred for a frontal chest model."""

    PA = 0
    AP = 1
    UNKNOWN = 2  # no View Position and nothing in the series description: assumed frontal
    NOT_FRONTAL = 3  # lateral, decubitus or oblique


def _normalised(value: str | None) -> str:
    return (value or "").strip().upper()


def is_radiograph(modality: str | None, sop_class_uid: str | None) -> bool:
    """True for CR/DX (PS3.3 C.7.3.1.1.1); if Modality is absent, decide by the SOP class."""
    if _normalised(modality):
        return _normalised(modality) in RADIOGRAPH_MODALITIES
    return (sop_class_uid or "").strip() in RADIOGRAPH_SOP_CLASSES


def is_chest(body_part_examined: str | None) -> bool:
    """True when Body Part Examined is absent, empty or names the chest."""
    return _normalised(body_part_examined) in CHEST_BODY_PARTS


def classify_view(view_position: str | None, series_description: str | None = None) -> View:
    """PA / AP from View Position (PS3.3 C.8.11.5); only when that is absent, guess from the series description."""
    view = _normalised(view_position)
    if view == "PA":
        return View.PA
    if view == "AP":
        return View.AP
    if view:
        # LL, RL, LLD, RLD, LLO, RLO, "LAT", "LATERAL", ...: anything else that is written is not frontal.
        return View.NOT_FRONTAL
    description = _normalised(series_description)
    lateral = bool(_LATERAL_WORDS.search(description))
    pa = bool(_PA_WORDS.search(description))
    ap = bool(_AP_WORDS.search(description))
    if lateral and not (pa or ap):
        return View.NOT_FRONTAL
    if pa and not (lateral or ap):
        return View.PA
    if ap and not (lateral or pa):
        return View.AP
    # Nothing, or a mixed description such as "PA + LAT" that names the whole examination, not this image.
    return View.UNKNOWN


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def instance_info_from_dataset(ds: Dataset) -> InstanceInfo:
    """The `InstanceInfo` of a header (from a file, or a QIDO-RS result read with `Dataset.from_json`).

    Raises KeyError when one of the three UIDs is missing.
    """
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if not ds.get(keyword):
            raise KeyError(keyword)
    return InstanceInfo(
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        modality=_text(ds, "Modality"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        view_position=_text(ds, "ViewPosition"),
        series_description=_text(ds, "SeriesDescription"),
        image_laterality=_text(ds, "ImageLaterality"),
        sop_class_uid=_text(ds, "SOPClassUID"),
    )
