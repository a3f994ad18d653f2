"""FHIR R4 resources in and out of the domain, with `fhir.resources.R4B` (wire-compatible with R4 4.0.1 here).

No Flask and no I/O: the REST door (`api.py`) calls these functions and the service; tests call them directly.

Inbound
=======

An order is one imaging study to triage. The EHR sends it as

* an **ImagingStudy** (`order_from_imaging_study`);
* a **ServiceRequest**, alone when it carries the study UID itself, or with the ImagingStudy it was fulfilled by
  (`order_from_service_request`);
* a **transaction Bundle** holding ServiceRequests and ImagingStudies (`orders_from_transaction`); an
  ImagingStudy belongs to the ServiceRequest that its ``basedOn`` names, by the entry's ``fullUrl`` (for example
  ``urn:uuid:...``) or by ``ServiceRequest/<id>``.

Where the Study Instance UID is read
------------------------------------

* ``ImagingStudy.identifier`` with system ``urn:dicom:uid`` and value ``urn:oid:<uid>`` (FHIR R4 ImagingStudy,
  "Notes"). System ``urn:ietf:rfc:3986`` (and its misspelling ``urn:dietf:rfc:3986``) with an ``urn:oid:``
  value is accepted too.
* ``ServiceRequest.identifier`` with system ``urn:dicom:uid``, or with ``type`` DICOM DCM 110180 "Study Instance
  UID" (value ``urn:oid:<uid>`` or the bare UID). This is how the HL7 Europe imaging guides carry the UID of
  an imaging order. No extension is needed.

The UID must follow DICOM PS3.5 9.1 (digits and dots, no leading zeros, at most 64 characters).

Other fields: ``subject`` → `ImagingOrder.patient_ref` (``Patient/123`` as given, or ``system|value`` for a
subject given only by identifier); ``ServiceRequest.priority`` → ``requested_priority`` (request-priority codes
are checked here: fhir.resources does not check required bindings); ``identifier`` of type ACSN → accession
number, of type PLAC → placer order number.

Idempotency key (`ImagingOrder.source_key`): ``ImagingStudy/<id>`` or ``ServiceRequest/<id>`` when the
resource has an id (it is the EHR's id: posting the same resource again finds the same order); otherwise a
conditional-reference style key built from an identifier, e.g. ``ImagingStudy?identifier=urn:dicom:uid|urn:oid:1.2.3``.

Every problem raises `TriageError` with a FHIRPath `location` (``ImagingStudy.identifier[0].value``,
``Bundle.entry[1].resource.subject``): INVALID_INPUT when the content is wrong, UNSUPPORTED when it is valid
FHIR that this service does not act on (a revoked ServiceRequest, a batch Bundle, a Patient entry).

Outbound
========

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
from typing import Any, Final, TypeVar

from fhir.resources.R4B.binary import Binary
from fhir.resources.R4B.bundle import Bundle, BundleEntry
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task
from pydantic import ValidationError

from ..app.core.domain import FindingScore, ImagingOrder, Job, JobState, ModelIdentity, Priority, TriageResult
from ..app.core.errors import ErrorCode, TriageError
from ..compliance.provenance import device_id, device_resource, label_ai_asserted, provenance_resource
from . import terminology as t

JsonObject = dict[str, Any]
R = TypeVar("R", bound=Resource)

#: The `ImagingOrder.source` of every order that came through this door.
SOURCE: Final = "fhir"

#: DICOM PS3.5 9.1: UID components are digits without leading zeros, separated by dots, 64 characters in all.
_DICOM_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_MAX_UID_LENGTH: Final = 64
#: A FHIR logical id (R4 datatypes: id).
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
#: A literal reference to a Patient, relative or absolute, without a version (R4 References, 2.3.0.1).
_PATIENT_REFERENCE = re.compile(r"(?:(?:https?://\S+/)?)Patient/[A-Za-z0-9\-.]{1,64}")
_HISTORY_SUFFIX = re.compile(r"/_history/[^/]+$")
#: Column sizes of the order store; longer values are refused here rather than truncated there.
_MAX_REF: Final = 255
_MAX_SHORT: Final = 64

UNTRAINED_PLACEHOLDER_WARNING: Final = (
    "UNTRAINED PLACEHOLDER MODEL: these results were produced by an untrained stand-in model. They have NO "
    "clinical meaning and must not be used for patient care."
)

# ====================================================================================== inbound


def order_from_imaging_study(res: JsonObject) -> ImagingOrder:
    """The order for a posted ImagingStudy."""
    study = parse_resource(res, ImagingStudy)
    return _order_from_study(study, path="ImagingStudy", resource_id=study.id)


def order_from_service_request(sr: JsonObject, study: JsonObject | None = None) -> ImagingOrder:
    """The order for a posted ServiceRequest, optionally with the ImagingStudy that fulfils it."""
    request = parse_resource(sr, ServiceRequest)
    imaging_study = parse_resource(study, ImagingStudy) if study is not None else None
    return _order_from_request(
        request,
        path="ServiceRequest",
        resource_id=request.id,
        study=(imaging_study, "ImagingStudy", imaging_study.id) if imaging_study is not None else None,
    )


@dataclass(frozen=True)
class TransactionOrder:
    """One order found in a transaction Bundle and the entries (0-based) it was built from."""

    order: ImagingOrder
    entry_indexes: tuple[int, ...]


def orders_from_transaction(bundle: JsonObject) -> list[TransactionOrder]:
    """Every order in a transaction Bundle, in entry order; all entries are checked before any is returned.

    FHIR R4 http 3.1.0.11.2: a transaction succeeds or fails as a whole, so one bad entry refuses the Bundle.
    """
    parsed = parse_resource(bundle, Bundle)
    if parsed.type != "transaction":
        raise TriageError(
            ErrorCode.UNSUPPORTED, "only Bundles of type 'transaction' are accepted", location="Bundle.type"
        )
    entries = parsed.entry or []
    if not entries:
        raise TriageError(ErrorCode.INVALID_INPUT, "the transaction has no entries", location="Bundle.entry")

    requests: dict[int, tuple[ServiceRequest, str | None]] = {}
    studies: dict[int, tuple[ImagingStudy, str | None]] = {}
    #: fullUrl and "ServiceRequest/<id>" of every ServiceRequest entry → its index, to resolve basedOn.
    request_keys: dict[str, int] = {}
    for index, entry in enumerate(entries):
        path = f"Bundle.entry[{index}]"
        resource, resource_id = _transaction_entry(entry, path)
        if isinstance(resource, ServiceRequest):
            requests[index] = (resource, resource_id)
            if entry.fullUrl:
                request_keys[entry.fullUrl] = index
            if resource_id:
                request_keys[f"ServiceRequest/{resource_id}"] = index
        elif isinstance(resource, ImagingStudy):
            studies[index] = (resource, resource_id)

    study_for_request: dict[int, int] = {}
    lone_studies: list[int] = []
    for index, (study, _) in studies.items():
        linked = _linked_request(study, request_keys)
        if linked is None:
            lone_studies.append(index)
        elif linked in study_for_request:
            raise TriageError(
                ErrorCode.UNSUPPORTED,
                "a ServiceRequest may be fulfilled by one ImagingStudy here; submit one order per study",
                location=f"Bundle.entry[{index}].resource.basedOn",
            )
        else:
            study_for_request[linked] = index

    found: list[TransactionOrder] = []
    for index, (request, request_id) in requests.items():
        study_index = study_for_request.get(index)
        study_part = None
        if study_index is not None:
            study, study_id = studies[study_index]
            study_part = (study, f"Bundle.entry[{study_index}].resource", study_id)
        order = _order_from_request(
            request, path=f"Bundle.entry[{index}].resource", resource_id=request_id, study=study_part
        )
        indexes = (index,) if study_index is None else tuple(sorted((index, study_index)))
        found.append(TransactionOrder(order, indexes))
    for index in lone_studies:
        study, study_id = studies[index]
        order = _order_from_study(study, path=f"Bundle.entry[{index}].resource", resource_id=study_id)
        found.append(TransactionOrder(order, (index,)))
    return sorted(found, key=lambda item: item.entry_indexes[0])


def parse_resource(payload: object, model: type[R], *, path: str | None = None) -> R:
    """Validate `payload` as `model` (an R4B class); every problem becomes INVALID_INPUT with a FHIRPath."""
    expected = model.get_resource_type()
    where = path or expected
    if not isinstance(payload, dict):
        raise TriageError(ErrorCode.INVALID_INPUT, f"a {expected} must be a JSON object", location=path)
    actual = payload.get("resourceType")
    if actual != expected:
        what = f"'{actual}'" if isinstance(actual, str) and _FHIR_ID.fullmatch(actual) else "no resourceType"
        raise TriageError(ErrorCode.INVALID_INPUT, f"expected a {expected} resource, got {what}", location=path)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_input=False, include_context=False)
        # pydantic messages name the rule, never the offending value, so they carry no patient data.
        described = [f"{_fhirpath(where, p['loc'])}: {_clean_message(p['msg'])}" for p in problems[:5]]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise TriageError(
            ErrorCode.INVALID_INPUT,
            f"invalid {expected}: " + "; ".join(described) + more,
            location=_fhirpath(where, problems[0]["loc"]) if problems else where,
        ) from None


def _transaction_entry(entry: BundleEntry, path: str) -> tuple[Resource, str | None]:
    """The entry's resource and its id (from the resource, or from ``PUT Type/<id>``), after the checks."""
    if entry.request is None:  # FHIR R4 Bundle invariant bdl-3
        raise TriageError(ErrorCode.INVALID_INPUT, "a transaction entry needs a request", location=f"{path}.request")
    method = entry.request.method
    if method not in ("POST", "PUT"):
        raise TriageError(
            ErrorCode.UNSUPPORTED,
            "only POST and PUT entries are accepted in a transaction",
            location=f"{path}.request.method",
        )
    resource = entry.resource
    if resource is None:
        raise TriageError(ErrorCode.INVALID_INPUT, "the entry has no resource", location=f"{path}.resource")
    if not isinstance(resource, ServiceRequest | ImagingStudy):
        raise TriageError(
            ErrorCode.UNSUPPORTED,
            f"a transaction may hold ServiceRequest and ImagingStudy entries, not {resource.get_resource_type()}",
            location=f"{path}.resource",
        )
    resource_id = resource.id
    if resource_id is None and method == "PUT":
        url_id = (entry.request.url or "").rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
        resource_id = url_id if _FHIR_ID.fullmatch(url_id) and url_id != resource.get_resource_type() else None
    return resource, resource_id


