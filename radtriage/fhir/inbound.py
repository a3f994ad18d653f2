"""FHIR R4 resources into the domain: orders, with `fhir.resources.R4B` (wire-compatible with R4 4.0.1 here).

No Flask and no I/O: the REST door (`api.py`) calls these functions and the service; tests call them directly.
The way back out (Task, DiagnosticReport, Observation, Provenance, Bundles) is `mapping`.

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

"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from fhir.resources.R4B.bundle import Bundle, BundleEntry
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from ..app.core.domain import ImagingOrder, Priority
from ..app.core.errors import ErrorCode, TriageError
from ..app.core.uids import UID_RULE, is_dicom_uid
from . import terminology as t
from .strict_json import primitive_type_problems

JsonObject = dict[str, Any]
R = TypeVar("R", bound=Resource)

#: The `ImagingOrder.source` of every order that came through this door.
SOURCE: Final = "fhir"

#: DICOM PS3.5 9.1: UID components are digits without leading zeros, separated by dots, 64 characters in all.
#: A FHIR logical id (R4 datatypes: id).
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
#: A literal reference to a Patient, relative or absolute, without a version (R4 References, 2.3.0.1).
_PATIENT_REFERENCE = re.compile(r"(?:(?:https?://\S+/)?)Patient/[A-Za-z0-9\-.]{1,64}")
_HISTORY_SUFFIX = re.compile(r"/_history/[^/]+$")
#: Column sizes of the order store; longer values are refused here rather than truncated there.
_MAX_REF: Final = 255
_MAX_SHORT: Final = 64


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
    """One order found in a transaction Bundle and the entries (0-based) it was built from.

    `request_index` and `study_index` say which entry was the ServiceRequest and which the ImagingStudy (None
    when the order had no such entry), so that each entry's response can name its own resource.
    """

    order: ImagingOrder
    entry_indexes: tuple[int, ...]
    request_index: int | None = None
    study_index: int | None = None


def orders_from_transaction(bundle: JsonObject) -> list[TransactionOrder]:
    """Every order in a transaction Bundle, in entry order; all entries are checked before any is returned.

    FHIR R4 http 3.1.0.11.2: a transaction succeeds or fails as a whole, so one bad entry refuses the Bundle.
    A ServiceRequest and an ImagingStudy are one order when the study's ``basedOn`` names the request or the
    request's ``supportingInfo`` names the study (by the entry's ``fullUrl``, ``Type/<id>``, or an absolute URL
    ending in it: R4 Bundle 2.36.4.1 resolves references against the entries' fullUrls).
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
    #: The names each entry goes by within the Bundle → its index, to resolve basedOn and supportingInfo.
    request_keys: dict[str, int] = {}
    study_keys: dict[str, int] = {}
    for index, entry in enumerate(entries):
        path = f"Bundle.entry[{index}]"
        resource, resource_id = _transaction_entry(entry, path)
        if isinstance(resource, ServiceRequest):
            requests[index] = (resource, resource_id)
            request_keys.update(dict.fromkeys(_entry_names(entry.fullUrl, "ServiceRequest", resource_id), index))
        elif isinstance(resource, ImagingStudy):
            studies[index] = (resource, resource_id)
            study_keys.update(dict.fromkeys(_entry_names(entry.fullUrl, "ImagingStudy", resource_id), index))

    study_for_request = _pair_requests_and_studies(requests, studies, request_keys, study_keys)
    paired_studies = set(study_for_request.values())

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
        found.append(TransactionOrder(order, indexes, request_index=index, study_index=study_index))
    for index, (study, study_id) in studies.items():
        if index in paired_studies:
            continue
        order = _order_from_study(study, path=f"Bundle.entry[{index}].resource", resource_id=study_id)
        found.append(TransactionOrder(order, (index,), study_index=index))
    return sorted(found, key=lambda item: item.entry_indexes[0])


def _entry_names(full_url: str | None, resource_type: str, resource_id: str | None) -> list[str]:
    """What a reference inside the Bundle may call an entry: its fullUrl, ``Type/<id>`` and the fullUrl's tail."""
    names = []
    if full_url:
        names.append(full_url)
        tail = re.search(rf"(?:^|/)({resource_type}/[A-Za-z0-9\-.]{{1,64}})$", full_url)
        if tail:
            names.append(tail.group(1))
    if resource_id:
        names.append(f"{resource_type}/{resource_id}")
    return names


