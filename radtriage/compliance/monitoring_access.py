"""Who may read the monitoring endpoints (``GET /metrics``, ``GET /monitoring/metrics.json``).

They serve aggregate figures only (no patient data), but they show how the service and the model perform and
each request runs the drift checks, so in production mode, or whenever the FHIR API requires tokens, they need
one of:

* the scrape token: ``Authorization: Bearer <token>`` where the token is the content of `monitoring_token_file`
  (at least 32 characters; for Prometheus ``authorization: {credentials_file: ...}``), compared in constant
  time; or
* a SMART access token from radtriage's token endpoint (or a trusted issuer) granting ``system/MeasureReport.r``
  (`MONITORING_SCOPE`): the ``monitoring`` client role has exactly that scope, ``admin`` has every scope.

Without either: 401 with ``WWW-Authenticate: Bearer``; a SMART token without the scope: 403. Refusals are
audited (``authentication-failed`` / ``access-denied``). In development mode with access control off the
endpoints stay open, as the FHIR API does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .audit import AUTHENTICATION_FAILED, AuditContext, AuditOutcome, AuditRecord
from .auth import AccessControl, AuthError

#: The SMART scope that reads monitoring figures (FHIR MeasureReport is the resource for aggregate measures).
MONITORING_SCOPE = "system/MeasureReport.r"
MIN_TOKEN_LENGTH = 32


@dataclass(frozen=True)
class Refusal:
    status: int
    body: str
    headers: dict[str, str]


class MonitoringAccess:
    """Checks one request's ``Authorization`` header; `check` returns None (let it through) or a `Refusal`."""

    def __init__(
        self,
        *,
        required: bool,
        scrape_token: str | None = None,
        access: AccessControl | None = None,
        audit: Callable[[AuditRecord], object] | None = None,
    ) -> None:
        if scrape_token is not None and len(scrape_token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the monitoring scrape token must be at least {MIN_TOKEN_LENGTH} characters")
        self.required = required
        self._token_digest = hashlib.sha256(scrape_token.encode()).digest() if scrape_token else None
        self.access = access
        self.audit = audit

    @classmethod
    def from_token_file(
        cls,
        path: str,
        *,
        required: bool,
        access: AccessControl | None,
        audit: Callable[[AuditRecord], object] | None = None,
    ) -> MonitoringAccess:
        token = Path(path).read_text(encoding="utf-8").strip() if path else None
        return cls(required=required, scrape_token=token or None, access=access, audit=audit)

    def check(self, authorization: str, peer_address: str | None) -> Refusal | None:
        if not self.required:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token and self._token_digest is not None:
            given = hashlib.sha256(token.encode("utf-8", "replace")).digest()
            if hmac.compare_digest(given, self._token_digest):
                return None
        if scheme.lower() == "bearer" and token.count(".") == 2 and self.access is not None:
            try:  # a JWT: radtriage's own or a trusted issuer's (AccessControl audits its refusals)
                self.access.authorize({"Authorization": authorization}, MONITORING_SCOPE, peer_address=peer_address)
                return None
            except AuthError as error:
                return _refusal(error.status, error.code, error.description)
        if self.audit is not None:
            self.audit(
                AuditRecord.in_context(
                    AUTHENTICATION_FAILED,
                    AuditContext(peer_address=peer_address),
                    outcome=AuditOutcome.MINOR_FAILURE,
                    outcome_description="monitoring: no valid token",
                )
            )
        return _refusal(401, "invalid_token", "a bearer token is required for the monitoring endpoints")


def _refusal(status: int, code: str, description: str) -> Refusal:
    challenge = f'Bearer realm="radtriage-monitoring", error="{code}"'
    if status == 403:
        challenge += f', scope="{MONITORING_SCOPE}"'
    body = json.dumps({"error": code, "error_description": description})
    return Refusal(status, body, {"WWW-Authenticate": challenge, "Cache-Control": "no-store"})
