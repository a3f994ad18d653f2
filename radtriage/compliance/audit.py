"""Audit capture: what happened, for whom, by whom, from where, why and how it ended.

An `AuditRecord` is the service's own, framework-free description of one auditable event. `build_audit_event`
renders it as a FHIR R4 ``AuditEvent`` following the IHE Basic Audit Log Patterns (BALP 1.1.3,
https://profiles.ihe.net/ITI/BALP/):

* RESTful requests (``interaction`` set) follow BALP's RESTful patterns: ``type`` = audit-event-type#rest,
  ``subtype`` = restful-interaction#<interaction>, action C/R/U/D (search: E), a *client* agent and a *server*
  agent typed with DICOM "Source Role ID" (110153) / "Destination Role ID" (110152) — reversed for reads, as
  BALP's Read profile does — a *patient* entity (audit-entity-type 1, object-role 1) when a patient is known,
  *data* entities (audit-entity-type 2) for the resources touched and a *query* entity (object-role 24, the raw
  query base64-encoded) for searches. When the request succeeded and every element the profile requires is
  present, ``meta.profile`` names the BALP profile it conforms to (``IHE.BasicAudit.PatientCreate``, ...).
* The OAuth access token, when there is one, is recorded after BALP's OAuth pattern: an agent typed
  ``UserOauthAgent`` with ``policy`` = ``urn:ietf:params:oauth:jti:<jti>``.
* Everything else (an HL7 v2 order, a study retrieved from the PACS, a model run, a log-in, an export, a
  configuration change) uses the DICOM PS3.15 audit event IDs that FHIR R4 binds to ``AuditEvent.type``
  (Import, DICOM Instances Transferred, Application Activity, User Authentication, Audit Log Used, ...), with
  the same agent and entity patterns.

Every record also carries radtriage's own event code as a second ``subtype`` (`EventKind`), so that an export
can be filtered by "order-received" or "authentication-failed" regardless of the door it came through.

The patient reference is kept in the record and the AuditEvent (the audit trail must say whose data was
touched) but never appears in `repr`, logs or error messages.
"""

from __future__ import annotations

import base64
import contextvars
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any, Literal

from . import codes
from .codes import Code

Direction = Literal["inbound", "outbound", "internal"]


class AuditAction(StrEnum):
    """FHIR R4 AuditEvent.action (audit-event-action)."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class AuditOutcome(IntEnum):
    """FHIR R4 AuditEvent.outcome (audit-event-outcome)."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # the request was refused or failed without lasting effect (bad input, denied access)
    SERIOUS_FAILURE = 8  # the action was not completed (a dependency failed)
    MAJOR_FAILURE = 12  # the service is in an unusable state


@dataclass(frozen=True)
class EventKind:
    """One entry of radtriage's audit catalogue: its own code plus the standard codes it is rendered with.

    `direction` says who started it: ``inbound`` (a client called the service), ``outbound`` (the service
    called another system: the PACS, the RIS) or ``internal`` (the service itself: a worker, a start-up).
    """

    code: str
    display: str
    type: Code
    action: AuditAction
    direction: Direction
    dicom_subtype: Code | None = None

    @property
    def subtype(self) -> Code:
        return Code(codes.AUDIT_EVENT_SYSTEM, self.code, self.display)


def _kind(
    code: str,
    display: str,
    type_: Code,
    action: AuditAction,
    direction: Direction,
    dicom_subtype: Code | None = None,
) -> EventKind:
    return EventKind(code, display, type_, action, direction, dicom_subtype)