def _linked_request(study: ImagingStudy, request_keys: Mapping[str, int]) -> int | None:
    for based_on in study.basedOn or []:
        reference = (based_on.reference or "").strip()
        if reference in request_keys:
            return request_keys[reference]
    return None


def _order_from_study(study: ImagingStudy, *, path: str, resource_id: str | None) -> ImagingOrder:
    _check_code(study.status, t.IMAGING_STUDY_STATUS_CODES, f"{path}.status")
    if study.status in ("cancelled", "entered-in-error"):
        raise TriageError(
            ErrorCode.UNSUPPORTED,
            f"an ImagingStudy with status {study.status} is not triaged",
            location=f"{path}.status",
        )
    uid = _study_uid(study.identifier, path, accept_uri_system=True)
    if uid is None:
        raise TriageError(
            ErrorCode.INVALID_INPUT,
            "the ImagingStudy has no Study Instance UID (identifier with system urn:dicom:uid and value urn:oid:<uid>)",
            location=f"{path}.identifier",
        )
    study_ref = f"ImagingStudy/{resource_id}" if resource_id else None
    source_key = study_ref or f"ImagingStudy?identifier={t.DICOM_UID_SYSTEM}|{t.OID_PREFIX}{uid}"
    return ImagingOrder(
        study_instance_uid=uid,
        patient_ref=_patient_ref(study.subject, f"{path}.subject"),
        source=SOURCE,
        source_key=source_key,
        accession_number=_typed_identifier(study.identifier, t.ACCESSION_TYPE, path),
        procedure_code=_first_code(study.procedureCode, f"{path}.procedureCode"),
        ordering_provider=_bounded(study.referrer.reference if study.referrer else None, _MAX_REF, f"{path}.referrer"),
        service_request_ref=_service_request_ref(study.basedOn, f"{path}.basedOn"),
        imaging_study_ref=study_ref,
    )


