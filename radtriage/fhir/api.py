"""The FHIR REST door (FHIR R4 RESTful API, http.html) as a Flask blueprint.

The door maps and delegates: a body becomes an `ImagingOrder` through `mapping`, the order goes to
`TriageService.submit_order`, and reads come from the service and its store. No business rule lives here.

======================================  ===================================================  ========================
route                                   what                                                 scope (system/...)
======================================  ===================================================  ========================
``POST /ImagingStudy``                  an order for that study → ``201`` + its Task         ``ImagingStudy.c``
``POST /ServiceRequest``                (``Location: Task/<id>``); the same resource again   ``ServiceRequest.c``
                                        → ``200`` + the same Task, nothing created
``POST /``                              transaction Bundle of both → transaction-response    ``.c`` of each entry type
``GET /Task/<id>``, ``/Task?...``       the Task (status, priority, statusReason, output)    ``Task.r``, ``Task.s``
``GET /DiagnosticReport/<id>``, ``?``   the preliminary report once the study is scored      ``DiagnosticReport.r/s``
``POST /DiagnosticReport``              a radiologist's final report (monitoring; only when  ``DiagnosticReport.c``
                                        the app passes `receive_final_report`) → ``201`` +
                                        an informational OperationOutcome
``GET /Observation/<id>``               a finding, a finding not assessed, the severity      ``Observation.r``
``GET /Provenance/<id>``, ``?target=``  who made a result (the model's Device), from what    ``Provenance.r/s``
``GET /Device/<id>``                    the model (name, version, weights' sha256)           ``Device.r``
``GET /Binary/heatmap-<job>-<n>``       a positive finding's heatmap (PNG, or FHIR Binary)   ``Binary.r``
``GET /AuditEvent/<id>``, ``?...``      the audit trail, for the compliance role             ``AuditEvent.r/s``
``GET /$audit-export?...``              the audit trail as NDJSON, Bundle or CSV             ``AuditEvent.rs``
``GET /metadata``                       CapabilityStatement generated from these routes      (open)
``GET /.well-known/smart-configuration``  SMART discovery: token endpoint, algorithms          (open)
======================================  ===================================================  ========================

Access control (`security`): with it on, a request without a valid bearer token is ``401`` and one whose token
lacks the scope is ``403``, both an OperationOutcome with ``WWW-Authenticate`` and both audited. Auditing: every
read and search of Tasks, DiagnosticReports, Observations, Provenances and AuditEvents writes an audit record
naming the client, its address and the patient (one per patient for a search); orders are audited by the store
in the transaction that stores them, attributed to the request's client. The AI-generated resources carry the
``AIAST`` security label and reference the model's Device (`mapping`).

``$audit-export`` (radtriage's operation, ``{RADTRIAGE_FHIR_BASE}/OperationDefinition/audit-export``) takes
``format`` (``ndjson`` default, ``bundle``, ``csv``), ``start`` and ``end`` (FHIR date or dateTime with a zone,
both inclusive), ``patient``, ``action`` (C R U D E), ``kind`` (a radtriage audit event code), ``client`` and
``outcome`` (0 4 8 12). The body is the export of `radtriage.compliance.export` (records plus chain proof);
headers ``X-Audit-Chain-Head-Id`` and ``X-Audit-Chain-Head-Hash`` give the chain head it is proven against and
``X-Audit-Export-Record`` the id of the audit record of the export itself. A bad range or value is ``400``.

Wire rules: bodies are ``application/fhir+json`` (``application/json`` is accepted inbound); another
Content-Type is ``415``; a body that is not JSON is ``400``; every error is an OperationOutcome (`errors`),
including unknown routes (404) and methods (405) under the door's prefix. Searches are strict (an unknown
parameter is ``400``) unless the request carries ``Prefer: handling=lenient`` (R4 search 3.1.1.4.1), in which
case unknown parameters are ignored and left out of the ``self`` link (AuditEvent searches are always strict).
Paging: ``_count`` (default 20, at most 100) and ``_offset``.

Logging names job ids, error codes and route patterns only: never a body, a query string or a patient
reference.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, request, url_for
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from ..app.core.domain import ImagingOrder, Job, JobState, Priority, TriageResult
from ..app.core.errors import ErrorCode, TriageError
from ..app.core.service import TriageService
from ..compliance.audit import (
    AUDIT_EXPORTED,
    AUDIT_READ,
    RESULT_READ,
    AuditOutcome,
    AuditRecord,
    EventKind,
    current_audit_context,
)
from ..compliance.audit_store import AuditLog, AuditQueryError, StoredAuditEvent
from ..compliance.auth import AuthError
from ..compliance.export import ExportFormat, export_audit, filter_from_fhir_search
from ..compliance.flask_auth import refusal_response, require_scope, smart_configuration_view
from ..jsonwire import JsonBodyError, loads_capped
from . import inbound, mapping, terminology
from .capability import Operation, Route, SearchParam, Security, capability_statement
from .devices import ModelLookup
from .errors import RETRY_AFTER_SECONDS, http_outcome, operation_outcome
from .kept_resources import Accepted, entry_references, entry_response, keep, rewritten, with_resource_ids
from .resource_store import FhirResourceStore
from .security import ReadAuditor, Returned, access_control, authenticated, demand_scope, with_request_context

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]
View = Callable[..., Response]

FHIR_JSON: Final = "application/fhir+json"
#: Request media types read as FHIR JSON (``application/json+fhir`` is the DSTU2 name some clients still send).
ACCEPTED_BODY_TYPES: Final = frozenset({FHIR_JSON, "application/json", "application/json+fhir"})
_FORMAT_VALUES: Final = frozenset({"json", FHIR_JSON, "application/json", "application/json+fhir"})
MAX_BODY_BYTES: Final = 10 * 1024 * 1024
DEFAULT_COUNT: Final = 20
MAX_COUNT: Final = 100
#: Parameters every search accepts that are not search parameters (R4 search 3.1.1.5 and http 3.1.0.1.9).
_RESULT_PARAMS: Final = frozenset({"_count", "_offset", "_format", "_pretty"})
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
#: Job states in which a result exists (it is stored with the move to `scored`).
_STATES_WITH_RESULT: Final = frozenset({JobState.SCORED, JobState.PUBLISHING, JobState.COMPLETED, JobState.FAILED})
#: What a Provenance search's ``target`` may name: a resource the model authored (relative or absolute).
_PROVENANCE_TARGET = re.compile(r"(?:https?://\S+/)?(DiagnosticReport|Observation|Task)/([A-Za-z0-9\-.]{1,64})")
#: Entry types a transaction may hold, each needing its own create scope.
_TRANSACTION_TYPES: Final = ("ImagingStudy", "ServiceRequest")

AUDIT_EXPORT: Final = Operation("audit-export", f"{terminology.RADTRIAGE_FHIR_BASE}/OperationDefinition/audit-export")
#: Query parameters of ``$audit-export`` (see the module docstring).
EXPORT_FILTERS: Final = ("start", "end", "patient", "action", "kind", "client", "outcome")
EXPORT_PARAMS: Final = ("format", *EXPORT_FILTERS)
#: An export is written to a temporary file first (its chain head goes in a header, before the body); up to this
#: size it stays in memory.
_EXPORT_SPOOL_BYTES: Final = 8 * 1024 * 1024
_EXPORT_EXTENSIONS: Final = {ExportFormat.NDJSON: "ndjson", ExportFormat.BUNDLE: "json", ExportFormat.CSV: "csv"}

_SP = "http://hl7.org/fhir/SearchParameter"
SEARCH_PARAMS: Final[dict[str, tuple[SearchParam, ...]]] = {
    "Task": (
        SearchParam("based-on", "reference", f"{_SP}/Task-based-on", "ServiceRequest/<id> (or the bare id)"),
        SearchParam("status", "token", f"{_SP}/Task-status", "task-status code; comma-separated values are OR"),
        SearchParam("priority", "token", f"{_SP}/Task-priority", "routine | urgent | asap | stat"),
    ),
    "DiagnosticReport": (
        SearchParam(
            "based-on", "reference", f"{_SP}/DiagnosticReport-based-on", "ServiceRequest/<id> (or the bare id)"
        ),
        SearchParam(
            "subject",
            "reference",
            f"{_SP}/DiagnosticReport-subject",
            "Patient/<id> (or the bare id); subject:identifier=system|value for subjects given by identifier",
        ),
        SearchParam("status", "token", f"{_SP}/DiagnosticReport-status", "every report here is 'preliminary'"),
    ),
    "ServiceRequest": (
        SearchParam("identifier", "token", f"{_SP}/clinical-identifier", "system|value, or value in any system"),
        SearchParam("patient", "reference", f"{_SP}/clinical-patient", "Patient/<id> (or the bare id)"),
        SearchParam("subject", "reference", f"{_SP}/ServiceRequest-subject", "Patient/<id> (or the bare id)"),
    ),
    "Provenance": (
        SearchParam(
            "target",
            "reference",
            f"{_SP}/Provenance-target",
            "DiagnosticReport/<id>, Observation/<id> or Task/<id>: the Provenance of that result",
        ),
    ),
    "AuditEvent": (
        SearchParam("date", "date", f"{_SP}/AuditEvent-date", "recorded; prefixes eq ge gt le lt, repeatable"),
        SearchParam(
            "patient", "reference", f"{_SP}/AuditEvent-patient", "Patient/<id> (or the bare id) or system|value"
        ),
        SearchParam("action", "token", f"{_SP}/AuditEvent-action", "C | R | U | D | E"),
        SearchParam("subtype", "token", f"{_SP}/AuditEvent-subtype", "a radtriage audit event code, e.g. result-read"),
        SearchParam("agent", "reference", f"{_SP}/AuditEvent-agent", "the client id of the agent"),
        SearchParam("outcome", "token", f"{_SP}/AuditEvent-outcome", "0 | 4 | 8 | 12"),
    ),
}


def fhir_blueprint(
    service: TriageService,
    *,
    audit: AuditLog,
    find_model: ModelLookup,
    base_url: str | None = None,
    find_draft: Callable[[str], str | None] | None = None,
    receive_final_report: Callable[[Any], tuple[JsonObject, int]] | None = None,
    resources: FhirResourceStore | None = None,
    related: Sequence[str] = (),
) -> Blueprint:
    """The FHIR door over `service`.

    `audit` receives the records of reads and searches and serves AuditEvent; `find_model` resolves
    ``Device/<id>`` (`devices.models_from_results`); `base_url` fixes the base used in links (by default it is
    the request's). Access control is whatever the app installed (`flask_auth.install_access_control`).
    `find_draft` gives the draft report text to send for a job id (drafting mode "on"; `radtriage.monitoring`),
    and `receive_final_report` takes radiologists' final reports (``POST /DiagnosticReport``); without them
    reports carry no draft and the route does not exist. `resources` keeps the ServiceRequests and
    ImagingStudies that orders came as, served at ``ServiceRequest/<id>`` and ``ImagingStudy/<id>``; without it
    those routes do not exist. `related` are sentences about the service's other interfaces for the
    CapabilityStatement's documentation.
    """
    blueprint = Blueprint("fhir", __name__)
    prefixes: list[str] = []
    blueprint.record(lambda state: prefixes.append((state.url_prefix or "").rstrip("/")))
    auditor = ReadAuditor(audit)

    def fhir_base() -> str:
        if base_url:
            return base_url.rstrip("/")
        return url_for(".capabilities", _external=True).removesuffix("/metadata")

    def refusals_audited(kind: EventKind, resource_type: str) -> Callable[[View], View]:
        """Audit a read that fails (an unknown id is worth recording: someone looked for it)."""

        def decorate(view: View) -> View:
            @functools.wraps(view)
            def audited(**kwargs: str) -> Response:
                try:
                    return view(**kwargs)
                except TriageError as error:
                    auditor.refused_read(kind, resource_type, next(iter(kwargs.values()), ""), error)
                    raise

            return audited

        return decorate

    # ------------------------------------------------------------------ orders in

    def submit(order: ImagingOrder) -> tuple[JsonObject, Job, bool]:
        task, job, created = _submit(service, order)
        if not created:  # the answer is the existing Task as it is now: a read of its result
            patient_ref = service.order(job.order_id).patient_ref
            auditor.read(RESULT_READ, Returned(f"Task/{job.id}", patient_ref), request="create of a known order")
        return task, job, created

    def accept(order: ImagingOrder, request_json: Any = None, study_json: Any = None) -> Accepted:
        """Submit the order, then keep the ServiceRequest and ImagingStudy it came as under the ids its
        references use (see `_with_resource_ids`), so that ``basedOn`` points at a readable resource."""
        task, job, created = submit(order)
        stored = service.order(job.order_id)
        if resources is not None:
            for resource, reference in (
                (request_json, stored.service_request_ref),
                (study_json, stored.imaging_study_ref),
            ):
                keep(resources, resource, reference, stored)
        return Accepted(task, job, created, stored)

    def post_imaging_study() -> Response:
        """Accepts the ImagingStudy as a triage order and returns its Task; the study is kept (ImagingStudy/<id>)."""
        body = _read_json_body()
        order = with_resource_ids(inbound.order_from_imaging_study(body), resources, study=True)
        accepted = accept(order, study_json=body)
        return _created_or_existing(accepted.task, accepted.job, accepted.created, fhir_base())

    def post_service_request() -> Response:
        """Accepts the ServiceRequest (with the study UID in its identifier or supportingInfo) as a triage order;
        returns its Task, whose ``basedOn`` is the kept ServiceRequest."""
        body = _read_json_body()
        order = with_resource_ids(inbound.order_from_service_request(body), resources, request=True)
        accepted = accept(order, request_json=body)
        return _created_or_existing(accepted.task, accepted.job, accepted.created, fhir_base())

    def post_transaction() -> Response:
        """Transaction of ServiceRequest and ImagingStudy entries; each entry's response names its own resource,
        and an informational issue names the Task of its order."""
        body = _read_json_body()
        for resource_type in _entry_types(body):  # authorisation before any other look at the content
            demand_scope(f"system/{resource_type}.c")
        found = inbound.orders_from_transaction(body)  # checks every entry before anything is stored
        entries = body["entry"]
        orders = [
            with_resource_ids(
                item.order, resources, request=item.request_index is not None, study=item.study_index is not None
            )
            for item in found
        ]
        # R4 http 3.1.0.11.2: references to an entry's fullUrl become references to the resource as stored.
        new_names = entry_references(entries, found, orders)
        responses: dict[int, mapping.EntryResponse] = {}
        for item, order in zip(found, orders, strict=True):
            request_json, study_json = (
                rewritten(entries[index]["resource"], new_names) if index is not None else None
                for index in (item.request_index, item.study_index)
            )
            accepted = accept(order, request_json, study_json)
            for index in item.entry_indexes:
                responses[index] = entry_response(resources, accepted, index, item)
        bundle = mapping.transaction_response([responses[i] for i in sorted(responses)], base_url=fhir_base())
        return _fhir_response(bundle)

    # ------------------------------------------------------------------ reads of results

    @refusals_audited(RESULT_READ, "Task")
    def read_task(task_id: str) -> Response:
        """The Task of one order (id = job id)."""
        job = service.job(_checked_id(task_id, "Task"))
        order = service.order(job.order_id)
        task = _task(service, job, order=order)
        auditor.read(RESULT_READ, Returned(f"Task/{job.id}", order.patient_ref))
        return _fhir_response(task)

    def search_tasks() -> Response:
        """Tasks, most urgent first, then oldest first."""
        args = _search_args("Task")
        states = _task_states(args.get("status", []))
        priorities = _priorities(args.get("priority", []))
        count, offset = _paging()
        jobs: list[Job] = []
        total = 0
        based_on = _single_reference(args.get("based-on", []), "based-on", "ServiceRequest")
        if based_on is not None:
            # One order per ServiceRequest: its Task, if it passes the other filters.
            jobs = [
                job
                for job in [_job_based_on(service, resources, based_on)]
                if job is not None
                and (states is None or job.state in states)
                and (priorities is None or job.priority in priorities)
            ]
            total = len(jobs)
            jobs = jobs[offset:]
        elif (states is None or states) and (priorities is None or priorities):
            # A filter that no job can satisfy matches nothing; the store would read an empty list as "any".
            jobs, total = service.store.list_jobs(
                states=sorted(states) if states else None,
                priorities=priorities,
                offset=offset,
                limit=max(count, 1),
            )
        tasks, returned = [], []
        for job in jobs[:count]:
            order = service.order(job.order_id)
            tasks.append(_task(service, job, order=order))
            returned.append(Returned(f"Task/{job.id}", order.patient_ref))
        auditor.search(RESULT_READ, returned)
        return _searchset("Task", tasks, total, args, count, offset, fhir_base())

    @refusals_audited(RESULT_READ, "DiagnosticReport")
    def read_report(report_id: str) -> Response:
        """The preliminary DiagnosticReport of a scored job (id = job id)."""
        job, order, result = _scored(service, _checked_id(report_id, "DiagnosticReport"), "DiagnosticReport")
        report = mapping.diagnostic_report(
            order,
            job,
            result,
            draft=find_draft(job.id) if find_draft else None,
            heatmap_labels=service.store.heatmap_labels(job.id),
            base_url=fhir_base(),
        )
        auditor.read(RESULT_READ, Returned(f"DiagnosticReport/{job.id}", order.patient_ref))
        return _fhir_response(report)

    def search_reports() -> Response:
        """DiagnosticReports, newest first."""
        args = _search_args("DiagnosticReport")
        service_request_ref = _single_reference(args.get("based-on", []), "based-on", "ServiceRequest")
        patient_ref = _single_reference(args.get("subject", []), "subject", "Patient")
        if identifier := _single_value(args.get("subject:identifier", []), "subject:identifier"):
            if patient_ref is not None and patient_ref != identifier:
                raise TriageError(ErrorCode.INVALID_INPUT, "subject and subject:identifier disagree")
            patient_ref = identifier
        status_ok = _report_status_matches(args.get("status", []))
        count, offset = _paging()
        results: list[TriageResult] = []
        total = 0
        if status_ok:
            results, total = service.store.list_results(
                service_request_ref=service_request_ref,
                patient_ref=patient_ref,
                offset=offset,
                limit=max(count, 1),
            )
        resources, returned = [], []
        for result in results[:count]:
            job = service.job(result.job_id)
            order = service.order(job.order_id)
            draft = find_draft(job.id) if find_draft else None
            heatmaps = service.store.heatmap_labels(job.id)
            resources.append(
                mapping.diagnostic_report(
                    order, job, result, draft=draft, heatmap_labels=heatmaps, base_url=fhir_base()
                )
            )
            returned.append(Returned(f"DiagnosticReport/{job.id}", order.patient_ref))
        auditor.search(RESULT_READ, returned, searched_patient=patient_ref)
        return _searchset("DiagnosticReport", resources, total, args, count, offset, fhir_base())

    @refusals_audited(RESULT_READ, "Observation")
    def read_observation(observation_id: str) -> Response:
        """One finding of a scored job: id ``<job id>-<n>``, n counting from 1 in the model's label order."""
        parsed = mapping.parse_observation_id(_checked_id(observation_id, "Observation"))
        if parsed is None:
            raise TriageError(ErrorCode.NOT_FOUND, "no Observation with this id")
        job_id, n = parsed
        job, order, result = _scored(service, job_id, "Observation")
        resource = mapping.observation(order, job, result, n)
        if resource is None:
            raise TriageError(ErrorCode.NOT_FOUND, "no Observation with this id")
        auditor.read(RESULT_READ, Returned(f"Observation/{resource['id']}", order.patient_ref))
        return _fhir_response(resource)

    @refusals_audited(RESULT_READ, "Binary")
    def read_binary(binary_id: str) -> Response:
        """A heatmap overlay (``heatmap-<job id>-<n>``): the PNG itself when the client accepts image/png,
        else a FHIR Binary with the PNG in base64."""
        parsed = mapping.parse_heatmap_binary_id(_checked_id(binary_id, "Binary"))
        if parsed is None:
            raise TriageError(ErrorCode.NOT_FOUND, "no Binary with this id")
        job_id, n = parsed
        job, order, _result = _scored(service, job_id, "Binary")
        labels = service.store.heatmap_labels(job.id)
        png = service.store.heatmap_png(job.id, labels[n - 1]) if n <= len(labels) else None
        if png is None:
            raise TriageError(ErrorCode.NOT_FOUND, "no Binary with this id")
        auditor.read(RESULT_READ, Returned(f"Binary/{binary_id}", order.patient_ref))
        if request.accept_mimetypes.best_match([FHIR_JSON, "application/json", "image/png"]) == "image/png":
            return Response(png, status=200, mimetype="image/png")
        return _fhir_response(mapping.heatmap_binary(job.id, n, png, f"DiagnosticReport/{job.id}"))

    def post_final_report() -> Response:
        """Receives a radiologist's final DiagnosticReport for continuous evaluation (not stored as a resource)."""
        assert receive_final_report is not None  # the route exists only with it
        outcome, status = receive_final_report(_read_json_body())
        return _fhir_response(outcome, status)

    # ------------------------------------------------------------------ the order resources, as the EHR sent them

    def read_kept(resource_type: str, resource_id: str) -> Response:
        kept = resources.get(resource_type, _checked_id(resource_id, resource_type)) if resources else None
        if kept is None:
            raise TriageError(ErrorCode.NOT_FOUND, f"no {resource_type} with this id")
        auditor.read(RESULT_READ, Returned(f"{resource_type}/{kept.id}", kept.patient_ref))
        return _fhir_response(kept.resource)

    @refusals_audited(RESULT_READ, "ServiceRequest")
    def read_service_request(request_id: str) -> Response:
        """A ServiceRequest an order came as, as the EHR sent it (the id is the EHR's, or the one assigned here)."""
        return read_kept("ServiceRequest", request_id)

    @refusals_audited(RESULT_READ, "ImagingStudy")
    def read_imaging_study(study_id: str) -> Response:
        """An ImagingStudy an order came as, as the EHR sent it (references to Bundle entries resolved)."""
        return read_kept("ImagingStudy", study_id)

    def search_service_requests() -> Response:
        """ServiceRequests kept here, newest first, by identifier and patient."""
        assert resources is not None  # the route exists only with it
        args = _search_args("ServiceRequest")
        identifier = _single_value(args.get("identifier", []), "identifier")
        token = None
        if identifier is not None:
            system, bar, value = identifier.rpartition("|")
            token = (system if bar else None, value)
        patient_ref = _single_reference(args.get("patient", []), "patient", "Patient")
        subject_ref = _single_reference(args.get("subject", []), "subject", "Patient")
        if patient_ref and subject_ref and patient_ref != subject_ref:
            raise TriageError(ErrorCode.INVALID_INPUT, "patient and subject disagree")
        count, offset = _paging()
        found, total = resources.search(
            "ServiceRequest",
            identifier=token,
            patient_ref=patient_ref or subject_ref,
            offset=offset,
            limit=max(count, 1),
        )
        shown = found[:count]
        auditor.search(
            RESULT_READ,
            [Returned(f"ServiceRequest/{k.id}", k.patient_ref) for k in shown],
            searched_patient=patient_ref or subject_ref,
        )
        return _searchset("ServiceRequest", [k.resource for k in shown], total, args, count, offset, fhir_base())

    # ------------------------------------------------------------------ provenance of AI output

    @refusals_audited(RESULT_READ, "Provenance")
    def read_provenance(provenance_id: str) -> Response:
        """The Provenance of a result (id = job id): the model's Device as author, the study and order as sources."""
        job, order, result = _scored(service, _checked_id(provenance_id, "Provenance"), "Provenance")
        resource = mapping.provenance(order, job, result)
        auditor.read(RESULT_READ, Returned(f"Provenance/{job.id}", order.patient_ref))
        return _fhir_response(resource)

    def search_provenance() -> Response:
        """Provenances, newest result first; ``target`` selects the one of a report, Observation or Task."""
        args = _search_args("Provenance")
        target = _single_value(args.get("target", []), "target")
        count, offset = _paging()
        found: list[tuple[ImagingOrder, Job, TriageResult]] = []
        total = 0
        if target is not None:
            scored = _provenance_target(service, target)
            total = 1 if scored else 0
            found = [scored] if scored and offset == 0 and count > 0 else []
        else:
            results, total = service.store.list_results(offset=offset, limit=max(count, 1))
            for result in results[:count]:
                job = service.job(result.job_id)
                found.append((service.order(job.order_id), job, result))
        resources = [mapping.provenance(order, job, result) for order, job, result in found]
        auditor.search(RESULT_READ, [Returned(f"Provenance/{job.id}", order.patient_ref) for order, job, _ in found])
        return _searchset("Provenance", resources, total, args, count, offset, fhir_base())

    def read_device(device_id: str) -> Response:
        """The model as a Device: name, version and the sha256 of its weights (id ``model-<sha256 prefix>``)."""
        model = find_model(_checked_id(device_id, "Device"))
        if model is None:
            raise TriageError(ErrorCode.NOT_FOUND, "no Device with this id")
        return _fhir_response(mapping.device(model))

    # ------------------------------------------------------------------ the audit trail (compliance role)

    @refusals_audited(AUDIT_READ, "AuditEvent")
    def read_audit_event(event_id: str) -> Response:
        """One audit record, as the FHIR AuditEvent it was stored as."""
        event = audit.get(int(event_id)) if event_id.isdigit() and len(event_id) <= 18 else None
        if event is None:
            raise TriageError(ErrorCode.NOT_FOUND, "no AuditEvent with this id")
        auditor.read(AUDIT_READ, Returned(f"AuditEvent/{event.id}", event.patient_ref))
        return _fhir_response(event.resource())

    def search_audit_events() -> Response:
        """Audit records, newest first, by date range, patient, action, subtype, agent (client) and outcome."""
        known = {p.name for p in SEARCH_PARAMS["AuditEvent"]} | _RESULT_PARAMS
        if any(name not in known for name in request.args):  # strict: a search must never return more than asked
            raise AuditQueryError(
                "unknown search parameter for AuditEvent; supported: "
                + ", ".join(sorted(p.name for p in SEARCH_PARAMS["AuditEvent"]))
                + ", _count, _offset"
            )
        args = {
            name: [v for v in request.args.getlist(name) if v.strip()]
            for name in request.args
            if not name.startswith("_")
        }
        args = {name: values for name, values in args.items() if values}
        if "patient" in args:
            args["patient"] = [_patient_search_value(v) for v in args["patient"]]
        if not any(v.startswith(("lt", "le")) for v in args.get("date", [])):
            # Pin the search to the trail as it is now, so that paging (newest first, by offset) does not shift
            # as records arrive, such as the one this very search writes. The page links carry the pin.
            args.setdefault("date", []).append("lt" + datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        audit_filter = filter_from_fhir_search(args)
        count, offset = _paging()
        events, total = audit.search(audit_filter, offset=offset, limit=max(count, 1))
        shown: list[StoredAuditEvent] = events[:count]
        auditor.search(
            AUDIT_READ,
            [Returned(f"AuditEvent/{e.id}", e.patient_ref) for e in shown],
            searched_patient=audit_filter.patient,
            one_record=True,  # one per search: a record per patient would flood the trail it is reading
        )
        return _searchset("AuditEvent", [e.resource() for e in shown], total, args, count, offset, fhir_base())

    def export_audit_trail() -> Response:
        """$audit-export: the audit trail as FHIR NDJSON, a Bundle or CSV, with the proof of its chain head."""
        export_format, filters = _export_values(audit)
        spool = tempfile.SpooledTemporaryFile(max_size=_EXPORT_SPOOL_BYTES, mode="w+", encoding="utf-8")
        try:
            # export_audit audits the export, or its refusal (a bad range), itself.
            summary = export_audit(audit, spool, fmt=export_format, context=current_audit_context(), **filters)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise

        def chunks() -> Iterator[str]:
            while data := spool.read(64 * 1024):
                yield data

        response = Response(
            chunks(),
            content_type=f"{summary.format.media_type}; charset=utf-8",
            headers={
                "X-Audit-Chain-Head-Id": str(summary.head.id),
                "X-Audit-Chain-Head-Hash": summary.head.hash,
                "X-Audit-Export-Record": str(summary.audit_record_id),
                "Content-Disposition": (
                    f'attachment; filename="audit-{summary.head.id}.{_EXPORT_EXTENSIONS[summary.format]}"'
                ),
                "Cache-Control": "no-store",
            },
        )
        response.call_on_close(spool.close)
        return response

    # ------------------------------------------------------------------ discovery (open)

    def capabilities() -> Response:
        """This CapabilityStatement."""
        prefix = _matching_prefix(prefixes) or ""
        routes = [
            Route(
                path=rule.rule.removeprefix(prefix) or "/",
                methods=frozenset(rule.methods or ()),
                documentation=_first_line(current_app.view_functions[rule.endpoint].__doc__),
            )
            for rule in current_app.url_map.iter_rules()
            if rule.endpoint.startswith(f"{request.blueprint}.") and rule.rule.startswith(prefix)
        ]
        access = access_control()
        security = Security(
            token_url=access.token_url if access is not None else None,
            smart_configuration_url=f"{fhir_base()}/.well-known/smart-configuration",
        )
        statement = capability_statement(
            routes,
            search_params=SEARCH_PARAMS,
            base_url=fhir_base(),
            operations={AUDIT_EXPORT.name: AUDIT_EXPORT},
            security=security,
            related=related,
        )
        return _fhir_response(statement)

    def smart_configuration() -> Response:
        """SMART App Launch 2.x discovery (``.well-known/smart-configuration``): token endpoint, algorithms, scopes."""
        return smart_configuration_view()

    # ------------------------------------------------------------------ routing

    #: (rule, view, method, the SMART scope it needs: None = open, "" = per transaction entry, see above)
    routes: list[tuple[str, Callable[..., Response], str, str | None]] = [
        ("/", post_transaction, "POST", ""),
        ("/ImagingStudy", post_imaging_study, "POST", "system/ImagingStudy.c"),
        ("/ServiceRequest", post_service_request, "POST", "system/ServiceRequest.c"),
        ("/Task", search_tasks, "GET", "system/Task.s"),
        ("/Task/<task_id>", read_task, "GET", "system/Task.r"),
        ("/DiagnosticReport", search_reports, "GET", "system/DiagnosticReport.s"),
        ("/DiagnosticReport/<report_id>", read_report, "GET", "system/DiagnosticReport.r"),
        ("/Observation/<observation_id>", read_observation, "GET", "system/Observation.r"),
        ("/Provenance", search_provenance, "GET", "system/Provenance.s"),
        ("/Provenance/<provenance_id>", read_provenance, "GET", "system/Provenance.r"),
        ("/Device/<device_id>", read_device, "GET", "system/Device.r"),
        ("/Binary/<binary_id>", read_binary, "GET", "system/Binary.r"),
        ("/AuditEvent", search_audit_events, "GET", "system/AuditEvent.s"),
        ("/AuditEvent/<event_id>", read_audit_event, "GET", "system/AuditEvent.r"),
        ("/$audit-export", export_audit_trail, "GET", "system/AuditEvent.rs"),
        ("/metadata", capabilities, "GET", None),
        ("/.well-known/smart-configuration", smart_configuration, "GET", None),
    ]
    if receive_final_report is not None:
        routes.append(("/DiagnosticReport", post_final_report, "POST", "system/DiagnosticReport.c"))
    if resources is not None:
        routes += [
            ("/ServiceRequest", search_service_requests, "GET", "system/ServiceRequest.s"),
            ("/ServiceRequest/<request_id>", read_service_request, "GET", "system/ServiceRequest.r"),
            ("/ImagingStudy/<study_id>", read_imaging_study, "GET", "system/ImagingStudy.r"),
        ]
    for rule, view, method, scope in routes:
        guarded = view
        if scope is not None:
            guarded = with_request_context(guarded)
        if view not in (export_audit_trail, smart_configuration, read_binary):  # those choose their own media type
            guarded = _negotiated(guarded)
        if scope == "":
            guarded = authenticated(guarded)
        elif scope is not None:
            guarded = require_scope(scope)(guarded)
        blueprint.add_url_rule(rule, view.__name__, guarded, methods=[method], strict_slashes=False)

    # ------------------------------------------------------------------ errors: always an OperationOutcome

    @blueprint.errorhandler(AuthError)
    def auth_error(error: AuthError) -> Response:
        return refusal_response(error)  # 401/403 with WWW-Authenticate; already audited by AccessControl

    @blueprint.errorhandler(TriageError)
    def triage_error(error: TriageError) -> Response:
        log.info("FHIR request refused: %s at %s", error.code.value, error.location or "-")
        body, status = operation_outcome(error)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
        return _fhir_response(body, status, headers)

    @blueprint.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return _http_error_response(error)

    @blueprint.app_errorhandler(HTTPException)
    def routing_error(error: HTTPException) -> Response | HTTPException:
        # Routing fails before Flask knows the blueprint, so 404 and 405 under the prefix arrive here.
        if _matching_prefix(prefixes) is None:
            return error
        return _http_error_response(error)

    @blueprint.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        # The message may quote SQL parameters or request values; the log gets the type and the frames only.
        log.error(
            "unexpected %s in FHIR %s %s\n%s",
            type(error).__name__,
            request.method,
            request.url_rule.rule if request.url_rule else "-",
            "".join(traceback.format_tb(error.__traceback__)),
        )
        if _database_unreachable(error):
            # The database is unreachable (issue 15, docs/operations.md): nothing was stored; the client may
            # send the same request again later, and an order sent again is not duplicated.
            outage = TriageError(ErrorCode.INTERNAL, "the service cannot store or read data now; try again later")
            body, _ = operation_outcome(outage)
            return _fhir_response(body, 503, {"Retry-After": str(RETRY_AFTER_SECONDS)})
        body, status = operation_outcome(TriageError(ErrorCode.INTERNAL))
        return _fhir_response(body, status)

    return blueprint


# ====================================================================================== helpers


def _scored(service: TriageService, job_id: str, resource_type: str) -> tuple[Job, ImagingOrder, TriageResult]:
    """The job, order and result behind a result resource; NOT_FOUND until the study is scored."""
    job = service.job(job_id)
    result = service.result(job.id)
    if result is None:
        raise TriageError(ErrorCode.NOT_FOUND, f"no {resource_type} with this id (the study is not scored yet)")
    return job, service.order(job.order_id), result


def _provenance_target(service: TriageService, target: str) -> tuple[ImagingOrder, Job, TriageResult] | None:
    """The scored job whose Provenance has `target` among its targets, or None."""
    match = _PROVENANCE_TARGET.fullmatch(target)
    if match is None:
        raise TriageError(
            ErrorCode.INVALID_INPUT,
            "target must be DiagnosticReport/<id>, Observation/<id> or Task/<id>",
            location="target",
        )
    resource_type, resource_id = match.groups()
    job_id = resource_id
    if resource_type == "Observation":
        parsed = mapping.parse_observation_id(resource_id)
        if parsed is None:
            return None
        job_id = parsed[0]
    try:
        job, order, result = _scored(service, job_id, resource_type)
    except TriageError as error:
        if error.code is ErrorCode.NOT_FOUND:
            return None
        raise
    if f"{resource_type}/{resource_id}" not in mapping.provenance_targets(job, result):
        return None
    return order, job, result


def _job_based_on(service: TriageService, resources: FhirResourceStore | None, reference: str) -> Job | None:
    """The job of the order that came as the ServiceRequest `reference` names (``ServiceRequest/<id>``)."""
    resource_type, _, resource_id = reference.partition("/")
    kept = resources.get(resource_type, resource_id) if resources and resource_type == "ServiceRequest" else None
    return service.store.job_for_order(kept.order_id) if kept is not None else None


def _entry_types(body: Any) -> list[str]:
    """The resource types among a transaction's entries that need a create scope (read leniently)."""
    entries = body.get("entry") if isinstance(body, dict) else None
    found = {
        entry["resource"].get("resourceType")
        for entry in entries or []
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
    }
    return [t for t in _TRANSACTION_TYPES if t in found]


def _patient_search_value(value: str) -> str:
    """A patient search value as audit records hold it: a bare id becomes ``Patient/<id>``."""
    value = value.strip()
    return f"Patient/{value}" if _FHIR_ID.fullmatch(value) else value


def _export_values(audit: AuditLog) -> tuple[str, dict[str, str | None]]:
    """The $audit-export format and filters; an unknown or repeated parameter is refused (400), and audited.

    The refusal names no parameter the client made up: error locations are logged, and a name can be anything.
    """
    problem: str | None = None
    location: str | None = None
    for name in request.args:
        if name not in EXPORT_PARAMS:
            problem, location = "unknown $audit-export parameter", None
        elif len(request.args.getlist(name)) > 1:
            problem, location = "each $audit-export parameter may be given once", name
    if problem is not None:
        audit.record(
            AuditRecord.in_context(
                AUDIT_EXPORTED,
                outcome=AuditOutcome.MINOR_FAILURE,
                outcome_description=ErrorCode.INVALID_INPUT.value,
                purpose_of_use=_export_purpose(),
            )
        )
        raise AuditQueryError(problem, location=location)
    filters: dict[str, str | None] = {name: request.args.get(name) or None for name in EXPORT_FILTERS}
    if filters["patient"]:
        filters["patient"] = _patient_search_value(filters["patient"])
    return request.args.get("format") or ExportFormat.NDJSON.value, filters


def _export_purpose() -> str:
    """The purpose of use of an export: the client's, else health compliance (as `export_audit` records it)."""
    context = current_audit_context()
    return (context.purpose_of_use if context else None) or "HCOMPL"


def _submit(service: TriageService, order: ImagingOrder) -> tuple[JsonObject, Job, bool]:
    stored, job, created = service.submit_order(order)
    log.info("FHIR order %s: job %s", "accepted" if created else "already known", job.id)
    return _task(service, job, order=stored), job, created


def _task(service: TriageService, job: Job, *, order: ImagingOrder | None = None) -> JsonObject:
    result = service.result(job.id) if job.state in _STATES_WITH_RESULT else None
    return mapping.task_resource(job, order or service.order(job.order_id), result)


def _created_or_existing(task: JsonObject, job: Job, created: bool, base: str) -> Response:
    """R4 http 3.1.0.4 (create): 201 with Location; a repeat of a known order is 200 with the same Task."""
    headers = {"Location": f"{base}/Task/{job.id}"}
    return _fhir_response(task, 201 if created else 200, headers)


def _negotiated(view: Callable[..., Response]) -> Callable[..., Response]:
    """Refuse requests whose Accept or _format asks for something other than FHIR JSON (406)."""

    def negotiated(**kwargs: Any) -> Response:
        requested_format = request.args.get("_format")
        if requested_format is not None and requested_format.split(";")[0].strip() not in _FORMAT_VALUES:
            return _http_error_response(None, 406, "only JSON is served (_format=json or application/fhir+json)")
        if (
            request.headers.get("Accept")
            and request.accept_mimetypes.best_match([FHIR_JSON, "application/json", "application/json+fhir"]) is None
        ):
            return _http_error_response(None, 406, "only application/fhir+json is served")
        return view(**kwargs)

    negotiated.__name__ = view.__name__
    negotiated.__doc__ = view.__doc__
    return negotiated


def _read_json_body() -> Any:
    """The request's JSON, after the media type and size checks (R4 http 3.1.0.1.9)."""
    if request.mimetype not in ACCEPTED_BODY_TYPES:
        raise _HttpProblem(415, "send the resource as application/fhir+json")
    charset = request.mimetype_params.get("charset")
    if charset is not None and charset.lower().replace("-", "") != "utf8":
        raise _HttpProblem(415, "FHIR JSON is UTF-8; other charsets are not accepted")
    # Werkzeug stops reading past this limit, also for chunked bodies that announce no length (413).
    request.max_content_length = MAX_BODY_BYTES
    try:
        # Nesting is capped before the parser runs (it recurses per level); its messages are fixed texts.
        return loads_capped(request.get_data(cache=False))
    except JsonBodyError as error:
        raise TriageError(ErrorCode.INVALID_INPUT, str(error)) from None


class _HttpProblem(HTTPException):
    """An HTTP-level refusal with a fixed description (no request data)."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code


def _http_error_response(error: HTTPException | None, code: int | None = None, text: str | None = None) -> Response:
    status = code or (error.code if error is not None and error.code else 500)
    description = text or (error.description if error is not None and error.description else "HTTP error")
    if status == 404 and not isinstance(error, _HttpProblem):
        description = "no such FHIR endpoint or resource on this server"
    body, status = http_outcome(status, description)
    headers = {}
    if error is not None and status == 405:
        allow = dict(error.get_headers()).get("Allow")
        if allow:
            headers["Allow"] = allow
    return _fhir_response(body, status, headers)


def _database_unreachable(error: Exception) -> bool:
    """The database could not be reached (no connection, or the connection dropped), as opposed to a statement
    that failed on a working connection (a bug: 500)."""
    return isinstance(error, OperationalError | InterfaceError) and (
        error.connection_invalidated or error.statement is None
    )


def _fhir_response(body: JsonObject, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    pretty = request.args.get("_pretty") == "true"
    text = json.dumps(body, ensure_ascii=False, indent=2 if pretty else None, separators=None if pretty else (",", ":"))
    return Response(text, status=status, headers=headers, content_type=f"{FHIR_JSON}; charset=utf-8")


def _matching_prefix(prefixes: Sequence[str]) -> str | None:
    for prefix in sorted(prefixes, key=len, reverse=True):
        if request.path == prefix or request.path.startswith(prefix + "/"):
            return prefix
    return None


def _first_line(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split()).replace("``", "")


def _checked_id(value: str, resource_type: str) -> str:
    if not _FHIR_ID.fullmatch(value):
        raise TriageError(ErrorCode.NOT_FOUND, f"no {resource_type} with this id")
    return value


# ---------------------------------------------------------------------------------- search


def _search_args(resource_type: str) -> dict[str, list[str]]:
    """The search's parameters with their non-empty values; unknown names are refused unless lenient."""
    known = {p.name for p in SEARCH_PARAMS[resource_type]} | _RESULT_PARAMS
    if resource_type == "DiagnosticReport":
        known.add("subject:identifier")
    unknown = sorted(name for name in request.args if name not in known)
    lenient = "handling=lenient" in request.headers.get("Prefer", "").replace(" ", "")
    if unknown and not lenient:
        shown = ", ".join(n for n in unknown if re.fullmatch(r"[A-Za-z0-9_:.\-]{1,40}", n)) or "(unprintable)"
        raise TriageError(
            ErrorCode.INVALID_INPUT,
            f"unknown search parameter(s) for {resource_type}: {shown}; send 'Prefer: handling=lenient' to "
            "have them ignored",
        )
    return {
        name: [v for v in request.args.getlist(name) if v.strip()]
        for name in request.args
        if name in known and name not in _RESULT_PARAMS
    }


def _token_codes(values: Sequence[str], parameter: str, allowed: Sequence[str]) -> list[set[str]]:
    """One set of codes per occurrence of the parameter (occurrences AND, commas OR; R4 search 3.1.1.4.3)."""
    groups = []
    for value in values:
        codes = {part.strip().rpartition("|")[2] for part in value.split(",") if part.strip()}
        bad = codes - set(allowed)
        if bad:
            raise TriageError(ErrorCode.INVALID_INPUT, f"{parameter} must be one of: {', '.join(allowed)}")
        groups.append(codes)
    return groups


def _task_states(values: Sequence[str]) -> set[JobState] | None:
    """The job states the status filter allows; None when there is no filter."""
    groups = _token_codes(values, "status", terminology.TASK_STATUS_CODES)
    if not groups:
        return None
    states = set(JobState)
    for codes in groups:
        states &= {s for code in codes for s in mapping.job_states_for_task_status(code)}
    return states


def _priorities(values: Sequence[str]) -> list[Priority] | None:
    """The priorities the filter allows; None when there is no filter."""
    groups = _token_codes(values, "priority", [p.code for p in Priority])
    if not groups:
        return None
    allowed = set(Priority)
    for codes in groups:
        allowed &= {Priority.from_code(code) for code in codes}
    return sorted(allowed)


def _report_status_matches(values: Sequence[str]) -> bool:
    """Every report here is preliminary: a status filter matches all of them or none."""
    return all("preliminary" in codes for codes in _token_codes(values, "status", terminology.REPORT_STATUS_CODES))


def _single_value(values: Sequence[str], parameter: str) -> str | None:
    if not values:
        return None
    if len(values) > 1 or "," in values[0]:
        raise TriageError(ErrorCode.INVALID_INPUT, f"{parameter} takes one value here")
    return values[0].strip()


def _single_reference(values: Sequence[str], parameter: str, resource_type: str) -> str | None:
    """A reference search value: ``Type/id`` or an absolute URL as given, a bare id as ``Type/id``."""
    value = _single_value(values, parameter)
    if value is None:
        return None
    return f"{resource_type}/{value}" if _FHIR_ID.fullmatch(value) else value


def _paging() -> tuple[int, int]:
    return (
        min(_non_negative_int("_count", DEFAULT_COUNT), MAX_COUNT),
        _non_negative_int("_offset", 0),
    )


def _non_negative_int(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or not raw.strip():
        return default
    if not raw.strip().isdigit():
        raise TriageError(ErrorCode.INVALID_INPUT, f"{name} must be a non-negative integer")
    return int(raw)


def _searchset(
    resource_type: str,
    resources: list[JsonObject],
    total: int,
    args: dict[str, list[str]],
    count: int,
    offset: int,
    base: str,
) -> Response:
    """A searchset Bundle with self/first/previous/next links rebuilt from the accepted parameters."""

    def page_url(page_offset: int) -> str:
        params = [(name, value) for name, values in sorted(args.items()) for value in values]
        params += [("_count", str(count)), ("_offset", str(page_offset))]
        return f"{base}/{resource_type}?{urlencode(params)}"

    links = {"self": page_url(offset), "first": page_url(0)}
    if offset > 0 and count > 0:
        links["previous"] = page_url(max(offset - count, 0))
    if count > 0 and offset + count < total:
        links["next"] = page_url(offset + count)
    return _fhir_response(mapping.searchset_bundle(resources, total=total, base_url=base, links=links))