A = AuditAction
# The catalogue. Issue 5 lists what must leave a record; each entry names one of those events.
ORDER_RECEIVED = _kind("order-received", "Imaging order received", codes.DCM_IMPORT, A.CREATE, "inbound")
ORDER_CANCELLED = _kind("order-cancelled", "Imaging order cancelled", codes.DCM_PATIENT_RECORD, A.UPDATE, "inbound")
STUDY_RETRIEVED = _kind(
    "study-retrieved", "Study retrieved from the image archive", codes.DCM_INSTANCES_TRANSFERRED, A.READ, "outbound"
)
STUDY_SCORED = _kind("study-scored", "Study scored by the model", codes.DCM_APPLICATION_ACTIVITY, A.EXECUTE, "internal")
JOB_FAILED = _kind("job-failed", "Triage job failed", codes.DCM_APPLICATION_ACTIVITY, A.EXECUTE, "internal")
JOB_RETRY = _kind(
    "job-retry", "Failed job retried, or its retry planned or given up", codes.DCM_APPLICATION_ACTIVITY, A.EXECUTE,
    "internal",
)  # fmt: skip
RESULT_CREATED = _kind("result-created", "Triage result created", codes.DCM_PATIENT_RECORD, A.CREATE, "internal")
PRIORITY_CHANGED = _kind("priority-changed", "Priority changed", codes.DCM_PATIENT_RECORD, A.UPDATE, "internal")
RESULT_READ = _kind("result-read", "Result read or searched", codes.DCM_PATIENT_RECORD, A.READ, "inbound")
MESSAGE_SENT = _kind("message-sent", "Message sent to another system", codes.DCM_EXPORT, A.READ, "outbound")
AUDIT_READ = _kind("audit-read", "Audit trail read or searched", codes.DCM_AUDIT_LOG_USED, A.READ, "inbound")
AUDIT_EXPORTED = _kind("audit-exported", "Audit trail exported", codes.DCM_AUDIT_LOG_USED, A.READ, "inbound")
AUDIT_VERIFIED = _kind("audit-verified", "Audit trail verified", codes.DCM_AUDIT_LOG_USED, A.EXECUTE, "inbound")
LOGIN = _kind("login", "Access token issued", codes.DCM_USER_AUTHENTICATION, A.EXECUTE, "inbound", codes.DCM_LOGIN)
AUTHENTICATION_FAILED = _kind(
    "authentication-failed", "Authentication failed", codes.DCM_USER_AUTHENTICATION, A.EXECUTE, "inbound",
    codes.DCM_LOGIN,
)  # fmt: skip
ACCESS_DENIED = _kind(
    "access-denied", "Access denied (insufficient scope)", codes.DCM_SECURITY_ALERT, A.EXECUTE, "inbound",
    codes.DCM_USE_OF_RESTRICTED_FUNCTION,
)  # fmt: skip
CONFIGURATION_CHANGED = _kind(
    "configuration-changed", "Configuration changed", codes.DCM_SECURITY_ALERT, A.UPDATE, "internal",
    codes.DCM_SOFTWARE_CONFIGURATION,
)  # fmt: skip
SECURITY_CONFIGURATION_CHANGED = _kind(
    "security-configuration-changed", "Security configuration changed", codes.DCM_SECURITY_ALERT, A.UPDATE,
    "internal", codes.DCM_SECURITY_CONFIGURATION,
)  # fmt: skip
MODEL_CHANGED = _kind(
    "model-changed", "Scoring model changed", codes.DCM_SECURITY_ALERT, A.UPDATE, "internal",
    codes.DCM_SOFTWARE_CONFIGURATION,
)  # fmt: skip
RETENTION_PURGE = _kind(
    "retention-purge", "Derived data purged after the retention period", codes.DCM_STUDY_DELETED, A.DELETE, "internal"
)
# People using the web pages (issue 14): sign-out, the account lockout, accounts changed, studies claimed/read.
LOGOUT = _kind("logout", "Signed out", codes.DCM_USER_AUTHENTICATION, A.EXECUTE, "inbound", codes.DCM_LOGOUT)
ACCOUNT_LOCKED = _kind(
    "account-locked", "Account locked after failed sign-ins", codes.DCM_SECURITY_ALERT, A.EXECUTE, "inbound",
    codes.DCM_LOGIN,
)  # fmt: skip
SIGN_IN_THROTTLED = _kind(
    "sign-in-throttled", "Sign-in refused (locked account or too many attempts)", codes.DCM_USER_AUTHENTICATION,
    A.EXECUTE, "inbound", codes.DCM_LOGIN,
)  # fmt: skip
USER_ACCOUNT_CHANGED = _kind(
    "user-account-changed", "Web user account changed", codes.DCM_SECURITY_ALERT, A.UPDATE, "internal",
    codes.DCM_SECURITY_CONFIGURATION,
)  # fmt: skip
STUDY_CLAIMED = _kind("study-claimed", "Study claimed for reading", codes.DCM_PATIENT_RECORD, A.UPDATE, "inbound")
STUDY_MARKED_READ = _kind("study-marked-read", "Study marked read", codes.DCM_PATIENT_RECORD, A.UPDATE, "inbound")
APPLICATION_START = _kind(
    "application-start", "Service started", codes.DCM_APPLICATION_ACTIVITY, A.EXECUTE, "internal",
    codes.DCM_APPLICATION_START,
)  # fmt: skip
APPLICATION_STOP = _kind(
    "application-stop", "Service stopped", codes.DCM_APPLICATION_ACTIVITY, A.EXECUTE, "internal",
    codes.DCM_APPLICATION_STOP,
)  # fmt: skip
# Issue 10: what the model cannot see, and whether its priorities are acted on.
FINDINGS_NOT_ASSESSED = _kind(
    "findings-not-assessed", "Policy names findings the model cannot assess", codes.DCM_SECURITY_ALERT, A.EXECUTE,
    "internal", codes.DCM_SOFTWARE_CONFIGURATION,
)  # fmt: skip
SHADOW_MODE_CHANGED = _kind(
    "shadow-mode-changed", "Shadow mode switched on or off", codes.DCM_SECURITY_ALERT, A.UPDATE, "internal",
    codes.DCM_SOFTWARE_CONFIGURATION,
)  # fmt: skip
SITE_VALIDATION_RECORDED = _kind(
    "site-validation-recorded", "Site validation of the model recorded", codes.DCM_APPLICATION_ACTIVITY, A.CREATE,
    "internal",
)  # fmt: skip
# Issue 13: CDS Hooks (radtriage.cds). A hook call that returns a patient's results is a RESULT_READ.
CDS_FEEDBACK = _kind(
    "cds-feedback", "CDS Hooks card feedback received", codes.DCM_PATIENT_RECORD, A.CREATE, "inbound"
)
del A