def _order_from_request(
    request: ServiceRequest,
    *,
    path: str,
    resource_id: str | None,
    study: tuple[ImagingStudy, str, str | None] | None,
) -> ImagingOrder:
    _check_code(request.status, t.REQUEST_STATUS_CODES, f"{path}.status")
    if request.status != "active":
        raise TriageError(
            ErrorCode.UNSUPPORTED,
            f"only active ServiceRequests are triaged (this one is {request.status})",
            location=f"{path}.status",
        )
    _check_code(request.intent, t.REQUEST_INTENT_CODES, f"{path}.intent")
    if request.intent not in t.ORDER_INTENTS:
        raise TriageError(
            ErrorCode.UNSUPPORTED,
            f"only ServiceRequests that are orders are triaged (intent is {request.intent})",
            location=f"{path}.intent",
        )
    if request.doNotPerform:
        raise TriageError(
            ErrorCode.UNSUPPORTED, "the ServiceRequest says not to perform it", location=f"{path}.doNotPerform"
        )
    priority = Priority.ROUTINE
    if request.priority is not None:
        _check_code(request.priority, t.REQUEST_PRIORITY_CODES, f"{path}.priority")
        priority = Priority.from_code(request.priority)
    patient_ref = _patient_ref(request.subject, f"{path}.subject")

    uid = _study_uid(request.identifier, path, accept_uri_system=False)
    study_order: ImagingOrder | None = None
    if study is not None:
        study_resource, study_path, study_id = study
        study_order = _order_from_study(study_resource, path=study_path, resource_id=study_id)
        if uid is not None and uid != study_order.study_instance_uid:
            raise TriageError(
                ErrorCode.INVALID_INPUT,
                "the ServiceRequest and its ImagingStudy name different Study Instance UIDs",
                location=f"{study_path}.identifier",
            )
        if study_order.patient_ref != patient_ref:
            raise TriageError(
                ErrorCode.INVALID_INPUT,
                "the ImagingStudy's subject is not the ServiceRequest's subject",
                location=f"{study_path}.subject",
            )
        uid = study_order.study_instance_uid
    if uid is None:
        raise TriageError(
            ErrorCode.INVALID_INPUT,
            "no Study Instance UID: give the ServiceRequest an identifier with system urn:dicom:uid (or type "
            "DCM 110180) and value urn:oid:<uid>, or send it with its ImagingStudy in a transaction",
            location=f"{path}.identifier",
        )

    request_ref = f"ServiceRequest/{resource_id}" if resource_id else None
    placer = _typed_identifier(request.identifier, t.PLACER_TYPE, path)
    if request_ref:
        source_key = request_ref
    elif (business_id := _business_identifier(request.identifier)) is not None:
        source_key = _bounded(f"ServiceRequest?identifier={business_id}", _MAX_REF, f"{path}.identifier") or ""
    else:
        source_key = f"ServiceRequest?identifier={t.DICOM_UID_SYSTEM}|{t.OID_PREFIX}{uid}"
    return ImagingOrder(
        study_instance_uid=uid,
        patient_ref=patient_ref,
        source=SOURCE,
        source_key=source_key,
        requested_priority=priority,
        accession_number=_typed_identifier(request.identifier, t.ACCESSION_TYPE, path)
        or (study_order.accession_number if study_order else None),
        placer_order_number=placer,
        procedure_code=_first_code([request.code] if request.code else None, f"{path}.code")
        or (study_order.procedure_code if study_order else None),
        ordering_provider=_bounded(
            request.requester.reference if request.requester else None, _MAX_REF, f"{path}.requester"
        ),
        service_request_ref=request_ref,
        imaging_study_ref=study_order.imaging_study_ref if study_order else None,
    )


