"""Signed-in people: the Flask session, its expiry, CSRF tokens, role checks and the audit context of a view.

A session is a signed cookie (Flask's, keyed with the web secret) holding the user name, a random session id,
a digest of the user's password hash, the time of sign-in and the time of the last request. The session id names
a row on the server (`radtriage.web.accounts.SessionStore`): signing out, disabling the user or changing their
password ends it there, so a copy of the cookie is worthless afterwards. It also ends after
`session_idle_minutes` without a request or `session_max_hours` after sign-in, whichever comes first; the user's
role is read from the users file at every request, so removing a user or changing a role takes effect at once.

Every form that changes something or discloses patient data on request (export, reveal, sign-out) carries a
CSRF token bound to the session (a synchronizer token, OWASP CSRF Prevention Cheat Sheet); JSON requests send
it in ``X-CSRF-Token``.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from flask import g, jsonify, redirect, request, session, url_for
from werkzeug.wrappers import Response

from ..compliance.audit import AuditContext, audit_context
from .accounts import SessionStore
from .settings import WebSettings
from .users import UserDirectory, WebUser

F = TypeVar("F", bound=Callable[..., Any])
#: The client id recorded in the audit trail for everything done through the web pages.
WEB_CLIENT_ID = "radtriage-web"
#: Sent by the pages' own background requests (the worklist poll), which must not count as activity.
BACKGROUND_HEADER = "X-Radtriage-Background"


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok() -> bool:
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf")
    return isinstance(expected, str) and hmac.compare_digest(sent.encode(), expected.encode())


def start_session(user: WebUser, session_id: str) -> None:
    session.clear()
    now = int(time.time())
    session.update(
        user=user.username,
        sid=session_id,
        pw=user.password_stamp,
        signed_in_at=now,
        last_seen=now,
        csrf=secrets.token_urlsafe(32),
    )
    session.permanent = True


def current_user() -> WebUser | None:
    return cast(WebUser | None, g.get("radtriage_web_user"))


def web_audit_context(user: WebUser) -> AuditContext:
    address = request.remote_addr if request.remote_addr and len(request.remote_addr) <= 255 else None
    return AuditContext(
        client_id=WEB_CLIENT_ID,
        user_id=user.username,
        role=user.role.value,
        peer_address=address,
        purpose_of_use=user.role.purpose_of_use,
    )


def wants_json() -> bool:
    return request.path.endswith(".json") or request.accept_mimetypes.best == "application/json"


def _signed_out(reason: str) -> Response:
    if wants_json():
        response = jsonify({"error": reason, "message": _REASONS[reason]})
        response.status_code = 401
        return response
    return redirect(
        url_for("web.login", next=request.full_path if request.query_string else request.path, reason=reason)
    )


_REASONS = {
    "signed-out": "Sign in to continue.",
    "expired": "Your session has expired. Sign in again to continue.",
    "unknown-user": "Your account is no longer active. Ask an administrator.",
    "ended": "Your session was ended (signed out elsewhere, or your password changed). Sign in again.",
}


def reason_text(reason: str | None) -> str | None:
    return _REASONS.get(reason or "")


def session_user(
    users: Callable[[], UserDirectory], settings: WebSettings, sessions: SessionStore
) -> tuple[WebUser | None, str | None]:
    """The user of this request's session and None, or None and why there is none (a `reason_text` key).
    A session that is over is cleared, and its server row ended."""
    username, session_id = session.get("user"), session.get("sid")
    if not isinstance(username, str) or not isinstance(session_id, str):
        session.clear()
        return None, "signed-out"
    now = int(time.time())
    last_seen, signed_in_at = int(session.get("last_seen", 0)), int(session.get("signed_in_at", 0))
    reason = None
    user = users().get(username)
    if now - last_seen > settings.session_idle_minutes * 60 or now - signed_in_at > settings.session_max_hours * 3600:
        reason = "expired"
    elif user is None:
        reason = "unknown-user"
    elif session.get("pw") != user.password_stamp or not sessions.is_live(session_id, username):
        reason = "ended"
    if reason is not None:
        sessions.end(session_id, reason)
        session.clear()
        return None, reason
    return user, None


def require_page(
    users: Callable[[], UserDirectory], settings: WebSettings, page: str, sessions: SessionStore
) -> Callable[[F], F]:
    """Decorate a view: only a signed-in user whose role may open `page`; runs it in the user's audit context."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            user, reason = session_user(users, settings, sessions)
            if user is None:
                return _signed_out(reason or "signed-out")
            now = int(time.time())
            if request.headers.get(BACKGROUND_HEADER) != "1":
                # A page polling by itself is not someone using it: only people's requests keep a session alive.
                session["last_seen"] = now
            g.radtriage_web_user = user
            if not user.may_open(page):
                from .views import render_message

                return render_message(
                    "Not available to your role",
                    f"Your role ({user.role.value}) does not include this page.",
                    status=403,
                )
            if request.method == "POST" and not csrf_ok():
                from .views import render_message

                return render_message(
                    "Form expired",
                    "This form was opened in an earlier session. Go back, reload the page and try again.",
                    status=400,
                )
            with _as(user):
                return view(*args, **kwargs)

        return cast(F, guarded)

    return decorate


@contextmanager
def _as(user: WebUser) -> Iterator[None]:
    with audit_context(web_audit_context(user)):
        yield
