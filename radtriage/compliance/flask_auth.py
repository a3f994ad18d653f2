"""Access control for Flask: the token endpoint, discovery documents, and a `require_scope` decorator.

The composition root installs one `AccessControl` on the app (`install_access_control`) and mounts
`auth_blueprint()` (``POST /auth/token``, ``GET /auth/jwks``); the FHIR door decorates each view with
``require_scope("system/DiagnosticReport.s")`` and serves `smart_configuration_view` at
``<fhir base>/.well-known/smart-configuration``.

Inside a decorated view, `current_principal()` is the authenticated client and the request's `AuditContext`
(who, role, token id, address, purpose of use, X-Request-Id) is current, so audit records written by the core
during the request name the client that caused them.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Blueprint, Flask, Response, current_app, g, request

from .audit import audit_context
from .auth import AccessControl, AuthError, Principal

log = logging.getLogger(__name__)

EXTENSION_KEY = "radtriage.access_control"
F = TypeVar("F", bound=Callable[..., Any])
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def install_access_control(app: Flask, access: AccessControl | None) -> None:
    """Use `access` for this app. None switches access control off (development only: every request passes)."""
    if access is None:
        log.warning("access control is OFF: every FHIR request is accepted without a token (development mode)")
    app.extensions[EXTENSION_KEY] = access


def _access() -> AccessControl | None:
    if EXTENSION_KEY not in current_app.extensions:
        # Fail closed: a route that asks for a scope on an app without access control is a wiring mistake.
        raise RuntimeError("access control is not installed on this app (install_access_control)")
    return cast(AccessControl | None, current_app.extensions[EXTENSION_KEY])


def current_principal() -> Principal | None:
    """The client of the current request (None when access control is off)."""
    return cast(Principal | None, g.get("radtriage_principal"))


def refusal_response(error: AuthError) -> Response:
    """A FHIR API refusal: OperationOutcome, 401/403, ``WWW-Authenticate: Bearer ...`` (RFC 6750 3)."""
    response = Response(json.dumps(error.operation_outcome()), status=error.status, mimetype="application/fhir+json")
    challenge = error.www_authenticate()
    if challenge:
        response.headers["WWW-Authenticate"] = challenge
    return response


def require_scope(scope: str) -> Callable[[F], F]:
    """Decorate a view so it runs only for a bearer token granting `scope`."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            access = _access()
            if access is None:
                g.radtriage_principal = None
                return view(*args, **kwargs)
            try:
                headers = {"Authorization": request.headers.get("Authorization", "")}
                principal = access.authorize(headers, scope, peer_address=request.remote_addr)
            except AuthError as error:
                return refusal_response(error)
            g.radtriage_principal = principal
            context = principal.audit_context(
                peer_address=request.remote_addr, request_id=request.headers.get("X-Request-Id")
            )
            with audit_context(context):
                return view(*args, **kwargs)

        return cast(F, guarded)

    return decorate


def token_endpoint() -> Response:
    """``POST`` token endpoint (RFC 6749 3.2, form-encoded; SMART Backend Services)."""
    access = _access()
    if access is None:
        error = AuthError(400, "invalid_request", "access control is off on this server")
        return Response(json.dumps(error.oauth_body()), status=400, mimetype="application/json", headers=_NO_STORE)
    if request.mimetype != "application/x-www-form-urlencoded":
        error = AuthError(400, "invalid_request", "the token request must be application/x-www-form-urlencoded")
        return Response(json.dumps(error.oauth_body()), status=400, mimetype="application/json", headers=_NO_STORE)
    try:
        body = access.issue_token(request.form.to_dict(flat=True), peer_address=request.remote_addr)
    except AuthError as error:
        return Response(
            json.dumps(error.oauth_body()), status=error.status, mimetype="application/json", headers=_NO_STORE
        )
    return Response(json.dumps(body), status=200, mimetype="application/json", headers=_NO_STORE)


def jwks_view() -> Response:
    access = _access()
    keys = access.public_jwks() if access else {"keys": []}
    return Response(json.dumps(keys), mimetype="application/json")


def smart_configuration_view() -> Response:
    access = _access()
    if access is None:
        return Response(json.dumps({"capabilities": []}), mimetype="application/json")
    return Response(json.dumps(access.smart_configuration()), mimetype="application/json")


def auth_blueprint() -> Blueprint:
    """``POST /token``, ``GET /jwks`` and ``GET /.well-known/smart-configuration``; mount at ``/auth``."""
    blueprint = Blueprint("radtriage_auth", __name__)
    blueprint.add_url_rule("/token", "token", token_endpoint, methods=["POST"])
    blueprint.add_url_rule("/jwks", "jwks", jwks_view, methods=["GET"])
    blueprint.add_url_rule(
        "/.well-known/smart-configuration", "smart_configuration", smart_configuration_view, methods=["GET"]
    )
    return blueprint