def _study_uid(identifiers: Sequence[Identifier] | None, path: str, *, accept_uri_system: bool) -> str | None:
    """The one Study Instance UID among `identifiers`, or None; two different ones are an error."""
    found: set[str] = set()
    for index, identifier in enumerate(identifiers or []):
        location = f"{path}.identifier[{index}].value"
        value = (identifier.value or "").strip()
        names_study = _is_typed(identifier, t.DICOM_DCM_SYSTEM, t.DCM_STUDY_INSTANCE_UID)
        if identifier.system == t.DICOM_UID_SYSTEM or names_study:
            uid = value.removeprefix(t.OID_PREFIX)
        elif accept_uri_system and identifier.system in t.URI_SYSTEMS and value.startswith(t.OID_PREFIX):
            uid = value.removeprefix(t.OID_PREFIX)
        else:
            continue
        if not uid:
            raise TriageError(ErrorCode.INVALID_INPUT, "the Study Instance UID is empty", location=location)
        if len(uid) > _MAX_UID_LENGTH or not _DICOM_UID.fullmatch(uid):
            raise TriageError(
                ErrorCode.INVALID_INPUT,
                "the Study Instance UID is not a DICOM UID (PS3.5 9.1: digits and dots, at most 64 characters)",
                location=location,
            )
        found.add(uid)
    if len(found) > 1:
        raise TriageError(
            ErrorCode.INVALID_INPUT, "more than one Study Instance UID is given", location=f"{path}.identifier"
        )
    return found.pop() if found else None