def _pair_requests_and_studies(
    requests: Mapping[int, tuple[ServiceRequest, str | None]],
    studies: Mapping[int, tuple[ImagingStudy, str | None]],
    request_keys: Mapping[str, int],
    study_keys: Mapping[str, int],
) -> dict[int, int]:
    """ServiceRequest entry → the one ImagingStudy entry that fulfils it (by basedOn or by supportingInfo)."""
    pairs: dict[int, int] = {}

    def pair(request_index: int, study_index: int, location: str) -> None:
        taken = pairs.get(request_index, study_index) != study_index
        shared = study_index in pairs.values() and pairs.get(request_index) != study_index
        if taken or shared:
            raise TriageError(
                ErrorCode.UNSUPPORTED,
                "a ServiceRequest may be fulfilled by one ImagingStudy here, and an ImagingStudy may fulfil one "
                "ServiceRequest; submit one order per study",
                location=location,
            )
        pairs[request_index] = study_index

    for index, (study, _) in studies.items():
        for n, based_on in enumerate(study.basedOn or []):
            linked = _resolve(based_on, request_keys)
            if linked is not None:
                pair(linked, index, f"Bundle.entry[{index}].resource.basedOn[{n}]")
    for index, (request, _) in requests.items():
        for n, info in enumerate(request.supportingInfo or []):
            linked = _resolve(info, study_keys)
            if linked is not None:
                pair(index, linked, f"Bundle.entry[{index}].resource.supportingInfo[{n}]")
    return pairs


def _resolve(reference: Reference, keys: Mapping[str, int]) -> int | None:
    """The entry a reference names, by exact fullUrl or by its ``Type/<id>`` tail; None when none does."""
    value = _HISTORY_SUFFIX.sub("", (reference.reference or "").strip())
    if not value:
        return None
    if value in keys:
        return keys[value]
    tail = re.search(r"(?:^|/)([A-Za-z]+/[A-Za-z0-9\-.]{1,64})$", value)
    return keys.get(tail.group(1)) if tail else None


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
    misfits = list(primitive_type_problems(payload, model, where))
    if misfits:
        listed = "; ".join(f"{location}: {message}" for location, message in misfits[:5])
        extra = f" (and {len(misfits) - 5} more)" if len(misfits) > 5 else ""
        raise TriageError(ErrorCode.INVALID_INPUT, f"invalid {expected}: {listed}{extra}", location=misfits[0][0])
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
    named_by_reference = _supporting_study_uid(request.supportingInfo, path)
    if uid is not None and named_by_reference is not None and uid != named_by_reference:
        raise TriageError(
            ErrorCode.INVALID_INPUT,
            "the ServiceRequest's identifier and its supportingInfo name different Study Instance UIDs",
            location=f"{path}.supportingInfo",
        )
    uid = uid or named_by_reference
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
            "DCM 110180) and value urn:oid:<uid>, a supportingInfo naming the ImagingStudy by that identifier, or "
            "send it with its ImagingStudy in a transaction (ImagingStudy.basedOn or ServiceRequest.supportingInfo)",
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
        if not is_dicom_uid(uid):
            raise TriageError(
                ErrorCode.INVALID_INPUT,
                f"the Study Instance UID is not valid (PS3.5 9.1: {UID_RULE})",
                location=location,
            )
        found.add(uid)
    if len(found) > 1:
        raise TriageError(
            ErrorCode.INVALID_INPUT, "more than one Study Instance UID is given", location=f"{path}.identifier"
        )
    return found.pop() if found else None


def _supporting_study_uid(references: Sequence[Reference] | None, path: str) -> str | None:
    """The Study Instance UID of an ImagingStudy that ``supportingInfo`` names by identifier (a logical reference
    with system ``urn:dicom:uid``), or None."""
    identifiers = [
        reference.identifier
        for reference in references or []
        if reference.identifier is not None and reference.type in (None, "ImagingStudy")
    ]
    return _study_uid(identifiers, f"{path}.supportingInfo", accept_uri_system=False) if identifiers else None


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
