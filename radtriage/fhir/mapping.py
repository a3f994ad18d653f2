"""FHIR R4 resources out of the domain, with `fhir.resources.R4B` (wire-compatible with R4 4.0.1 here).

No Flask and no I/O: the REST door (`api.py`) calls these functions and the service; tests call them directly.
Orders coming in (ImagingStudy, ServiceRequest, transaction Bundles) are read by `inbound`.

`task_resource`, `diagnostic_report` and `observations` build JSON dicts through the R4B model classes (so a
resource that does not validate cannot leave). Ids: Task and DiagnosticReport share the job id; Observation
``n`` (1-based, in the model's label order) of a job is ``<job id>-<n>``. Probabilities are UCUM ``1``
(dimensionless, 0..1) so the value is the model's number, not a rescaled one. Whenever the model is the
untrained placeholder every resource says so loudly (conclusion, notes and a ``meta.tag``).

AI transparency (HL7 AI Transparency on FHIR, via `radtriage.compliance.provenance`): every resource the model's
output shaped (the DiagnosticReport, its Observations, and the Task once it carries a result) has the ``AIAST``
security label in ``meta.security``. The model is a ``Device`` (`device`, id ``model-<first 32 hex digits of
the weights' sha256>``) that ``Observation.device``, ``Task.owner`` and the DiagnosticReport's model extension
reference, and one ``Provenance`` per result (`provenance`, id = job id) names that Device as author of the
report, the Observations and the Task, with the ImagingStudy and the ServiceRequest as its sources.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from fhir.resources.R4B.binary import Binary
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.task import Task

from ..app.core.domain import FindingScore, ImagingOrder, Job, JobState, ModelIdentity, TriageResult
from ..app.core.errors import ErrorCode, waiting_text
from ..compliance.provenance import device_id, device_resource, label_ai_asserted, provenance_resource
from . import terminology as t

JsonObject = dict[str, Any]

#: A literal reference to a Patient, relative or absolute, without a version (R4 References, 2.3.0.1).
_HISTORY = re.compile(r"/_history/[^/]+$")
_PATIENT_REFERENCE = re.compile(r"(?:(?:https?://\S+/)?)Patient/[A-Za-z0-9\-.]{1,64}")

UNTRAINED_PLACEHOLDER_WARNING: Final = (
    "UNTRAINED PLACEHOLDER MODEL: these results were produced by an untrained stand-in model. They have NO "
    "clinical meaning and must not be used for patient care."
)


def task_status(state: JobState) -> str:
    """FHIR Task.status for a job state (R4 task-status; see the Task state machine in R4 Task 12.12.1.1).

    The service accepts every order it stores, so a job waiting to run is ``ready`` ("used in place of
    requested/received/accepted when request assignment and acceptance is a given").
    """
    return _TASK_STATUS[state]


_TASK_STATUS: Final[dict[JobState, str]] = {
    JobState.RECEIVED: "ready",
    JobState.QUEUED: "ready",
    JobState.FETCHING: "in-progress",
    JobState.SELECTED: "in-progress",
    JobState.PREPROCESSED: "in-progress",
    JobState.SCORING: "in-progress",
    JobState.SCORED: "in-progress",
    JobState.PUBLISHING: "in-progress",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled",
}


def job_states_for_task_status(code: str) -> frozenset[JobState]:
    """The job states that show as Task.status `code` (empty for task-status codes this service never uses)."""
    return frozenset(state for state, status in _TASK_STATUS.items() if status == code)


def observation_id(job_id: str, n: int) -> str:
    return f"{job_id}-{n}"


def parse_observation_id(observation: str) -> tuple[str, int] | None:
    """(job id, 1-based finding number) of an Observation id, or None when it cannot be one of ours."""
    job_id, dash, number = observation.rpartition("-")
    if not dash or not job_id or not number.isdigit() or number.startswith("0"):
        return None
    return job_id, int(number)


def heatmap_binary_id(job_id: str, n: int) -> str:
    """The Binary id of the n-th (1-based) heatmap of a result."""
    return f"heatmap-{job_id}-{n}"


def parse_heatmap_binary_id(binary_id: str) -> tuple[str, int] | None:
    """(job id, 1-based heatmap number) of a heatmap Binary id, or None when it cannot be one of ours."""
    prefix, _, rest = binary_id.partition("-")
    return parse_observation_id(rest) if prefix == "heatmap" and rest else None


def heatmap_binary(job_id: str, n: int, png: bytes, report_ref: str) -> JsonObject:
    """A heatmap overlay as a FHIR Binary (for clients that ask for JSON rather than the PNG itself)."""
    binary: JsonObject = {
        "resourceType": "Binary",
        "id": heatmap_binary_id(job_id, n),
        "contentType": "image/png",
        "securityContext": {"reference": report_ref},
        "data": base64.b64encode(png).decode("ascii"),
    }
    return _dump(Binary, binary)


def task_resource(job: Job, order: ImagingOrder, result: TriageResult | None) -> JsonObject:
    """The FHIR Task that tracks one job (id = job id).

    A job that failed for a reason that may go away and will be tried again (`Job.waiting_to_retry`) is still
    ``in-progress`` for the client, with a business status that says what it waits for ("waiting for PACS") and
    the last failure as ``statusReason``; it becomes ``failed`` only when its retries are given up."""
    task: JsonObject = {
        "resourceType": "Task",
        "id": job.id,
        "meta": _meta(job.updated_at, result),
        "status": "in-progress" if job.waiting_to_retry else task_status(job.state),
        "businessStatus": _business_status(job),
        "intent": "order",
        "priority": job.priority.code,
        "code": _triage_concept(),
        "focus": _service_request_reference(order) or _study_reference(order),
        "for": subject_reference(order.patient_ref),
        "authoredOn": _instant(order.received_at),
        "lastModified": _instant(job.updated_at),
        "input": [
            {
                "type": _triage_concept("imaging-study", "Imaging study to triage"),
                "valueReference": _study_reference(order),
            }
        ],
    }
    if order.service_request_ref:
        task["basedOn"] = [_service_request_reference(order)]
    if job.created_at is not None:
        task["executionPeriod"] = {"start": _instant(job.created_at)}
        if job.state.is_terminal and not job.waiting_to_retry and job.updated_at is not None:
            task["executionPeriod"]["end"] = _instant(job.updated_at)
    if job.state is JobState.FAILED:
        task["statusReason"] = _failure_reason(job)
    if job.state is JobState.COMPLETED and result is not None:
        task["output"] = [
            {
                "type": _triage_concept("diagnostic-report", "Triage report"),
                "valueReference": {"reference": f"DiagnosticReport/{job.id}"},
            }
        ]
        if result.priority_reason:
            task["output"].append(
                {"type": _triage_concept("priority-reason", "Why this priority"), "valueString": result.priority_reason}
            )
        if result.shadow and result.model_priority is not None:
            # Task.priority stays the order's; what the model would have set is an output, never the priority.
            task["output"].append(
                {
                    "type": _triage_concept("shadow-model-priority", "Priority the model would have set (shadow mode)"),
                    "valueCode": result.model_priority.code,
                }
            )
    if result is not None:
        # The model decided the Task's priority and produced its output (R4 Task.owner may be a Device).
        task["owner"] = device_reference(result.model)
        notes = [UNTRAINED_PLACEHOLDER_WARNING] if result.model.placeholder else []
        if result.shadow:
            notes.append(shadow_note(result))
        if notes:
            task["note"] = [{"text": text} for text in notes]
    return _dump(Task, task)


def diagnostic_report(
    order: ImagingOrder,
    job: Job,
    result: TriageResult,
    *,
    draft: str | None = None,
    heatmap_labels: Sequence[str] = (),
    base_url: str | None = None,
) -> JsonObject:
    """The preliminary triage report of a scored job (id = job id), pointing at one Observation per finding.

    With a `draft` (a routine study drafted by `radtriage.model.drafting`, drafting mode "on"), the draft is the
    conclusion and also the ``presentedForm`` (text/plain, UTF-8, base64); the status stays ``preliminary``,
    because a radiologist signs the report. Each of `heatmap_labels` (positive findings whose heatmap the worker
    stored) adds a ``presentedForm`` PNG by reference, ``<base_url>/Binary/heatmap-<job id>-<n>``: an absolute URL
    (R4 allows a relative one in Attachment.url, but widely used clients such as fhir.resources 6 refuse it).
    """
    report: JsonObject = {
        "resourceType": "DiagnosticReport",
        "id": job.id,
        "meta": _meta(result.created_at or job.updated_at, result),
        "extension": [_model_extension(result)],
        "status": "preliminary",
        "category": [{"coding": [{"system": t.V2_0074_SYSTEM, "code": "RAD", "display": "Radiology"}]}],
        "code": {
            "coding": [
                {"system": t.LOINC_SYSTEM, "code": t.CHEST_XR_LOINC[0], "display": t.CHEST_XR_LOINC[1]},
                {"system": t.TRIAGE_SYSTEM, "code": "cxr-triage", "display": "Chest radiograph triage by a model"},
            ],
            "text": "Chest X-ray triage (machine-generated, preliminary)",
        },
        "subject": subject_reference(order.patient_ref),
        "issued": _instant(result.created_at or job.updated_at),
        "imagingStudy": [_study_reference(order)],
        "result": [
            {"reference": f"Observation/{observation_id(job.id, n)}", "display": display}
            for n, display in enumerate(_report_item_displays(result), start=1)
        ],
        "conclusion": conclusion(result),
    }
    if draft:
        report["conclusion"] = f"{draft}\n{report['conclusion']}"
        report["presentedForm"] = [
            {
                "contentType": "text/plain; charset=utf-8",
                "language": "en",
                "data": base64.b64encode(draft.encode("utf-8")).decode("ascii"),
                "title": "Preliminary draft report by AI (not signed)",
                "creation": _instant(result.created_at or job.updated_at),
            }
        ]
    # Version 1 is the triage as soon as the score is stored; heatmaps, made by a later job, make version 2.
    report["meta"]["versionId"] = "2" if heatmap_labels else "1"
    if heatmap_labels:
        report.setdefault("presentedForm", []).extend(
            {
                "contentType": "image/png",
                "url": f"{base_url.rstrip('/') + '/' if base_url else ''}Binary/{heatmap_binary_id(job.id, n)}",
                "title": f"Heatmap, {label}: where the model looked (Grad-CAM over the image the model saw)",
                "creation": _instant(result.created_at or job.updated_at),
            }
            for n, label in enumerate(heatmap_labels, start=1)
        )
    if order.service_request_ref:
        report["basedOn"] = [_service_request_reference(order)]
    return _dump(DiagnosticReport, report)


def shadow_note(result: TriageResult) -> str:
    """What shadow mode means for this result, in one sentence a reader of the Task or report can act on."""
    would = result.model_priority.code.upper() if result.model_priority is not None else "(unknown)"
    return (
        f"SHADOW MODE: the model would have set priority {would}; the order keeps priority "
        f"{result.priority.code.upper()} and no priority update was sent. The model's priorities are not acted "
        "on at this site until a site validation is recorded (or an operator switches shadow mode off)."
    )


def conclusion(result: TriageResult) -> str:
    """The report's conclusion: placeholder warning first, then the priority, then the positive findings."""
    lines = [UNTRAINED_PLACEHOLDER_WARNING] if result.model.placeholder else []
    if result.shadow:
        lines.append(shadow_note(result))
    reason = f" ({result.priority_reason})" if result.priority_reason else ""
    lines.append(f"Triage priority: {result.priority.code.upper()}{reason}.")
    positives = result.positive_findings
    if positives:
        listed = ", ".join(f"{f.label} {f.probability:.2f} (threshold {f.threshold:.2f})" for f in positives)
        lines.append(f"Findings at or above the model's operating point: {listed}.")
    else:
        lines.append("No finding reached the model's operating point.")
    if result.not_assessed:
        lines.append(f"Not assessed (this model has no output for them): {', '.join(result.not_assessed)}.")
    if result.severity is not None:
        lines.append(f"Radiographic severity (geographic extent 0-8): {result.severity:.1f}.")
    lines.append(
        f"Preliminary machine triage by {result.model.name} {result.model.version}; not a radiologist's report."
    )
    return "\n".join(lines)


def observations(order: ImagingOrder, job: Job, result: TriageResult) -> list[JsonObject]:
    """Every Observation of a result, ids ``<job id>-1`` … ``<job id>-n``: one per finding in the model's label
    order, then one per finding not assessed (no value, a ``dataAbsentReason``), then the severity if any."""
    count = _report_item_count(result)
    return [built for n in range(1, count + 1) if (built := observation(order, job, result, n)) is not None]


def observation(order: ImagingOrder, job: Job, result: TriageResult, n: int) -> JsonObject | None:
    """Observation ``n`` (1-based) of a result, or None when there is no such Observation."""
    findings, not_assessed = len(result.findings), len(result.not_assessed)
    if 1 <= n <= findings:
        return _observation(order, job, result, n, result.findings[n - 1])
    if findings < n <= findings + not_assessed:
        return _not_assessed_observation(order, job, result, n, result.not_assessed[n - findings - 1])
    if n == findings + not_assessed + 1 and result.severity is not None:
        return _severity_observation(order, job, result, n, result.severity)
    return None


def _report_item_count(result: TriageResult) -> int:
    return len(result.findings) + len(result.not_assessed) + (result.severity is not None)


def _report_item_displays(result: TriageResult) -> list[str]:
    """The display of each Observation reference of the report, in Observation number order."""
    displays = [f.label for f in result.findings] + [f"{label} (not assessed)" for label in result.not_assessed]
    return displays + ([t.SEVERITY_CODE[1]] if result.severity is not None else [])


def _finding_coding(label: str) -> list[JsonObject]:
    coding: list[JsonObject] = [{"system": t.FINDING_SYSTEM, "code": label, "display": label}]
    if label in t.FINDING_SNOMED:
        code, display = t.FINDING_SNOMED[label]
        coding.append({"system": t.SNOMED_SYSTEM, "code": code, "display": display})
    return coding


def _model_output_observation(order: ImagingOrder, job: Job, result: TriageResult, n: int) -> JsonObject:
    """What every Observation of a result shares: id, status, subject, the model as device, the study."""
    resource: JsonObject = {
        "resourceType": "Observation",
        "id": observation_id(job.id, n),
        "meta": _meta(result.created_at or job.updated_at, result),
        "status": "preliminary",
        "category": [{"coding": [{"system": t.OBSERVATION_CATEGORY_SYSTEM, "code": "imaging", "display": "Imaging"}]}],
        "subject": subject_reference(order.patient_ref),
        "issued": _instant(result.created_at or job.updated_at),
        "device": {
            **device_reference(result.model),
            "identifier": {"system": t.MODEL_SHA256_SYSTEM, "value": result.model.sha256},
        },
        "derivedFrom": [_study_reference(order)],
    }
    if order.service_request_ref:
        resource["basedOn"] = [_service_request_reference(order)]
    if result.model.placeholder:
        resource["note"] = [{"text": UNTRAINED_PLACEHOLDER_WARNING}]
    return resource


def _not_assessed_observation(order: ImagingOrder, job: Job, result: TriageResult, n: int, label: str) -> JsonObject:
    """A finding the triage policy names but the model has no output for: no value, and why (R4 obs-6)."""
    resource = _model_output_observation(order, job, result, n)
    model = f"{result.model.name} {result.model.version}"
    resource["code"] = {"coding": _finding_coding(label), "text": f"Probability of {label} (not assessed)"}
    resource["dataAbsentReason"] = {
        "coding": [{"system": t.DATA_ABSENT_REASON_SYSTEM, "code": "not-performed", "display": "Not Performed"}],
        "text": f"Not assessed: the model {model} does not assess {label}. Its absence here says nothing about "
        f"whether {label} is present; a rule of the triage policy for it cannot raise the priority.",
    }
    return _dump(Observation, resource)


def _severity_observation(order: ImagingOrder, job: Job, result: TriageResult, n: int, value: float) -> JsonObject:
    """The predicted radiographic severity, which orders studies within one priority (it sets none)."""
    resource = _model_output_observation(order, job, result, n)
    code, display = t.SEVERITY_CODE
    resource["code"] = {"coding": [{"system": t.TRIAGE_SYSTEM, "code": code, "display": display}], "text": display}
    resource["valueQuantity"] = {
        "value": round(float(value), 2),
        "unit": "score",
        "system": t.UCUM_SYSTEM,
        "code": "{score}",
    }
    resource["referenceRange"] = [
        {
            "low": {"value": 0, "unit": "score", "system": t.UCUM_SYSTEM, "code": "{score}"},
            "high": {"value": 8, "unit": "score", "system": t.UCUM_SYSTEM, "code": "{score}"},
            "text": "geographic extent of opacity, 0 (none) to 8 (both lungs fully involved); orders studies "
            "within one priority, never sets a priority",
        }
    ]
    return _dump(Observation, resource)


def _observation(order: ImagingOrder, job: Job, result: TriageResult, n: int, finding: FindingScore) -> JsonObject:
    coding = _finding_coding(finding.label)
    positive = finding.positive
    resource: JsonObject = {
        "resourceType": "Observation",
        "id": observation_id(job.id, n),
        "meta": _meta(result.created_at or job.updated_at, result),
        "status": "preliminary",
        "category": [{"coding": [{"system": t.OBSERVATION_CATEGORY_SYSTEM, "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": coding, "text": f"Probability of {finding.label} (model output)"},
        "subject": subject_reference(order.patient_ref),
        "issued": _instant(result.created_at or job.updated_at),
        "valueQuantity": _probability(finding.probability),
        "interpretation": [
            {
                "coding": [
                    {
                        "system": t.INTERPRETATION_SYSTEM,
                        "code": "POS" if positive else "NEG",
                        "display": "Positive" if positive else "Negative",
                    }
                ]
            }
        ],
        "device": {
            **device_reference(result.model),
            "identifier": {"system": t.MODEL_SHA256_SYSTEM, "value": result.model.sha256},
        },
        "referenceRange": [
            {
                "high": _probability(finding.threshold),
                "text": f"positive at or above {finding.threshold:.4g} (the model's operating point for this finding)",
            }
        ],
        "derivedFrom": [_study_reference(order)],
    }
    if order.service_request_ref:
        resource["basedOn"] = [_service_request_reference(order)]
    if result.model.placeholder:
        resource["note"] = [{"text": UNTRAINED_PLACEHOLDER_WARNING}]
    return _dump(Observation, resource)


# ---------------------------------------------------------------------------------- the model and provenance


def device_reference(model: ModelIdentity) -> JsonObject:
    """A Reference to the model's Device (served at ``Device/<id>``), with its name and version as display."""
    return {"reference": f"Device/{device_id(model)}", "display": f"{model.name} {model.version}"}


def device(model: ModelIdentity) -> JsonObject:
    """The model as a FHIR Device: name, version and the weights' sha256 (`compliance.provenance.device_resource`)."""
    built: JsonObject = device_resource(model).model_dump(mode="json", exclude_none=True)
    return built


def provenance_targets(job: Job, result: TriageResult) -> list[str]:
    """What the model authored for one job: the DiagnosticReport, every Observation and the Task."""
    observations_made = [f"Observation/{observation_id(job.id, n)}" for n in range(1, _report_item_count(result) + 1)]
    return [f"DiagnosticReport/{job.id}", *observations_made, f"Task/{job.id}"]


def provenance(order: ImagingOrder, job: Job, result: TriageResult) -> JsonObject:
    """The Provenance of one result (id = job id), after HL7 AI Transparency on FHIR's AI-Provenance pattern.

    Author: the model's Device. Sources: the ImagingStudy (its FHIR id when the EHR gave one, else its Study
    Instance UID as ``urn:dicom:uid`` identifier) and the ServiceRequest when the order came as one.
    """
    study = order.imaging_study_ref or f"{t.DICOM_UID_SYSTEM}|{t.OID_PREFIX}{order.study_instance_uid}"
    built: JsonObject = provenance_resource(
        provenance_targets(job, result),
        f"Device/{device_id(result.model)}",
        study_ref=study,
        order_ref=order.service_request_ref,
        recorded=result.created_at or job.updated_at,
        resource_id=job.id,
    ).model_dump(mode="json", exclude_none=True)
    return built


# ---------------------------------------------------------------------------------- Bundles


def searchset_bundle(
    resources: Sequence[JsonObject], *, total: int, base_url: str, links: Mapping[str, str]
) -> JsonObject:
    """A searchset Bundle (R4 http 3.1.0.8): every entry a match, `links` keyed by relation (self, next...)."""
    bundle: JsonObject = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": relation, "url": url} for relation, url in links.items()],
        "entry": [
            {
                "fullUrl": f"{base_url}/{resource['resourceType']}/{resource['id']}",
                "resource": resource,
                "search": {"mode": "match"},
            }
            for resource in resources
        ],
    }
    if not bundle["entry"]:
        del bundle["entry"]
    return _dump(Bundle, bundle)


@dataclass(frozen=True)
class EntryResponse:
    """The outcome of one transaction entry: HTTP status line, location, the resource returned and, optionally,
    an OperationOutcome with more to say (``Bundle.entry.response.outcome``)."""

    status: str
    location: str
    resource: JsonObject
    last_modified: datetime | None = None
    outcome: JsonObject | None = None


def transaction_response(responses: Sequence[EntryResponse], *, base_url: str) -> JsonObject:
    """A transaction-response Bundle (R4 http 3.1.0.11.2): one entry per request entry, in the same order."""
    entries = []
    for response in responses:
        entry_response: JsonObject = {"status": response.status, "location": response.location}
        if response.last_modified is not None:
            entry_response["lastModified"] = _instant(response.last_modified)
        if response.outcome is not None:
            entry_response["outcome"] = response.outcome
        full_url = f"{base_url}/{_HISTORY.sub('', response.location)}"
        entries.append({"fullUrl": full_url, "resource": response.resource, "response": entry_response})
    return _dump(Bundle, {"resourceType": "Bundle", "type": "transaction-response", "entry": entries})


def information_outcome(text: str, expression: str | None = None) -> JsonObject:
    """An OperationOutcome with one informational issue (``code`` informational)."""
    issue: JsonObject = {"severity": "information", "code": "informational", "diagnostics": text}
    if expression:
        issue["details"] = {"text": expression}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


# ---------------------------------------------------------------------------------- building blocks


def subject_reference(patient_ref: str) -> JsonObject:
    """A Reference for `ImagingOrder.patient_ref`: literal when it is ``Patient/<id>``, else logical."""
    if _PATIENT_REFERENCE.fullmatch(patient_ref):
        return {"reference": patient_ref}
    system, bar, value = patient_ref.partition("|")
    if not bar:
        return {"type": "Patient", "identifier": {"value": patient_ref}}
    identifier = {"system": system, "value": value} if system else {"value": value}
    return {"type": "Patient", "identifier": identifier}


def _study_reference(order: ImagingOrder) -> JsonObject:
    reference: JsonObject = {
        "type": "ImagingStudy",
        "identifier": {"system": t.DICOM_UID_SYSTEM, "value": f"{t.OID_PREFIX}{order.study_instance_uid}"},
    }
    if order.imaging_study_ref:
        reference["reference"] = order.imaging_study_ref
    return reference


def _service_request_reference(order: ImagingOrder) -> JsonObject | None:
    return {"reference": order.service_request_ref} if order.service_request_ref else None


def _triage_concept(code: str = "cxr-triage", display: str = "Chest radiograph triage by a model") -> JsonObject:
    return {"coding": [{"system": t.TRIAGE_SYSTEM, "code": code, "display": display}]}


def _business_status(job: Job) -> JsonObject:
    if job.waiting_to_retry and job.next_attempt_at is not None:
        return {
            "coding": [{"system": t.JOB_STATE_SYSTEM, "code": "waiting-to-retry"}],
            "text": f"{waiting_text(job.failure_code)}: next attempt at {_instant(job.next_attempt_at)}",
        }
    return {
        "coding": [{"system": t.JOB_STATE_SYSTEM, "code": job.state.value}],
        "text": f"pipeline state: {job.state.value}",
    }


def _failure_reason(job: Job) -> JsonObject:
    code = job.failure_code or ErrorCode.INTERNAL.value
    try:
        display = ErrorCode(code).display
    except ValueError:
        display = None
    coding: JsonObject = {"system": t.TRIAGE_ERROR_SYSTEM, "code": code}
    if display:
        coding["display"] = display
    text = job.failure_detail or display or code
    if job.retryable:
        text += " (may succeed if retried later)"
    return {"coding": [coding], "text": text}


def _meta(last_updated: datetime | None, result: TriageResult | None) -> JsonObject:
    """``lastUpdated``; with a result, the AIAST label and, for the placeholder model, its tag."""
    meta: JsonObject = {}
    if last_updated is not None:
        meta["lastUpdated"] = _instant(last_updated)
    if result is not None:
        label_ai_asserted({"meta": meta})
        if result.model.placeholder:
            meta["tag"] = [
                {"system": t.TRIAGE_SYSTEM, "code": "untrained-placeholder", "display": "Untrained placeholder model"}
            ]
    return meta


def _model_extension(result: TriageResult) -> JsonObject:
    model = result.model
    return {
        "url": t.MODEL_EXTENSION_URL,
        "extension": [
            {"url": "name", "valueString": model.name},
            {"url": "version", "valueString": model.version},
            {"url": "sha256", "valueString": model.sha256},
            {"url": "placeholder", "valueBoolean": model.placeholder},
            # R4 DiagnosticReport.performer cannot be a Device, so the extension carries the reference.
            {"url": "device", "valueReference": device_reference(model)},
        ],
    }


def _probability(value: float) -> JsonObject:
    """A probability as UCUM ``1`` (dimensionless, 0..1), to 4 decimals (more would be false precision)."""
    return {"value": round(float(value), 4), "unit": "probability", "system": t.UCUM_SYSTEM, "code": "1"}


def _instant(value: datetime | None) -> str | None:
    """FHIR instant: time zone required; the domain keeps UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("a FHIR instant needs a time zone")
    return value.isoformat().replace("+00:00", "Z")


def _dump(model: type[Resource], data: JsonObject) -> JsonObject:
    """Validate through the R4B class and return its JSON form (None and empty values dropped)."""
    built: JsonObject = model.model_validate(_without_none(data)).model_dump(mode="json", exclude_none=True)
    return built


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None and v != {}}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value
