"""A triage result as DICOM objects for the PACS, built with highdicom (whose constructors validate them).

* **Structured Report, TID 1500 Measurement Report** (Comprehensive 3D SR; PS3.16 TID 1500), one per result. The
  observer is the model, a device (TID 1004: its name, version and the first 16 hex digits of its sha256 as serial
  number), and every group carries TID 4019 Algorithm Identification (name, version, full sha256). One measurement
  group (TID 1501) per finding the model assessed: finding type the finding (SNOMED CT where one exists, else the
  local code), a measurement "Probability" in UCUM ``1`` and the model's operating point, and a qualitative evaluation
  "Presence" (present at or above the operating point, absent below). One group per finding the policy names but the
  model does **not assess**, whose evaluation is "Not assessed" (never left out). One group for the study as a whole
  with the triage priority and, when the model gives one, the predicted severity (geographic extent, 0-8). Every group
  names the scored image as its source. The document is preliminary (Completion Flag PARTIAL, Verification Flag
  UNVERIFIED): a radiologist reads the study.
* **Secondary Capture**, one per heatmap (the PNG overlay the FHIR report links), RGB, with the patient and
  study of the source image and a Source Image Sequence naming it (derivation: where the model looked).

UIDs are derived from the job id (`derived_uid`), so that sending the objects again (a retry) replaces them in
the PACS rather than adding copies. AI transparency: Manufacturer and the series descriptions say the content is
AI-generated, and the SR's title and observer name the model.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from typing import Final

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ..app.core.domain import ImagingOrder, ModelIdentity, TriageResult

MANUFACTURER: Final = "radtriage (AI-generated, preliminary)"
LOCAL_SCHEME: Final = "99RADTRIAGE"
SR_SERIES_NUMBER: Final = 9901
SC_SERIES_NUMBER: Final = 9902
_UID_NAMESPACE: Final = uuid.UUID("6f1c5b7e-2d3a-4c8e-9b0f-7a1e2d3c4b5a")
#: SNOMED CT codes of findings that have one (the same as the FHIR Observations use).
FINDING_SNOMED: Final = {
    "Atelectasis": ("46621007", "Atelectasis"),
    "Cardiomegaly": ("8186001", "Cardiomegaly"),
    "Consolidation": ("95436008", "Lung consolidation"),
    "Edema": ("19242006", "Pulmonary edema"),
    "Effusion": ("60046008", "Pleural effusion"),
    "Emphysema": ("87433001", "Pulmonary emphysema"),
    "Fibrosis": ("51615001", "Fibrosis of lung"),
    "Fracture": ("125605004", "Fracture of bone"),
    "Mass": ("126952004", "Neoplasm of lung"),
    "Nodule": ("427359005", "Solitary nodule of lung"),
    "Pneumonia": ("233604007", "Pneumonia"),
    "Pneumothorax": ("36118008", "Pneumothorax"),
}

PROBABILITY: Final = hd.sr.CodedConcept("probability", LOCAL_SCHEME, "Probability of the finding (model output)")
OPERATING_POINT: Final = hd.sr.CodedConcept("threshold", LOCAL_SCHEME, "Operating point of the model")
PRESENCE: Final = hd.sr.CodedConcept("presence", LOCAL_SCHEME, "Presence at the model's operating point")
PRESENT: Final = codes.SCT.Present
ABSENT: Final = codes.SCT.Absent
NOT_ASSESSED: Final = hd.sr.CodedConcept("not-assessed", LOCAL_SCHEME, "Not assessed (the model has no output)")
PRIORITY: Final = hd.sr.CodedConcept("priority", LOCAL_SCHEME, "Triage priority")
SEVERITY: Final = hd.sr.CodedConcept("severity", LOCAL_SCHEME, "Predicted severity (geographic extent, 0-8)")
STUDY_FINDING: Final = hd.sr.CodedConcept("cxr-triage", LOCAL_SCHEME, "Chest radiograph triage by a model")
UNITLESS: Final = hd.sr.CodedConcept("1", "UCUM", "no units")
SCORE: Final = hd.sr.CodedConcept("{score}", "UCUM", "score")
CHEST_XR: Final = hd.sr.CodedConcept("36643-5", "LN", "XR Chest 2 Views")


def derived_uid(job_id: str, purpose: str) -> str:
    """A DICOM UID (``2.25.<uuid as integer>``, PS3.5 B.2) that is the same every time for this job and purpose."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'{job_id}/{purpose}').int}"