def _patient_ref(subject: Reference | None, path: str) -> str:
    """``Patient/<id>`` (relative or absolute, version dropped), or ``system|value`` for a logical reference."""
    if subject is None:
        raise TriageError(ErrorCode.INVALID_INPUT, "the subject is missing", location=path)
    if subject.reference:
        reference = _HISTORY_SUFFIX.sub("", subject.reference.strip())
        if not _PATIENT_REFERENCE.fullmatch(reference):
            raise TriageError(
                ErrorCode.UNSUPPORTED,
                "the subject must reference a Patient this service can name (Patient/<id>); contained and "
                "urn:uuid references are not resolved",
                location=f"{path}.reference",
            )
        return _bounded(reference, _MAX_REF, f"{path}.reference") or ""
    if subject.identifier is not None and subject.identifier.value:
        if subject.type not in (None, "Patient"):
            raise TriageError(ErrorCode.UNSUPPORTED, "the subject must be a Patient", location=f"{path}.type")
        identifier = f"{subject.identifier.system or ''}|{subject.identifier.value}"
        return _bounded(identifier, _MAX_REF, f"{path}.identifier") or ""
    raise TriageError(
        ErrorCode.INVALID_INPUT, "the subject needs a reference (Patient/<id>) or an identifier", location=path
    )


def _service_request_ref(based_on: Sequence[Reference] | None, path: str) -> str | None:
    for index, reference in enumerate(based_on or []):
        value = _HISTORY_SUFFIX.sub("", (reference.reference or "").strip())
        if re.fullmatch(r"(?:https?://\S+/)?ServiceRequest/[A-Za-z0-9\-.]{1,64}", value):
            return _bounded(value, _MAX_REF, f"{path}[{index}].reference")
    return None


