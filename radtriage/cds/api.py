"""The CDS Hooks 2.0 door (https://cds-hooks.hl7.org/2.0/) as a Flask blueprint under ``/cds-services``.

=========================================  =====================================================================
route                                      what
=========================================  =====================================================================
``GET /cds-services``                      discovery: the services, their hooks and prefetch templates (open)
``POST /cds-services/<id>``                a hook call → ``{"cards": [...]}`` (`cards`)
``POST /cds-services/<id>/feedback``       what the clinician did with the cards → ``200``; recorded and audited
=========================================  =====================================================================

Trust: with access control on (setting ``auth_required``), every call and every feedback must carry the EHR's
signed JWT (`auth`; audience: the service's URL as discovery gives it, ``<base>/cds-services/<id>``); a missing,
forged, expired, replayed or foreign JWT is ``401`` and audited. With it off (development) nothing is checked.

Requests are read strictly: JSON (at most `MAX_BODY_BYTES`, nested at most 64 deep) with ``hook`` equal to the
service's hook, ``hookInstance``, a ``context`` with the hook's required fields (``patientId``; ``draftOrders``
Bundle for order-sign) and, when given, ``fhirServer`` as an absolute URL and ``fhirAuthorization`` with a
``Bearer`` ``access_token``. Anything else is ``400`` with ``{"error": ...}`` (a fixed text, no request data).

Data: the cards show this service's own results (the core's store). The EHR's Patient (from ``prefetch.patient``,
else read from ``fhirServer`` with ``fhirAuthorization``) gives the patient's identifiers, so that results of
orders that named the patient by identifier (HL7 PID-3) are found too; without either, ``Patient/<patientId>``
alone is matched. Every call that shows results leaves a result-read audit record per patient, naming the EHR.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ..app.core.service import TriageService
from ..compliance.audit import AUTHENTICATION_FAILED, CDS_FEEDBACK, RESULT_READ, AuditOutcome, AuditRecord
from ..compliance.audit_store import AuditLog
from ..jsonwire import JsonBodyError, loads_capped
from . import cards as c
from .auth import REFUSED_TEXT, CdsAuthError, CdsClientAuth, VerifiedCall
from .ehr_fhir import PatientFetcher, patient_refs
from .records import CdsRecords, Feedback, IssuedCard

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]
MAX_BODY_BYTES: Final = 1024 * 1024
_FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_HOOKS: Final = {c.PATIENT_VIEW_SERVICE: "patient-view", c.ORDER_SIGN_SERVICE: "order-sign"}
#: How many results per patient reference are read for the cards.
_RESULTS_PER_REF: Final = 20


class CdsRequestError(Exception):
    """A malformed request (400), or another status; the text is fixed, with no request data in it."""

    def __init__(self, text: str, status: int = 400) -> None:
        super().__init__(text)
        self.status = status


def cds_blueprint(
    service: TriageService,
    *,
    audit: AuditLog,
    records: CdsRecords,
    auth: CdsClientAuth | None,
    lookback_days: int,
    base_url: str | None = None,
    fetch_patient: PatientFetcher | None = None,
) -> Blueprint:
    """The CDS door over `service`. `auth` None means no JWT is checked (development only); `base_url` is the
    service's public base (the request's when None), used for JWT audiences and the study page links."""
    blueprint = Blueprint("cds", __name__)

    def public_base() -> str:
        return (base_url or request.url_root).rstrip("/")

    def caller(service_id: str) -> VerifiedCall | None:
        if auth is None:
            return None
        endpoint = f"{public_base()}/cds-services/{service_id}"
        try:
            return auth.verify(request.headers.get("Authorization"), endpoint)
        except CdsAuthError as error:
            audit.record(
                AuditRecord(
                    AUTHENTICATION_FAILED,
                    outcome=AuditOutcome.MINOR_FAILURE,
                    outcome_description="cds-client-refused",
                    peer_address=request.remote_addr,
                    details={"where": "CDS Hooks", "reason": error.reason[:200]},
                )
            )
            raise

    def discovery() -> Response:
        return jsonify(c.discovery())

    def call(service_id: str) -> Response:
        hook = _HOOKS.get(service_id)
        if hook is None:
            raise CdsRequestError("no such CDS service", 404)
        who = caller(service_id)
        body = _read_body()
        hook_instance, context = _checked_call(body, hook)
        patient_id = context["patientId"]
        refs = patient_refs(patient_id, body, fetch_patient, allowed=_fhir_servers(who, auth))
        recent = _recent_results(service, refs, lookback_days)
        study_url = f"{public_base()}/studies/{{job_id}}"
        if hook == "patient-view":
            issued = c.patient_view_cards(recent, study_url, public_base())
        else:
            drafts = _draft_orders(context["draftOrders"])
            issued = c.order_sign_cards(drafts, recent, study_url, public_base())
        _remember(records, issued, service_id, hook_instance, who, f"Patient/{patient_id}", recent)
        if recent:
            audit.record(
                AuditRecord(
                    RESULT_READ,
                    client_id=who.issuer if who else None,
                    peer_address=request.remote_addr,
                    entities=tuple(f"DiagnosticReport/{s.result.job_id}" for s in recent),
                    patient_ref=f"Patient/{patient_id}",
                    purpose_of_use="TREAT",
                    details={"service": service_id, "hook": hook, "cards": str(len(issued))},
                )
            )
        log.info("CDS %s: %d card(s)", service_id, len(issued))
        return jsonify({"cards": issued})

    def feedback(service_id: str) -> Response:
        if service_id not in _HOOKS:
            raise CdsRequestError("no such CDS service", 404)
        who = caller(service_id)
        entries = _checked_feedback(_read_body(), service_id, who.issuer if who else "")
        now = datetime.now(UTC)
        records.add_feedback(entries, now)
        for entry in entries:
            card = records.card(entry.card_uuid)
            audit.record(
                AuditRecord(
                    CDS_FEEDBACK,
                    client_id=who.issuer if who else None,
                    peer_address=request.remote_addr,
                    entities=(f"cds-card/{entry.card_uuid}",),
                    patient_ref=card.patient_ref if card else None,
                    details={"service": service_id, "outcome": entry.outcome, "known-card": str(card is not None)},
                )
            )
        return Response(status=200)

    blueprint.add_url_rule("", "discovery", discovery, methods=["GET"], strict_slashes=False)
    blueprint.add_url_rule("/<service_id>", "call", call, methods=["POST"])
    blueprint.add_url_rule("/<service_id>/feedback", "feedback", feedback, methods=["POST"])

    @blueprint.errorhandler(CdsRequestError)
    def bad_request(error: CdsRequestError) -> Response:
        return _error(str(error), error.status)

    @blueprint.errorhandler(CdsAuthError)
    def not_trusted(_refusal: CdsAuthError) -> Response:
        response = _error(REFUSED_TEXT, 401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="cds-services"'
        return response

    @blueprint.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return _error(error.name, error.code or 500)  # 405, 413 (over MAX_BODY_BYTES): a fixed text

    @blueprint.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        # The message may quote request values; the log gets the type only, the client a fixed text.
        log.error("unexpected %s in a CDS Hooks request", type(error).__name__)
        return _error("the CDS service failed; try again later", 500)

    return blueprint


# ====================================================================================== reading requests


def _read_body() -> Any:
    if request.mimetype != "application/json":
        raise CdsRequestError("send the request as application/json", 415)
    request.max_content_length = MAX_BODY_BYTES  # werkzeug answers 413 past it, unread
    try:
        return loads_capped(request.get_data(cache=False))
    except JsonBodyError as error:
        raise CdsRequestError(str(error)) from None


def _checked_call(body: Any, hook: str) -> tuple[str, JsonObject]:
    """(hookInstance, context) of a well-formed call of `hook` (CDS Hooks 2.0, HTTP Request)."""
    if not isinstance(body, dict):
        raise CdsRequestError("the request must be a JSON object")
    if body.get("hook") != hook:
        raise CdsRequestError(f"this service answers the {hook} hook")
    hook_instance = body.get("hookInstance")
    if not isinstance(hook_instance, str) or not hook_instance.strip() or len(hook_instance) > 64:
        raise CdsRequestError("hookInstance must be a string (a UUID)")
    context = body.get("context")
    if not isinstance(context, dict):
        raise CdsRequestError("context must be an object")
    if not isinstance(context.get("patientId"), str) or not _FHIR_ID.fullmatch(context["patientId"]):
        raise CdsRequestError("context.patientId must be a FHIR id")
    if not isinstance(context.get("userId"), str) or not context["userId"].strip():
        raise CdsRequestError("context.userId must be a reference such as Practitioner/123")
    if hook == "order-sign":
        draft = context.get("draftOrders")
        if not isinstance(draft, dict) or draft.get("resourceType") != "Bundle":
            raise CdsRequestError("context.draftOrders must be a FHIR Bundle")
    server = body.get("fhirServer")
    if server is not None and (not isinstance(server, str) or not re.fullmatch(r"https?://\S+", server)):
        raise CdsRequestError("fhirServer must be an absolute http(s) URL")
    authorization = body.get("fhirAuthorization")
    if authorization is not None:
        if server is None:
            raise CdsRequestError("fhirAuthorization is given without fhirServer")
        if (
            not isinstance(authorization, dict)
            or not isinstance(authorization.get("access_token"), str)
            or str(authorization.get("token_type", "")).lower() != "bearer"
        ):
            raise CdsRequestError("fhirAuthorization needs an access_token of token_type Bearer")
    if "prefetch" in body and not isinstance(body["prefetch"], dict):
        raise CdsRequestError("prefetch must be an object")
    return hook_instance, context


def _draft_orders(bundle: JsonObject) -> list[JsonObject]:
    """The ServiceRequests among the draft orders (other request types are not imaging orders)."""
    entries: list[Any] = bundle["entry"] if isinstance(bundle.get("entry"), list) else []
    resources = [e.get("resource") for e in entries if isinstance(e, dict)]
    return [r for r in resources if isinstance(r, dict) and r.get("resourceType") == "ServiceRequest"]


def _checked_feedback(body: Any, service_id: str, issuer: str) -> list[Feedback]:
    """The entries of a feedback request (CDS Hooks 2.0, Feedback), all checked before any is kept."""
    items = body.get("feedback") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items or len(items) > 100:
        raise CdsRequestError("feedback must be a list of 1 to 100 entries")
    entries = []
    for item in items:
        if not isinstance(item, dict):
            raise CdsRequestError("each feedback entry must be an object")
        card = item.get("card")
        outcome = item.get("outcome")
        if not isinstance(card, str) or not _is_uuid(card):
            raise CdsRequestError("feedback card must be the card's uuid")
        if outcome not in ("accepted", "overridden"):
            raise CdsRequestError("feedback outcome must be accepted or overridden")
        accepted = item.get("acceptedSuggestions", [])
        if not isinstance(accepted, list) or not all(
            isinstance(a, dict) and isinstance(a.get("id"), str) for a in accepted
        ):
            raise CdsRequestError("acceptedSuggestions must be a list of {id}")
        if outcome == "accepted" and item.get("overrideReason") is not None:
            raise CdsRequestError("overrideReason goes with the overridden outcome only")
        reason = item.get("overrideReason")
        if reason is not None and not isinstance(reason, dict):
            raise CdsRequestError("overrideReason must be an object")
        entries.append(
            Feedback(
                card_uuid=card,
                service_id=service_id,
                issuer=issuer,
                outcome=outcome,
                accepted_suggestions=tuple(str(a["id"])[:64] for a in accepted),
                override_reason=reason,
                outcome_timestamp=_timestamp(item.get("outcomeTimestamp")),
            )
        )
    return entries


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise CdsRequestError("outcomeTimestamp must be an ISO 8601 instant")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CdsRequestError("outcomeTimestamp must be an ISO 8601 instant") from None
    if moment.tzinfo is None:
        raise CdsRequestError("outcomeTimestamp needs a time zone")
    return moment.astimezone(UTC)


def _is_suggestion_id(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("id"), str)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# ====================================================================================== results and records


def _recent_results(service: TriageService, refs: Sequence[str], lookback_days: int) -> list[c.ScoredStudy]:
    since = datetime.now(UTC) - timedelta(days=lookback_days)
    found: dict[str, c.ScoredStudy] = {}
    for ref in refs:
        results, _ = service.store.list_results(patient_ref=ref, limit=_RESULTS_PER_REF)
        for result in results:
            if result.created_at is None or result.created_at < since or result.job_id in found:
                continue
            order = service.order(service.job(result.job_id).order_id)
            found[result.job_id] = c.ScoredStudy(order, result)
    return list(found.values())


def _remember(
    records: CdsRecords,
    issued: Sequence[JsonObject],
    service_id: str,
    hook_instance: str,
    who: VerifiedCall | None,
    patient_ref: str,
    recent: Sequence[c.ScoredStudy],
) -> None:
    """Keep each card's id, so feedback can be tied to the patient and the result it was about."""
    job_ids = {s.result.job_id for s in recent}
    now = datetime.now(UTC)
    kept = []
    for card in issued:
        linked = {str(link.get("url", "")).rsplit("/", 1)[-1] for link in card.get("links", [])}
        job_id = next(iter(linked & job_ids), None)
        kept.append(
            IssuedCard(card["uuid"], service_id, hook_instance, who.issuer if who else "", patient_ref, job_id, now)
        )
    records.cards_issued(kept)


def _fhir_servers(who: VerifiedCall | None, auth: CdsClientAuth | None) -> Callable[[str], bool]:
    """Which ``fhirServer`` URLs may be called: with JWTs checked, only those registered for the caller (a URL
    the request names could otherwise point this service anywhere); in development, any."""
    if auth is None:
        return lambda _url: True
    client = auth.registry.get(who.issuer) if who else None
    allowed = client.fhir_servers if client else ()
    return lambda url: any(url.rstrip("/") == a.rstrip("/") for a in allowed)


def _error(text: str, status: int) -> Response:
    response = jsonify({"error": text})
    response.status_code = status
    return response
