"""Every code system, code and identifier system the FHIR door reads or writes, in one place.

External terminologies are used only where the concept is certain; everything that is radtriage's own lives
under one base URL, ``RADTRIAGE_FHIR_BASE``. That base is in the reserved ``.example`` domain (RFC 2606)
because the project owns no domain yet: the URLs are stable identifiers, not pages. If the project gets a
home page, change the base here once (clients compare systems as strings, so announce it as a breaking change).

radtriage's own code systems
============================

``{base}/CodeSystem/triage-error``
    The `ErrorCode` values (``not-a-chest``, ``study-not-found``, ...). Used in ``Task.statusReason`` of a
    failed Task and in ``OperationOutcome.issue.details``.
``{base}/CodeSystem/job-state``
    The pipeline states (``queued``, ``fetching``, ``scoring``, ...) in ``Task.businessStatus``: finer than
    ``Task.status``, which FHIR fixes.
``{base}/CodeSystem/finding``
    The model's finding labels exactly as torchxrayvision names them (``Effusion``, ``Lung Opacity``, ...),
    in ``Observation.code`` beside SNOMED CT where the concept is unambiguous.
``{base}/CodeSystem/triage``
    Codes for things that have no standard code: the report (``cxr-triage``), the Task's input and output
    types (``imaging-study``, ``diagnostic-report``, ``priority-reason``) and the tag ``untrained-placeholder``.
"""

from __future__ import annotations

from typing import Final

# Shared with the audit trail, so that an AuditEvent and a DiagnosticReport name a model the same way.
from ..compliance.codes import MODEL_SHA256_SYSTEM as MODEL_SHA256_SYSTEM
from ..compliance.codes import RADTRIAGE_FHIR_BASE as RADTRIAGE_FHIR_BASE
from ..compliance.codes import TRIAGE_SYSTEM as TRIAGE_SYSTEM

TRIAGE_ERROR_SYSTEM: Final = f"{RADTRIAGE_FHIR_BASE}/CodeSystem/triage-error"
JOB_STATE_SYSTEM: Final = f"{RADTRIAGE_FHIR_BASE}/CodeSystem/job-state"
FINDING_SYSTEM: Final = f"{RADTRIAGE_FHIR_BASE}/CodeSystem/finding"
#: Extension on DiagnosticReport naming the model (name, version, sha256, placeholder) and referencing its Device
#: (``device``): R4 DiagnosticReport.performer cannot reference a Device.
MODEL_EXTENSION_URL: Final = f"{RADTRIAGE_FHIR_BASE}/StructureDefinition/triage-model"

# ---------------------------------------------------------------- external code systems (FHIR R4 names)

#: FHIR R4 ImagingStudy.identifier (notes): a DICOM UID is written with system ``urn:dicom:uid`` and value
#: ``urn:oid:<uid>``. This is the system the service writes.
DICOM_UID_SYSTEM: Final = "urn:dicom:uid"
OID_PREFIX: Final = "urn:oid:"
#: Also accepted inbound: "the value is a URI" (FHIR R4 Identifier notes), with a ``urn:oid:`` value; and its
#: misspelling ``urn:dietf:rfc:3986``, which circulates in integration guides.
URI_SYSTEMS: Final = ("urn:ietf:rfc:3986", "urn:dietf:rfc:3986")
DICOM_DCM_SYSTEM: Final = "http://dicom.nema.org/resources/ontology/DCM"
#: DICOM PS3.16 DCM code "Study Instance UID": accepted as ServiceRequest.identifier.type.
DCM_STUDY_INSTANCE_UID: Final = "110180"
V2_0203_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier types
ACCESSION_TYPE: Final = "ACSN"
PLACER_TYPE: Final = "PLAC"
V2_0074_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service sections
OBSERVATION_CATEGORY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
LOINC_SYSTEM: Final = "http://loinc.org"
SNOMED_SYSTEM: Final = "http://snomed.info/sct"
UCUM_SYSTEM: Final = "http://unitsofmeasure.org"
# Issue 10: a finding the policy names but the model cannot assess is an Observation with no value.
DATA_ABSENT_REASON_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
#: Radiographic severity: geographic extent of opacity, 0-8 (Cohen et al. 2020, the COVID-19 image collection).
SEVERITY_CODE: Final = ("severity-geographic-extent", "Radiographic severity (geographic extent 0-8)")

#: LOINC 30745-4 "XR Chest Views": the chest radiograph report without a fixed number of views. The service
#: scores one frontal image of whatever study it is given, so "2 Views" (36643-5) or "Single view" (36554-4)
#: would claim more than it knows.
CHEST_XR_LOINC: Final = ("30745-4", "XR Chest Views")

#: SNOMED CT disorders for the torchxrayvision labels whose meaning on a chest radiograph is unambiguous.
#: Labels left out (Infiltration, Lung Opacity, Mass, Nodule, Lung Lesion, Pleural_Thickening, Fibrosis,
#: Hernia, Enlarged Cardiomediastinum) carry only the radtriage code: a near-miss SNOMED code is worse than none.
FINDING_SNOMED: Final[dict[str, tuple[str, str]]] = {
    "Atelectasis": ("46621007", "Atelectasis"),
    "Cardiomegaly": ("8186001", "Cardiomegaly"),
    "Consolidation": ("95436008", "Lung consolidation"),
    "Edema": ("19242006", "Pulmonary edema"),
    "Effusion": ("60046008", "Pleural effusion"),
    "Emphysema": ("87433001", "Pulmonary emphysema"),
    "Fracture": ("125605004", "Fracture of bone"),
    "Pneumonia": ("233604007", "Pneumonia"),
    "Pneumothorax": ("36118008", "Pneumothorax"),
}

#: FHIR request-priority (required binding on ServiceRequest.priority and Task.priority).
REQUEST_PRIORITY_CODES: Final = ("routine", "urgent", "asap", "stat")
#: FHIR request-status and request-intent (required bindings; fhir.resources does not check them).
REQUEST_STATUS_CODES: Final = ("draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown")
REQUEST_INTENT_CODES: Final = (
    "proposal",
    "plan",
    "directive",
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
    "option",
)
#: ServiceRequest intents that are an actual order to perform the study (the "order" branch of request-intent).
ORDER_INTENTS: Final = ("order", "original-order", "reflex-order", "filler-order", "instance-order")
IMAGING_STUDY_STATUS_CODES: Final = ("registered", "available", "cancelled", "entered-in-error", "unknown")
#: FHIR task-status and diagnostic-report-status (required bindings; searched by code).
TASK_STATUS_CODES: Final = (
    "draft",
    "requested",
    "received",
    "accepted",
    "rejected",
    "ready",
    "cancelled",
    "in-progress",
    "on-hold",
    "failed",
    "completed",
    "entered-in-error",
)
REPORT_STATUS_CODES: Final = (
    "registered",
    "partial",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "appended",
    "cancelled",
    "entered-in-error",
    "unknown",
)