def _is_typed(identifier: Identifier, system: str, code: str) -> bool:
    codings = identifier.type.coding if identifier.type else None
    return any(c.system == system and c.code == code for c in codings or [])


def _typed_identifier(identifiers: Sequence[Identifier] | None, type_code: str, path: str) -> str | None:
    """The value of the first identifier of HL7 v2 table 0203 type `type_code` (ACSN, PLAC)."""
    for index, identifier in enumerate(identifiers or []):
        if _is_typed(identifier, t.V2_0203_SYSTEM, type_code) and identifier.value:
            return _bounded(identifier.value.strip(), _MAX_SHORT, f"{path}.identifier[{index}].value")
    return None


def _business_identifier(identifiers: Sequence[Identifier] | None) -> str | None:
    """``system|value`` of the placer identifier, else of the first identifier that is not the study UID."""
    candidates = [
        i
        for i in identifiers or []
        if i.value
        and i.system
        and i.system != t.DICOM_UID_SYSTEM
        and not _is_typed(i, t.DICOM_DCM_SYSTEM, t.DCM_STUDY_INSTANCE_UID)
    ]
    placers = [i for i in candidates if _is_typed(i, t.V2_0203_SYSTEM, t.PLACER_TYPE)]
    chosen = placers or candidates
    return f"{chosen[0].system}|{chosen[0].value}" if chosen else None


def _first_code(concepts: Sequence[Any] | None, path: str) -> str | None:
    for concept in concepts or []:
        for coding in concept.coding or []:
            if coding.code:
                return _bounded(str(coding.code), _MAX_SHORT, f"{path}.coding.code")
    return None


def _check_code(value: str | None, allowed: Sequence[str], location: str) -> None:
    """Required bindings are the server's job: fhir.resources accepts any code."""
    if value is not None and value not in allowed:
        raise TriageError(ErrorCode.INVALID_INPUT, f"the code is not one of: {', '.join(allowed)}", location=location)


def _bounded(value: str | None, limit: int, location: str) -> str | None:
    if value is not None and len(value) > limit:
        raise TriageError(ErrorCode.INVALID_INPUT, f"longer than {limit} characters", location=location)
    return value


def _fhirpath(root: str, loc: Sequence[int | str]) -> str:
    """pydantic's error location as FHIRPath: ('identifier', 0, 'system') → ``Root.identifier[0].system``."""
    path = root
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif re.fullmatch(r"_?[A-Za-z][A-Za-z0-9_]*", part) and part != "resource_type":
            path += f".{part}"
        # other parts are pydantic's names for union branches and validators: not elements
    return path


def _clean_message(message: str) -> str:
    return message.removeprefix("Value error, ").strip()