def measurement_report(source: Dataset, order: ImagingOrder, result: TriageResult) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 Measurement Report of `result`, for the scored image `source` (see the module docstring)."""
    image = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
    groups = [
        _finding_group(result, n, finding.label, image, finding.probability, finding.threshold)
        for n, finding in enumerate(result.findings, start=1)
    ]
    groups += [
        _finding_group(result, len(result.findings) + n, label, image)
        for n, label in enumerate(result.not_assessed, start=1)
    ]
    groups.append(_study_group(result, image))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.cid270.Device,
                observer_identifying_attributes=_device(result.model),
            )
        ),
        procedure_reported=CHEST_XR,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report,
        series_instance_uid=derived_uid(result.job_id, "sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid(result.job_id, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description=f"AI triage result (preliminary), {result.model.name} {result.model.version}"[:64],
    )
    if order.accession_number and not sr.get("AccessionNumber"):
        sr.AccessionNumber = order.accession_number
    return sr


def heatmap_capture(source: Dataset, result: TriageResult, n: int, label: str, png: bytes) -> hd.sc.SCImage:
    """Heatmap `n` (1-based, the FHIR report's order) of `label` as an RGB Secondary Capture of `source`'s study."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint8)
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=derived_uid(result.job_id, "sc-series"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=derived_uid(result.job_id, f"sc-{n}"),
        instance_number=n,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
    )
    capture.SeriesDescription = f"AI heatmaps (preliminary), {result.model.name}"[:64]
    capture.ImageComments = f"Heatmap, {label}: where the model looked (Grad-CAM). AI-generated; not a diagnosis."
    capture.DerivationDescription = f"Grad-CAM heatmap of {label} over the image the model saw"[:1024]
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = source.SOPClassUID
    referenced.ReferencedSOPInstanceUID = source.SOPInstanceUID
    capture.SourceImageSequence = [referenced]
    capture.BurnedInAnnotation = "NO"
    return capture


def _device(model: ModelIdentity) -> hd.sr.DeviceObserverIdentifyingAttributes:
    return hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid(model.sha256, "device"),
        name=f"{model.name} {model.version}"[:64],
        manufacturer_name=MANUFACTURER,
        model_name=model.name[:64],
        serial_number=model.sha256[:16],
    )


def _algorithm(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification, as IHE AI Results asks for in each group: name, version, weights' hash."""
    return hd.sr.AlgorithmIdentification(
        name=model.name[:64], version=model.version[:64], parameters=[f"sha256={model.sha256}"]
    )


def _finding_concept(label: str) -> hd.sr.CodedConcept:
    if label in FINDING_SNOMED:
        code, meaning = FINDING_SNOMED[label]
        return hd.sr.CodedConcept(code, "SCT", meaning)
    return hd.sr.CodedConcept(label[:16], LOCAL_SCHEME, label[:64])


def _finding_group(
    result: TriageResult,
    n: int,
    label: str,
    image: hd.sr.SourceImageForMeasurementGroup,
    probability: float | None = None,
    threshold: float | None = None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for one finding; without a probability the finding was not assessed."""
    measurements: Sequence[hd.sr.Measurement] = ()
    if probability is None or threshold is None:
        evaluation = hd.sr.QualitativeEvaluation(PRESENCE, NOT_ASSESSED)
    else:
        evaluation = hd.sr.QualitativeEvaluation(PRESENCE, PRESENT if probability >= threshold else ABSENT)
        measurements = (
            hd.sr.Measurement(PROBABILITY, round(float(probability), 4), UNITLESS),
            hd.sr.Measurement(OPERATING_POINT, round(float(threshold), 4), UNITLESS),
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(result.job_id, f"finding-{n}"), identifier=f"{label} ({result.model.name})"[:64]
        ),
        algorithm_id=_algorithm(result.model),
        finding_type=_finding_concept(label),
        measurements=list(measurements) or None,
        qualitative_evaluations=[evaluation],
        source_images=[image],
    )


def _study_group(
    result: TriageResult, image: hd.sr.SourceImageForMeasurementGroup
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for the study: the triage priority and, when the model gives one, the predicted severity."""
    priority = hd.sr.CodedConcept(result.priority.code, LOCAL_SCHEME, f"Priority {result.priority.code}")
    measurements = None
    if result.severity is not None:
        measurements = [hd.sr.Measurement(SEVERITY, round(float(result.severity), 2), SCORE)]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(result.job_id, "study"), identifier="Triage of the study"
        ),
        finding_type=STUDY_FINDING,
        algorithm_id=_algorithm(result.model),
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(PRIORITY, priority)],
        source_images=[image],
    )