EVENT_KINDS: dict[str, EventKind] = {
    kind.code: kind
    for kind in (
        ORDER_RECEIVED,
        ORDER_CANCELLED,
        STUDY_RETRIEVED,
        STUDY_SCORED,
        JOB_FAILED,
        JOB_RETRY,
        RESULT_CREATED,
        PRIORITY_CHANGED,
        RESULT_READ,
        CDS_FEEDBACK,
        MESSAGE_SENT,
        AUDIT_READ,
        AUDIT_EXPORTED,
        AUDIT_VERIFIED,
        LOGIN,
        AUTHENTICATION_FAILED,
        ACCESS_DENIED,
        CONFIGURATION_CHANGED,
        SECURITY_CONFIGURATION_CHANGED,
        MODEL_CHANGED,
        RETENTION_PURGE,
        APPLICATION_START,
        APPLICATION_STOP,
        FINDINGS_NOT_ASSESSED,
        SHADOW_MODE_CHANGED,
        SITE_VALIDATION_RECORDED,
        LOGOUT,
        ACCOUNT_LOCKED,
        SIGN_IN_THROTTLED,
        USER_ACCOUNT_CHANGED,
        STUDY_CLAIMED,
        STUDY_MARKED_READ,
    )
}

#: FHIR restful-interaction codes, the action BALP fixes for each, and the BALP profile (without "Patient").
REST_INTERACTIONS: dict[str, tuple[AuditAction, str]] = {
    "create": (AuditAction.CREATE, "Create"),
    "read": (AuditAction.READ, "Read"),
    "vread": (AuditAction.READ, "Read"),
    "update": (AuditAction.UPDATE, "Update"),
    "patch": (AuditAction.UPDATE, "Update"),
    "delete": (AuditAction.DELETE, "Delete"),
    "search": (AuditAction.EXECUTE, "Query"),
    "search-type": (AuditAction.EXECUTE, "Query"),
    "search-system": (AuditAction.EXECUTE, "Query"),
}

_LITERAL_REFERENCE = re.compile(r"^(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})$")
_MAX_TEXT = 255  # who/where values and reference parts; longer values are refused, never silently cut here


