"""Which instance of a study to score: the rules, applied to QIDO-RS metadata before any pixels are fetched.

The model reads one frontal chest radiograph. A study may hold several series (PA and lateral, a scout, a
dose report, a secondary capture), so the choice is made in this order; each step that leaves nothing ends the
selection with the error named, which becomes the job's coded failure reason:

1. The study has no instances at all: ``STUDY_NOT_FOUND``.
2. Keep projection radiographs: Modality CR or DX (or "DR", written by some equipment); when Modality is absent,
   a CR or DX SOP class (PS3.4 B.5). None left: ``NOT_A_RADIOGRAPH``.
3. Keep chest images: Body Part Examined CHEST, THORAX, LUNG(S), empty or absent. None left: ``NOT_A_CHEST``.
4. Keep frontal views: View Position PA or AP (PS3.3 C.8.11.5); when View Position is absent, the series
   description decides (a lateral or oblique word such as LAT, LL, RL, OBL excludes the image; PA or AP names
   the view); when neither says anything the image is assumed frontal. None left: ``LATERAL_ONLY``.
5. Prefer PA, then AP, then a view that nothing names (a PA has the standard geometry the models were mostly
   trained on; AP films are usually bedside films of sicker patients).
6. Among equals, take the smallest (Series Instance UID, SOP Instance UID) so the same study always gives the
   same choice, whatever order the archive listed the instances in.

The vocabularies live in `radtriage.imaging.attributes`, shared with `dicom_pixels.check_analysable`, which
applies the same rules to the full header once the chosen instance has been fetched.
"""

from __future__ import annotations

from collections.abc import Sequence

from radtriage.app.core.domain import InstanceInfo
from radtriage.app.core.errors import ErrorCode, TriageError

from .attributes import View, classify_view, is_chest, is_radiograph


def select_instance(instances: Sequence[InstanceInfo]) -> InstanceInfo:
    """The instance to score (an `InstanceSelector`); raises `TriageError` with the reason when there is none."""
    if not instances:
        raise TriageError(ErrorCode.STUDY_NOT_FOUND, "the study has no instances")

    radiographs = [i for i in instances if is_radiograph(i.modality, i.sop_class_uid)]
    if not radiographs:
        raise TriageError(ErrorCode.NOT_A_RADIOGRAPH, "the study has no CR or DX image")

    chest = [i for i in radiographs if is_chest(i.body_part_examined)]
    if not chest:
        raise TriageError(ErrorCode.NOT_A_CHEST, "the study's radiographs are not of the chest")

    views = {id(i): classify_view(i.view_position, i.series_description) for i in chest}
    frontal = [i for i in chest if views[id(i)] is not View.NOT_FRONTAL]
    if not frontal:
        raise TriageError(ErrorCode.LATERAL_ONLY, "the study has no frontal (PA or AP) chest image")

    return min(frontal, key=lambda i: (views[id(i)], i.series_instance_uid, i.sop_instance_uid))