# ====================================================================================== outbound


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
    """The FHIR Task that tracks one job (id = job id)."""
    task: JsonObject = {
        "resourceType": "Task",
        "id": job.id,
        "meta": _meta(job.updated_at, result),
        "status": task_status(job.state),
        "businessStatus": {
            "coding": [{"system": t.JOB_STATE_SYSTEM, "code": job.state.value}],
            "text": f"pipeline state: {job.state.value}",
        },
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
        if job.state.is_terminal and job.updated_at is not None:
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
    if result is not None:
        # The model decided the Task's priority and produced its output (R4 Task.owner may be a Device).
        task["owner"] = device_reference(result.model)
        if result.model.placeholder:
            task["note"] = [{"text": UNTRAINED_PLACEHOLDER_WARNING}]
    return _dump(Task, task)


def diagnostic_report(
    order: ImagingOrder,
    job: Job,
    result: TriageResult,
    *,
    draft: str | None = None,
    heatmap_labels: Sequence[str] = (),
) -> JsonObject:
    """The preliminary triage report of a scored job (id = job id), pointing at one Observation per finding.

    With a `draft` (a routine study drafted by `radtriage.model.drafting`, drafting mode "on"), the draft is the
    conclusion and also the ``presentedForm`` (text/plain, UTF-8, base64); the status stays ``preliminary``,
    because a radiologist signs the report. Each of `heatmap_labels` (positive findings whose heatmap the worker
    stored) adds a ``presentedForm`` PNG by reference, ``Binary/heatmap-<job id>-<n>``.
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
            {"reference": f"Observation/{observation_id(job.id, n)}", "display": finding.label}
            for n, finding in enumerate(result.findings, start=1)
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
                "url": f"Binary/{heatmap_binary_id(job.id, n)}",
                "title": f"Heatmap, {label}: where the model looked (Grad-CAM over the image the model saw)",
                "creation": _instant(result.created_at or job.updated_at),
            }
            for n, label in enumerate(heatmap_labels, start=1)
        )
    if order.service_request_ref:
        report["basedOn"] = [_service_request_reference(order)]
    return _dump(DiagnosticReport, report)


def conclusion(result: TriageResult) -> str:
    """The report's conclusion: placeholder warning first, then the priority, then the positive findings."""
    lines = [UNTRAINED_PLACEHOLDER_WARNING] if result.model.placeholder else []
    reason = f" ({result.priority_reason})" if result.priority_reason else ""
    lines.append(f"Triage priority: {result.priority.code.upper()}{reason}.")
    positives = result.positive_findings
    if positives:
        listed = ", ".join(f"{f.label} {f.probability:.2f} (threshold {f.threshold:.2f})" for f in positives)
        lines.append(f"Findings at or above the model's operating point: {listed}.")
    else:
        lines.append("No finding reached the model's operating point.")
    lines.append(
        f"Preliminary machine triage by {result.model.name} {result.model.version}; not a radiologist's report."
    )
    return "\n".join(lines)


def observations(order: ImagingOrder, job: Job, result: TriageResult) -> list[JsonObject]:
    """One Observation per finding, ids ``<job id>-1`` … ``<job id>-n`` in the model's label order."""
    return [_observation(order, job, result, n, finding) for n, finding in enumerate(result.findings, start=1)]


def observation(order: ImagingOrder, job: Job, result: TriageResult, n: int) -> JsonObject | None:
    """Observation ``n`` (1-based) of a result, or None when there is no such finding."""
    if not 1 <= n <= len(result.findings):
        return None
    return _observation(order, job, result, n, result.findings[n - 1])


def _observation(order: ImagingOrder, job: Job, result: TriageResult, n: int, finding: FindingScore) -> JsonObject:
    coding = [{"system": t.FINDING_SYSTEM, "code": finding.label, "display": finding.label}]
    if finding.label in t.FINDING_SNOMED:
        code, display = t.FINDING_SNOMED[finding.label]
        coding.append({"system": t.SNOMED_SYSTEM, "code": code, "display": display})
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
    observations_made = [f"Observation/{observation_id(job.id, n)}" for n in range(1, len(result.findings) + 1)]
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
    """The outcome of one transaction entry: HTTP status line, location and the resource returned."""

    status: str
    location: str
    resource: JsonObject
    last_modified: datetime | None = None


def transaction_response(responses: Sequence[EntryResponse], *, base_url: str) -> JsonObject:
    """A transaction-response Bundle (R4 http 3.1.0.11.2): one entry per request entry, in the same order."""
    entries = []
    for response in responses:
        entry_response: JsonObject = {"status": response.status, "location": response.location}
        if response.last_modified is not None:
            entry_response["lastModified"] = _instant(response.last_modified)
        entries.append(
            {"fullUrl": f"{base_url}/{response.location}", "resource": response.resource, "response": entry_response}
        )
    return _dump(Bundle, {"resourceType": "Bundle", "type": "transaction-response", "entry": entries})


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