@dataclass(frozen=True)
class AuditContext:
    """Who is acting and from where: set once by a door per request, read by whoever writes audit records.

    It travels in a `contextvars.ContextVar` (see `audit_context`) so that code deep in the core, such as the
    store writing a job transition, can attribute the change to the client that caused it without every
    signature carrying it. Each thread and asyncio task has its own value.
    """

    client_id: str | None = None
    user_id: str | None = None
    role: str | None = None
    token_id: str | None = None
    peer_address: str | None = None
    purpose_of_use: str | None = None
    request_id: str | None = None


_CURRENT_CONTEXT: contextvars.ContextVar[AuditContext | None] = contextvars.ContextVar(
    "radtriage_audit_context", default=None
)


def current_audit_context() -> AuditContext | None:
    return _CURRENT_CONTEXT.get()


@contextmanager
def audit_context(context: AuditContext) -> Iterator[AuditContext]:
    """Make `context` the acting party for the code inside the block."""
    token = _CURRENT_CONTEXT.set(context)
    try:
        yield context
    finally:
        _CURRENT_CONTEXT.reset(token)


@dataclass(frozen=True)
class AuditRecord:
    """One auditable event. Constructing it validates it, so an invalid record cannot be stored.

    Who: `client_id` (OAuth client, HL7 sending application), `user_id` (a person, when known), `role`,
    `token_id` (the access token's jti). What: `kind`, `action` (defaults to the kind's, or BALP's for the REST
    `interaction`), `entities` (``Type/id`` references or ``system|value`` identifiers), `patient_ref`, `query`
    (the raw search string of a search). When: `recorded` (UTC; now when omitted). Where: `peer_address` (the
    client's IP address, the MLLP peer, the PACS host). Why: `purpose_of_use` (v3-PurposeOfUse code).
    Outcome: `outcome` and `outcome_description` (an error code, never patient data). `details` holds other
    facts as short strings (never patient data: they are exported and may be logged).
    """

    kind: EventKind
    outcome: AuditOutcome = AuditOutcome.SUCCESS
    recorded: datetime | None = None
    client_id: str | None = None
    user_id: str | None = None
    role: str | None = None
    token_id: str | None = None
    peer_address: str | None = None
    interaction: str | None = None
    action: AuditAction | None = None
    entities: tuple[str, ...] = ()
    patient_ref: str | None = field(default=None, repr=False)
    query: str | None = field(default=None, repr=False)
    request_id: str | None = None
    purpose_of_use: str | None = None
    outcome_description: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, EventKind):
            raise TypeError("kind must be an EventKind from radtriage.compliance.audit")
        object.__setattr__(self, "outcome", AuditOutcome(self.outcome))
        if self.interaction is not None and self.interaction not in REST_INTERACTIONS:
            raise ValueError(f"unknown FHIR restful interaction {self.interaction!r}")
        if self.action is None:
            action = REST_INTERACTIONS[self.interaction][0] if self.interaction else self.kind.action
            object.__setattr__(self, "action", action)
        else:
            object.__setattr__(self, "action", AuditAction(self.action))
        if self.purpose_of_use is not None and self.purpose_of_use not in codes.PURPOSES_OF_USE:
            raise ValueError(f"unknown purpose of use {self.purpose_of_use!r} (one of {sorted(codes.PURPOSES_OF_USE)})")
        recorded = self.recorded or datetime.now(UTC)
        if recorded.tzinfo is None:
            raise ValueError("recorded must carry a time zone")
        object.__setattr__(self, "recorded", recorded.astimezone(UTC))
        object.__setattr__(self, "entities", tuple(self.entities))
        for name in ("client_id", "user_id", "role", "token_id", "peer_address", "request_id", "patient_ref"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip() or len(value) > _MAX_TEXT):
                raise ValueError(f"{name} must be a non-empty string of at most {_MAX_TEXT} characters")
        for entity in self.entities:
            if not isinstance(entity, str) or not entity.strip() or len(entity) > 2 * _MAX_TEXT:
                raise ValueError("each entity must be a non-empty reference string")
        details = dict(self.details)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in details.items()):
            raise ValueError("details must map strings to strings")
        object.__setattr__(self, "details", details)

    @classmethod
    def in_context(cls, kind: EventKind, context: AuditContext | None = None, **fields: Any) -> AuditRecord:
        """A record whose who/where/why come from `context` (default: the current `audit_context`)."""
        context = context or current_audit_context() or AuditContext()
        values: dict[str, Any] = {
            "client_id": context.client_id,
            "user_id": context.user_id,
            "role": context.role,
            "token_id": context.token_id,
            "peer_address": context.peer_address,
            "purpose_of_use": context.purpose_of_use,
            "request_id": context.request_id,
        }
        values.update(fields)
        return cls(kind=kind, **values)

    def with_outcome(self, outcome: AuditOutcome, description: str | None = None) -> AuditRecord:
        return replace(self, outcome=outcome, outcome_description=description)


