"""Access control and read auditing for the FHIR door (issue 5), on top of `radtriage.compliance`.

Scopes. Each route names the SMART v2 system scope it needs (``system/<Type>.<c|r|s>``; see `api`), checked by
`radtriage.compliance.flask_auth.require_scope`. A transaction can hold entries of several types, so it is
`authenticated` first (401 without a valid token) and each entry type's ``.c`` scope is demanded once the
Bundle is read (`demand_scope`, 403 when one is missing). With access control off (development), nothing is
checked and `current_principal()` is None. Every refusal is audited by `AccessControl` itself.

Who and where. `with_request_context` makes the request's `AuditContext` current for the view: the token's
client, role, token id and purpose of use (set by ``require_scope``), the peer address and a sane
``X-Request-Id``; with access control off, the peer address alone. Audit records the core writes during the
request (the order store's "order received") name that client.

Reads. `ReadAuditor` writes the BALP-shaped record of every read and search of results and audit records
(IHE BALP Read / PatientRead, Query / PatientQuery): a read names the patient whose data it returned; a
search writes one record per patient among the matches (BALP: patient privacy needs one AuditEvent per
patient), all in one transaction, each with the raw query. Records are written before the response leaves:
a read that cannot be audited is not served (500).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar, cast

from flask import current_app, g, request

from ..app.core.errors import ErrorCode, TriageError
from ..compliance.audit import (
    AuditContext,
    AuditOutcome,
    AuditRecord,
    EventKind,
    audit_context,
    current_audit_context,
)
from ..compliance.audit_store import AuditLog
from ..compliance.auth import AccessControl, AuthError
from ..compliance.flask_auth import EXTENSION_KEY, refusal_response

F = TypeVar("F", bound=Callable[..., Any])

#: Longest text an audit record keeps in a who/where field (`radtriage.compliance.audit`).
_MAX_AUDIT_TEXT: Final = 255
#: What an ``X-Request-Id`` may look like to be recorded (a UUID, a trace id); anything else is dropped.
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")


# ---------------------------------------------------------------------------------------------- access control


def access_control() -> AccessControl | None:
    """The app's access control, None when it is off. Fails closed if the composition root installed none."""
    if EXTENSION_KEY not in current_app.extensions:
        raise RuntimeError("access control is not installed on this app (install_access_control)")
    return cast(AccessControl | None, current_app.extensions[EXTENSION_KEY])


def authenticated(view: F) -> F:
    """Run `view` only for a valid bearer token, whatever its scopes (401 otherwise); see `demand_scope`."""

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        access = access_control()
        if access is None:
            g.radtriage_principal = None
            return view(*args, **kwargs)
        try:
            principal = access.authenticate(_authorization(), peer_address=request.remote_addr)
        except AuthError as error:
            return refusal_response(error)
        g.radtriage_principal = principal
        with audit_context(principal.audit_context(peer_address=request.remote_addr)):
            return view(*args, **kwargs)

    return cast(F, guarded)


def demand_scope(scope: str) -> None:
    """Raise `AuthError` (403, audited) unless the request's token grants `scope`; nothing when access is off."""
    access = access_control()
    if access is not None:
        access.authorize(_authorization(), scope, peer_address=request.remote_addr)


def _authorization() -> dict[str, str]:
    return {"Authorization": request.headers.get("Authorization", "")}


def with_request_context(view: F) -> F:
    """Run `view` with the request's `AuditContext` current (see the module docstring)."""

    @functools.wraps(view)
    def in_context(*args: Any, **kwargs: Any) -> Any:
        request_id = _request_id()
        context = current_audit_context()
        if context is None:
            context = AuditContext(peer_address=_bounded(request.remote_addr), request_id=request_id)
        else:
            # The header is the client's: keep it only when it looks like an id (an audit field is bounded).
            context = replace(context, request_id=request_id)
        with audit_context(context):
            return view(*args, **kwargs)

    return cast(F, in_context)


def _request_id() -> str | None:
    value = request.headers.get("X-Request-Id", "").strip()
    return value if _REQUEST_ID.fullmatch(value) else None


def _bounded(value: str | None) -> str | None:
    """`value` when an audit record can hold it (non-empty, at most 255 characters), else None."""
    if value is None or not value.strip() or len(value) > _MAX_AUDIT_TEXT:
        return None
    return value


# ---------------------------------------------------------------------------------------------- read auditing


@dataclass(frozen=True)
class Returned:
    """One resource a read or search returned, and the patient it is about (None when it names none)."""

    reference: str  # "DiagnosticReport/<id>"
    patient_ref: str | None = None


class ReadAuditor:
    """Writes the audit records of reads and searches into `audit` (see the module docstring)."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def read(self, kind: EventKind, returned: Returned, **details: str) -> None:
        # Repeats of the same read by the same client within a minute are counted, not chained one by one.
        self.audit.record_read(
            AuditRecord.in_context(
                kind,
                interaction="read",
                entities=(returned.reference,),
                patient_ref=returned.patient_ref,
                details=details,
            )
        )

    def refused_read(self, kind: EventKind, resource_type: str, resource_id: str, error: TriageError) -> None:
        """A read that found nothing (or failed): outcome 4, the error code, the id asked for if it is an id."""
        entities = (f"{resource_type}/{resource_id}",) if _FHIR_ID.fullmatch(resource_id) else ()
        failed = AuditOutcome.SERIOUS_FAILURE if error.code is ErrorCode.INTERNAL else AuditOutcome.MINOR_FAILURE
        self.audit.record(
            AuditRecord.in_context(
                kind,
                interaction="read",
                entities=entities,
                outcome=failed,
                outcome_description=error.code.value,
            )
        )

    def search(
        self,
        kind: EventKind,
        matches: Sequence[Returned],
        *,
        searched_patient: str | None = None,
        one_record: bool = False,
    ) -> None:
        """One record per patient among `matches` (or a single record with every match, `one_record`).

        With no match the one record names `searched_patient`: whose data was looked for is worth knowing too.
        """
        query = request.full_path if request.query_string else request.path
        groups: dict[str | None, list[str]] = {}
        if one_record:
            groups[_bounded(searched_patient)] = [m.reference for m in matches]
        else:
            for match in matches:
                groups.setdefault(match.patient_ref, []).append(match.reference)
            if not groups:
                groups[_bounded(searched_patient)] = []
        with self.audit.engine.begin() as connection:
            for patient_ref, references in groups.items():
                self.audit.append(
                    connection,
                    AuditRecord.in_context(
                        kind,
                        interaction="search-type",
                        entities=tuple(references),
                        patient_ref=patient_ref,
                        query=query,
                        details={"matches": str(len(references))},
                    ),
                )
