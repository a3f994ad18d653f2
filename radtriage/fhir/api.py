"""The FHIR REST door (FHIR R4 RESTful API, http.html) as a Flask blueprint.

The door maps and delegates: a body becomes an `ImagingOrder` through `mapping`, the order goes to
`TriageService.submit_order`, and reads come from the service and its store. No business rule lives here.

================================  ==========================================================================
``POST /ImagingStudy``            an order for that study → ``201`` + the Task (``Location: Task/<id>``);
``POST /ServiceRequest``          posting the same resource again → ``200`` + the same Task, nothing created
``POST /``                        transaction Bundle of both → transaction-response Bundle
``GET /Task/<id>``                the Task (status, priority, statusReason, output → DiagnosticReport)
``GET /Task?status=&priority=``   searchset Bundle
``GET /DiagnosticReport/<id>``    the preliminary report once the study is scored
``GET /DiagnosticReport?...``     ``based-on``, ``subject``, ``status``
``GET /Observation/<id>``         one finding
``GET /metadata``                 CapabilityStatement generated from these routes
================================  ==========================================================================

Wire rules: bodies are ``application/fhir+json`` (``application/json`` is accepted inbound); another
Content-Type is ``415``; a body that is not JSON is ``400``; every error is an OperationOutcome (`errors`),
including unknown routes (404) and methods (405) under the door's prefix. Searches are strict (an unknown
parameter is ``400``) unless the request carries ``Prefer: handling=lenient`` (R4 search 3.1.1.4.1), in which
case unknown parameters are ignored and left out of the ``self`` link. Paging: ``_count`` (default 20, at most
100) and ``_offset``.

Logging names job ids, error codes and route patterns only: never a body, a query string or a patient
reference.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, request, url_for
from werkzeug.exceptions import HTTPException

from ..app.core.domain import ImagingOrder, Job, JobState, Priority, TriageResult
from ..app.core.errors import ErrorCode, TriageError
from ..app.core.service import TriageService
from . import mapping, terminology
from .capability import Route, SearchParam, capability_statement
from .errors import RETRY_AFTER_SECONDS, http_outcome, operation_outcome

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]

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

_SP = "http://hl7.org/fhir/SearchParameter"
SEARCH_PARAMS: Final[dict[str, tuple[SearchParam, ...]]] = {
    "Task": (
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
}


def fhir_blueprint(service: TriageService, *, base_url: str | None = None) -> Blueprint:
    """The FHIR door over `service`. `base_url` fixes the base used in links; by default it is the request's."""
    blueprint = Blueprint("fhir", __name__)
    prefixes: list[str] = []
    blueprint.record(lambda state: prefixes.append((state.url_prefix or "").rstrip("/")))

    def fhir_base() -> str:
        if base_url:
            return base_url.rstrip("/")
        return url_for(".capabilities", _external=True).removesuffix("/metadata")

    # ------------------------------------------------------------------ orders in

    def post_imaging_study() -> Response:
        """Accepts the ImagingStudy as a triage order and returns its Task; the study itself is not stored."""
        order = mapping.order_from_imaging_study(_read_json_body())
        return _created_or_existing(*_submit(service, order), fhir_base())

    def post_service_request() -> Response:
        """Accepts the ServiceRequest (with the study UID in its identifier) as a triage order; returns its Task."""
        order = mapping.order_from_service_request(_read_json_body())
        return _created_or_existing(*_submit(service, order), fhir_base())

    def post_transaction() -> Response:
        """Transaction of ServiceRequest and ImagingStudy entries; every entry's response is its order's Task."""
        body = _read_json_body()
        found = mapping.orders_from_transaction(body)  # checks every entry before anything is stored
        responses: dict[int, mapping.EntryResponse] = {}
        for item in found:
            task, job, created = _submit(service, item.order)
            response = mapping.EntryResponse(
                status="201 Created" if created else "200 OK",
                location=f"Task/{job.id}",
                resource=task,
                last_modified=job.updated_at,
            )
            for index in item.entry_indexes:
                responses[index] = response
        bundle = mapping.transaction_response([responses[i] for i in sorted(responses)], base_url=fhir_base())
        return _fhir_response(bundle)

    # ------------------------------------------------------------------ reads

    def read_task(task_id: str) -> Response:
        """The Task of one order (id = job id)."""
        job = service.job(_checked_id(task_id, "Task"))
        return _fhir_response(_task(service, job))

    def search_tasks() -> Response:
        """Tasks, most urgent first, then oldest first."""
        args = _search_args("Task")
        states = _task_states(args.get("status", []))
        priorities = _priorities(args.get("priority", []))
        count, offset = _paging()
        jobs: list[Job] = []
        total = 0
        # A filter that no job can satisfy matches nothing; the store would read an empty list as "any".
        if (states is None or states) and (priorities is None or priorities):
            jobs, total = service.store.list_jobs(
                states=sorted(states) if states else None,
                priorities=priorities,
                offset=offset,
                limit=max(count, 1),
            )
        resources = [_task(service, job) for job in jobs[:count]]
        return _searchset("Task", resources, total, args, count, offset, fhir_base())

    def read_report(report_id: str) -> Response:
        """The preliminary DiagnosticReport of a scored job (id = job id)."""
        job = service.job(_checked_id(report_id, "DiagnosticReport"))
        result = service.result(job.id)
        if result is None:
            raise TriageError(ErrorCode.NOT_FOUND, "no DiagnosticReport with this id (the study is not scored yet)")
        return _fhir_response(mapping.diagnostic_report(service.order(job.order_id), job, result))

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
        resources = []
        for result in results[:count]:
            job = service.job(result.job_id)
            resources.append(mapping.diagnostic_report(service.order(job.order_id), job, result))
        return _searchset("DiagnosticReport", resources, total, args, count, offset, fhir_base())

    def read_observation(observation_id: str) -> Response:
        """One finding of a scored job: id ``<job id>-<n>``, n counting from 1 in the model's label order."""
        parsed = mapping.parse_observation_id(_checked_id(observation_id, "Observation"))
        if parsed is None:
            raise TriageError(ErrorCode.NOT_FOUND, "no Observation with this id")
        job_id, n = parsed
        job = service.job(job_id)
        result = service.result(job.id)
        resource = mapping.observation(service.order(job.order_id), job, result, n) if result else None
        if resource is None:
            raise TriageError(ErrorCode.NOT_FOUND, "no Observation with this id")
        return _fhir_response(resource)

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
        return _fhir_response(capability_statement(routes, search_params=SEARCH_PARAMS, base_url=fhir_base()))

    routes: Sequence[tuple[str, Callable[..., Response], list[str]]] = (
        ("/", post_transaction, ["POST"]),
        ("/ImagingStudy", post_imaging_study, ["POST"]),
        ("/ServiceRequest", post_service_request, ["POST"]),
        ("/Task", search_tasks, ["GET"]),
        ("/Task/<task_id>", read_task, ["GET"]),
        ("/DiagnosticReport", search_reports, ["GET"]),
        ("/DiagnosticReport/<report_id>", read_report, ["GET"]),
        ("/Observation/<observation_id>", read_observation, ["GET"]),
        ("/metadata", capabilities, ["GET"]),
    )
    for rule, view, methods in routes:
        blueprint.add_url_rule(rule, view.__name__, _negotiated(view), methods=methods, strict_slashes=False)

    # ------------------------------------------------------------------ errors: always an OperationOutcome

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
        body, status = operation_outcome(TriageError(ErrorCode.INTERNAL))
        return _fhir_response(body, status)

    return blueprint


# ====================================================================================== helpers


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
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw.decode("utf-8-sig"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError):
        # The parser's message quotes the body; the client gets a fixed text.
        raise TriageError(ErrorCode.INVALID_INPUT, "the body is not valid JSON") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity are Python extensions, not JSON


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