@dataclass(frozen=True)
class AuditSource:
    """This service as the audit source and as the server agent (BALP: agent[server], source.observer)."""

    site: str
    observer: str = "radtriage"
    address: str | None = None

    @classmethod
    def local(cls, observer: str = "radtriage") -> AuditSource:
        host = socket.gethostname() or "localhost"
        return cls(site=host, observer=observer, address=host)


# ---------------------------------------------------------------------------------------------- rendering


def reference(value: str, *, resource_type: str | None = None) -> dict[str, Any]:
    """A FHIR Reference for ``Type/id`` (literal) or ``system|value`` (logical, by identifier)."""
    if _LITERAL_REFERENCE.match(value):
        return {"reference": value}
    system, sep, ident = value.partition("|")
    ref: dict[str, Any] = {"identifier": {"system": system, "value": ident} if sep and ident else {"value": value}}
    if resource_type:
        ref["type"] = resource_type
    return ref


def _codeable(code: Code) -> dict[str, Any]:
    return {"coding": [code.as_fhir()]}


def _network(address: str) -> dict[str, str]:
    is_ip = bool(re.fullmatch(r"[0-9.]+|[0-9A-Fa-f:]+(%\w+)?", address)) and any(c in address for c in ".:")
    is_uri = "://" in address
    kind = codes.NETWORK_URI if is_uri else codes.NETWORK_IP_ADDRESS if is_ip else codes.NETWORK_MACHINE_NAME
    return {"address": address, "type": kind}


def _entity_role(ref: str) -> Code:
    resource_type = ref.split("/", 1)[0] if _LITERAL_REFERENCE.match(ref) else ""
    if resource_type == "DiagnosticReport":
        return codes.ROLE_REPORT
    if resource_type == "Task":
        return codes.ROLE_JOB
    return codes.ROLE_DOMAIN_RESOURCE


def _agents(record: AuditRecord, source: AuditSource) -> list[dict[str, Any]]:
    direction = record.kind.direction
    purpose = (
        [
            _codeable(
                Code(codes.PURPOSE_OF_USE_SYSTEM, record.purpose_of_use, codes.PURPOSES_OF_USE[record.purpose_of_use])
            )
        ]
        if record.purpose_of_use
        else None
    )
    role = [_codeable(Code(codes.ROLE_SYSTEM, record.role, record.role))] if record.role else None
    server: dict[str, Any] = {
        "who": {
            "identifier": {"system": codes.SERVICE_ID_SYSTEM, "value": source.observer},
            "display": source.observer,
        },
        "requestor": direction != "inbound",
    }
    if source.address:
        server["network"] = _network(source.address)
    agents: list[dict[str, Any]] = []
    has_peer = record.client_id is not None or record.peer_address is not None
    if direction == "internal" or not has_peer:
        server["type"] = _codeable(codes.DCM_APPLICATION)
        server["requestor"] = record.user_id is None
        agents.append(server)
    else:
        peer: dict[str, Any] = {
            "who": {
                "identifier": {"system": codes.CLIENT_ID_SYSTEM, "value": record.client_id},
                "display": record.client_id,
            }
            if record.client_id
            else {"display": record.peer_address or "unknown peer"},
            # With an OAuth token, BALP makes the token's agent the requestor; without one, the peer is.
            "requestor": direction == "inbound" and record.token_id is None and record.user_id is None,
        }
        if record.peer_address:
            peer["network"] = _network(record.peer_address)
        if role and record.token_id is None:
            peer["role"] = role
        if purpose and record.token_id is None and record.user_id is None:
            peer["purposeOfUse"] = purpose
        # BALP RESTful patterns: the requester is the source, the server the destination, except for reads,
        # where the data flows to the client (BALP Read: client = Destination Role ID).
        peer_is_source = direction == "inbound" and record.action is not AuditAction.READ
        if direction == "outbound":
            peer_is_source = record.action is AuditAction.READ  # the PACS sends us the study
        peer["type"] = _codeable(codes.DCM_SOURCE_ROLE if peer_is_source else codes.DCM_DESTINATION_ROLE)
        server["type"] = _codeable(codes.DCM_DESTINATION_ROLE if peer_is_source else codes.DCM_SOURCE_ROLE)
        agents.extend([peer, server])
    if record.token_id is not None:
        # BALP OAuth access-token pattern: the token's subject, its jti in policy, its role and purpose.
        oauth: dict[str, Any] = {
            "type": _codeable(codes.BALP_OAUTH_USER),
            "who": {"identifier": {"system": codes.CLIENT_ID_SYSTEM, "value": record.client_id or "unknown"}},
            "requestor": True,
            "policy": [codes.OAUTH_JTI_URN_PREFIX + record.token_id],
        }
        if role:
            oauth["role"] = role
        if purpose:
            oauth["purposeOfUse"] = purpose
        agents.append(oauth)
    if record.user_id is not None:
        reads = record.action in (AuditAction.READ, AuditAction.EXECUTE)
        participation = "IRCP" if reads else "AUT"
        user: dict[str, Any] = {
            "type": _codeable(
                Code(
                    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    participation,
                    "information recipient" if reads else "author",
                )
            ),
            "who": {"identifier": {"system": codes.USER_ID_SYSTEM, "value": record.user_id}},
            "requestor": True,
        }
        if role and record.token_id is None:
            user["role"] = role
        if purpose and record.token_id is None:
            user["purposeOfUse"] = purpose
        agents.append(user)
    return agents


def _entities(record: AuditRecord) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    if record.request_id:
        entities.append(
            {"type": codes.ENTITY_REQUEST_ID.as_fhir(), "what": {"identifier": {"value": record.request_id}}}
        )
    if record.patient_ref:
        entities.append(
            {
                "what": reference(record.patient_ref, resource_type="Patient"),
                "type": codes.ENTITY_PERSON.as_fhir(),
                "role": codes.ROLE_PATIENT.as_fhir(),
            }
        )
    for ref in record.entities:
        entities.append(
            {"what": reference(ref), "type": codes.ENTITY_SYSTEM_OBJECT.as_fhir(), "role": _entity_role(ref).as_fhir()}
        )
    if record.query is not None:
        entities.append(
            {
                "type": codes.ENTITY_SYSTEM_OBJECT.as_fhir(),
                "role": codes.ROLE_QUERY.as_fhir(),
                "query": base64.b64encode(record.query.encode("utf-8")).decode("ascii"),
            }
        )
    if record.details:
        entities.append(
            {
                "type": codes.ENTITY_OTHER.as_fhir(),
                "description": "event details",
                "detail": [{"type": key, "valueString": value} for key, value in sorted(record.details.items())],
            }
        )
    return entities


def balp_profile(record: AuditRecord) -> str | None:
    """The BALP profile `record` conforms to, or None (BALP profiles only describe successful REST requests)."""
    if record.interaction is None or record.outcome is not AuditOutcome.SUCCESS:
        return None
    if record.kind.direction != "inbound" or record.client_id is None or record.peer_address is None:
        return None
    name = REST_INTERACTIONS[record.interaction][1]
    if name == "Query":
        if record.query is None:
            return None
    elif not record.entities:
        return None
    prefix = "Patient" if record.patient_ref else ""
    return f"{codes.BALP_PROFILE_BASE}/IHE.BasicAudit.{prefix}{name}"


def audit_event_json(record: AuditRecord, *, resource_id: str | None = None, source: AuditSource) -> dict[str, Any]:
    """`record` as a FHIR R4 AuditEvent, JSON-ready (keys as FHIR names, values as FHIR JSON)."""
    assert record.recorded is not None and record.action is not None  # set by __post_init__
    subtype = [record.kind.subtype.as_fhir()]
    if record.kind.dicom_subtype:
        subtype.insert(0, record.kind.dicom_subtype.as_fhir())
    if record.interaction:
        event_type = codes.REST_OPERATION
        subtype.insert(0, Code(codes.RESTFUL_INTERACTION_SYSTEM, record.interaction, record.interaction).as_fhir())
    else:
        event_type = record.kind.type
    resource: dict[str, Any] = {"resourceType": "AuditEvent"}
    if resource_id is not None:
        resource["id"] = resource_id
    profile = balp_profile(record)
    if profile:
        resource["meta"] = {"profile": [profile]}
    resource.update(
        {
            "type": event_type.as_fhir(),
            "subtype": subtype,
            "action": record.action.value,
            "recorded": _instant(record.recorded),
            "outcome": str(int(record.outcome)),
            "agent": _agents(record, source),
            "source": {
                "site": source.site,
                "observer": {
                    "identifier": {"system": codes.SERVICE_ID_SYSTEM, "value": source.observer},
                    "display": source.observer,
                },
                "type": [codes.APPLICATION_SERVER.as_fhir()],
            },
        }
    )
    if record.outcome_description:
        resource["outcomeDesc"] = record.outcome_description
    entities = _entities(record)
    if entities:
        resource["entity"] = entities
    return resource


def build_audit_event(record: AuditRecord, *, resource_id: str | None = None, source: AuditSource) -> Any:
    """`record` as a validated ``fhir.resources.R4B`` AuditEvent model (raises if the rendering is invalid)."""
    from fhir.resources.R4B.auditevent import AuditEvent

    return AuditEvent.model_validate(audit_event_json(record, resource_id=resource_id, source=source))


def _instant(value: datetime) -> str:
    """FHIR instant in UTC with microseconds, so that the stored text is the same on every database."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------- job events


def record_for_job_transition(
    *,
    job_id: str,
    to_state: str,
    reason_code: str | None = None,
    retryable: bool = False,
    patient_ref: str | None = None,
    study_instance_uid: str | None = None,
    entities: Sequence[str] = (),
    details: Mapping[str, str] | None = None,
    context: AuditContext | None = None,
) -> AuditRecord | None:
    """The audit record for one pipeline transition, or None for transitions that are not audited by themselves.

    Meant for an event listener or the order store's transaction: ``received`` → order-received,
    ``preprocessed`` (pixels fetched and read) → study-retrieved, ``scored`` → study-scored,
    ``completed`` → result-created, ``failed`` → job-failed (outcome 4 for a study that cannot be analysed,
    8 when a retry may succeed), ``cancelled`` → order-cancelled. The worker's transitions are attributed to
    the service; a transition caused by a request is attributed to the request's `AuditContext`.
    """
    kinds = {
        "received": ORDER_RECEIVED,
        "preprocessed": STUDY_RETRIEVED,
        "scored": STUDY_SCORED,
        "completed": RESULT_CREATED,
        "failed": JOB_FAILED,
        "cancelled": ORDER_CANCELLED,
    }
    kind = kinds.get(to_state)
    if kind is None:
        return None
    refs = list(entities)
    if study_instance_uid:
        refs.append(f"urn:dicom:uid|urn:oid:{study_instance_uid}")
    outcome = AuditOutcome.SUCCESS
    if to_state == "failed":
        outcome = AuditOutcome.SERIOUS_FAILURE if retryable else AuditOutcome.MINOR_FAILURE
    all_details = {"job": job_id, **(details or {})}
    context = context if context is not None else current_audit_context()
    if kind.direction == "internal" or context is None:
        context = AuditContext()
    return AuditRecord.in_context(
        kind,
        context,
        outcome=outcome,
        outcome_description=reason_code,
        patient_ref=patient_ref,
        entities=tuple(refs),
        details=all_details,
    )
