"""The web pages: sign-in, worklist, study view, compliance (audit search, export, verification), model and
operations. Server-rendered Jinja templates; a little plain JavaScript for polling and the image viewer.

What is audited (`radtriage.compliance.audit`, with the signed-in user as ``user_id`` and ``radtriage-web`` as
the client): sign-in and failed sign-in; each distinct worklist a user is shown (one search record naming the
studies listed; patients are masked there, so no patient is named); revealing a patient's identifier; opening a
study, its image (display or full resolution) and each heatmap (a read naming the patient); audit searches,
exports and verifications. Re-polling an unchanged worklist adds no record.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, abort, jsonify, redirect, render_template, request, send_file, session, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from ..app.config import SettingsError
from ..app.core.domain import FindingScore, ImagingOrder, Job, Priority, TriageResult
from ..app.core.errors import ErrorCode, TriageError
from ..compliance.audit import (
    ACCOUNT_LOCKED,
    AUTHENTICATION_FAILED,
    LOGIN,
    LOGOUT,
    RESULT_READ,
    SIGN_IN_THROTTLED,
    STUDY_CLAIMED,
    STUDY_MARKED_READ,
    AuditOutcome,
    AuditRecord,
)
from .accounts import Refusal, SessionStore, SignInGuard
from .audit_rows import AuditRow
from .compliance_views import add_compliance_routes
from .imaging import PictureUnavailable, StudyPictures, heatmap_palette
from .markdown import render_markdown
from .queries import FAILURE_TEXT, SORTS, Status, WorklistQuery, WorklistRow, failure_text, operations, worklist
from .reading import ReadingLog, ReadingRefused
from .sessions import (
    WEB_CLIENT_ID,
    csrf_ok,
    csrf_token,
    current_user,
    reason_text,
    require_page,
    session_user,
    start_session,
    wants_json,
    web_audit_context,
)
from .settings import WebSettings
from .users import UserDirectory, WebRole
from .worklist_rows import row_json, sort_links

if TYPE_CHECKING:
    from ..app.factory import Components

log = logging.getLogger(__name__)

PRIORITY_ORDER = (Priority.STAT, Priority.ASAP, Priority.URGENT, Priority.ROUTINE)
#: How often the worklist asks for changes, in milliseconds.
POLL_INTERVAL_MS = 4000
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_PLOT_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}\.png$")


def render_message(title: str, message: str, *, status: int = 200, back: str | None = None) -> tuple[str, int]:
    """A page that says one thing clearly (errors, refusals) in the site's layout."""
    return render_template("message.html", title=title, message=message, back=back), status


# ---------------------------------------------------------------------------------------------- formatting


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def masked_patient(patient_ref: str, secret: str) -> str:
    """A short pseudonym, stable within this installation: tells studies of one patient apart from others'
    without showing who it is (a keyed hash, so it cannot be reversed by hashing known identifiers)."""
    digest = hashlib.blake2b(patient_ref.encode("utf-8"), key=secret.encode("utf-8")[:64], digest_size=4)
    return f"PT-{digest.hexdigest().upper()}"


def _finding_json(finding: FindingScore) -> dict[str, Any]:
    return {
        "label": finding.label,
        "probability": round(finding.probability, 4),
        "threshold": round(finding.threshold, 4),
        "positive": finding.positive,
    }


def _parse_priority(text: str) -> Priority | None:
    try:
        return Priority.from_code(text) if text else None
    except ValueError:
        return None


def _parse_status(text: str) -> Status | None:
    try:
        return Status(text) if text else None
    except ValueError:
        return None


OUTCOME_TEXT = {0: "success", 4: "minor failure", 8: "serious failure", 12: "major failure"}


# ---------------------------------------------------------------------------------------------- the blueprint


def web_blueprint(
    components: Components,
    *,
    web_settings: WebSettings | None = None,
    users: UserDirectory | None = None,
    draft_report: Callable[[str], str | None] | None = None,
) -> Blueprint:
    """The web pages over one set of components; mount at ``/`` (``app.register_blueprint(bp)``).

    `users` defaults to the users file named by the settings (read again when it changes); `draft_report`
    returns the draft report text of a job, when routine-case reporting is installed. Registering the blueprint
    sets the app's session secret and cookie flags (production refuses to start without a configured secret).
    """
    settings = web_settings or WebSettings.from_settings(components.settings)
    secret = settings.checked_secret()
    directory = _UserSource(settings, users)
    pictures = StudyPictures(
        components.service.source,
        components.service.selector,
        lambda: components.service.scorer,
        Path(components.settings.home) / "cache" / "web",
        max_pixels=settings.image_max_pixels,
    )
    audit = components.audit
    store = components.store
    sessions = SessionStore(components.engine)
    guard = SignInGuard(components.engine)
    reading = ReadingLog(components.engine)
    bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static/web")

    @bp.record_once
    def configure(state: Any) -> None:
        app: Flask = state.app
        app.secret_key = secret
        app.config.update(
            SESSION_COOKIE_NAME="radtriage_session",
            SESSION_COOKIE_HTTPONLY=True,
            SESSION_COOKIE_SAMESITE="Lax",
            SESSION_COOKIE_SECURE=settings.production,
            PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_max_hours),
        )

    def page(name: str) -> Callable[[Any], Any]:
        return require_page(directory.get, settings, name, sessions)

    @bp.app_template_global()
    def nav_pages() -> list[tuple[str, str, str]]:
        user = current_user()
        if user is None:
            return []
        entries = [
            ("worklist", "Worklist", "web.worklist_page"),
            ("compliance", "Compliance", "web.compliance_page"),
            ("model", "Model & operations", "web.model_page"),
        ]
        return [(name, label, url_for(endpoint)) for name, label, endpoint in entries if user.may_open(name)]

    @bp.context_processor
    def common() -> dict[str, Any]:
        return {
            "user": current_user(),
            "csrf_token": csrf_token,
            "human_duration": human_duration,
            "outcome_text": OUTCOME_TEXT,
        }

    @bp.after_request
    def headers(response: Response) -> Response:
        # Pages show patient data: never cache them on shared machines, never frame them, no foreign scripts.
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'"
        )
        return response

    @bp.errorhandler(Exception)
    def unexpected(error: Exception) -> Any:
        if isinstance(error, HTTPException):
            code = error.code or 500
            if code == 404:
                return render_message("Not found", "There is no such page or study.", status=404)
            if code == 405:
                return render_message("Not allowed", "This address does not accept that request.", status=405)
            if code == 413:
                return render_message("Too large", "The file is too large to upload here.", status=413)
            return render_message("Request refused", "The request could not be handled.", status=code)
        # Never a stack trace on the page; the log gets the type and frames (the message may hold patient data).
        log.error(
            "unexpected %s in web %s %s\n%s",
            type(error).__name__,
            request.method,
            request.url_rule.rule if request.url_rule else "-",
            "".join(traceback.format_tb(error.__traceback__)),
        )
        if request.path.endswith(".json"):
            return jsonify({"error": "internal", "message": "Something went wrong on the server."}), 500
        return render_message(
            "Something went wrong",
            "The page could not be shown because of an error on the server. It has been logged; try again.",
            status=500,
        )

    # ------------------------------------------------------------------ sign-in

    @bp.route("/", methods=["GET"])
    def home() -> Any:
        user, _reason = session_user(directory.get, settings, sessions)
        if user is None:
            return redirect(url_for("web.login"))
        for name, endpoint in (("worklist", "web.worklist_page"), ("compliance", "web.compliance_page")):
            if user.may_open(name):
                return redirect(url_for(endpoint))
        return redirect(url_for("web.model_page"))

    @bp.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        next_url = _safe_next(request.values.get("next", ""))
        if request.method == "GET":
            notice = reason_text(request.args.get("reason"))
            return render_template(
                "login.html", next_url=next_url, notice=notice, error=None, no_users=len(directory.get()) == 0
            )
        if not csrf_ok():
            return render_template(
                "login.html",
                next_url=next_url,
                notice=None,
                no_users=False,
                error="The sign-in form expired. Try again.",
            ), 400
        username = request.form.get("username", "").strip()[:64]
        password = request.form.get("password", "")
        address = request.remote_addr if request.remote_addr and len(request.remote_addr) <= 255 else None
        refusal = guard.refusal(username, address) if username else None
        if refusal is not None:
            return _refused_sign_in(username, address, refusal, next_url)
        user = directory.get().authenticate(username, password) if username and password else None
        if user is None:
            known = directory.get().get(username)
            audit.record(
                AuditRecord(
                    AUTHENTICATION_FAILED,
                    outcome=AuditOutcome.MINOR_FAILURE,
                    client_id=WEB_CLIENT_ID,
                    user_id=known.username if known else None,
                    peer_address=address,
                    outcome_description="invalid-credentials",
                    details={"method": "web-password"},
                )
            )
            if username and guard.failed(username, address):
                audit.record(
                    AuditRecord(
                        ACCOUNT_LOCKED,
                        outcome=AuditOutcome.MINOR_FAILURE,
                        client_id=WEB_CLIENT_ID,
                        user_id=known.username if known else None,
                        peer_address=address,
                        outcome_description="too-many-failures",
                        details={"method": "web-password", "locked_minutes": "15"},
                    )
                )
            return render_template(
                "login.html",
                next_url=next_url,
                notice=None,
                no_users=False,
                error="The user name or password is not right.",
            ), 401
        guard.succeeded(user.username)
        start_session(user, sessions.start(user.username))
        audit.record(AuditRecord.in_context(LOGIN, web_audit_context(user), details={"method": "web-password"}))
        return redirect(next_url or url_for("web.home"))

    def _refused_sign_in(username: str, address: str | None, refusal: Refusal, next_url: str) -> Any:
        known = directory.get().get(username)
        audit.record(
            AuditRecord(
                SIGN_IN_THROTTLED,
                outcome=AuditOutcome.MINOR_FAILURE,
                client_id=WEB_CLIENT_ID,
                user_id=known.username if known else None,
                peer_address=address,
                outcome_description=refusal.reason,
                details={"method": "web-password", "retry_after_s": str(refusal.retry_after_s)},
            )
        )
        wait = human_duration(refusal.retry_after_s)
        if refusal.reason == "account-locked":
            error = (
                f"This account is locked after repeated wrong passwords. Try again in {wait}, "
                "or ask an administrator to unlock it."
            )
        else:
            error = f"Too many wrong passwords from this computer. Wait {wait} before trying again."
        response = Response(
            render_template("login.html", next_url=next_url, notice=None, no_users=False, error=error),
            status=429,
            mimetype="text/html",
        )
        response.headers["Retry-After"] = str(refusal.retry_after_s)
        return response

    @bp.route("/logout", methods=["POST"])
    def logout() -> Any:
        if csrf_ok():
            user, _reason = session_user(directory.get, settings, sessions)
            session_id = session.get("sid")
            if user is not None and isinstance(session_id, str):
                sessions.end(session_id, "signed-out")
                audit.record(AuditRecord.in_context(LOGOUT, web_audit_context(user)))
            session.clear()
        return redirect(url_for("web.login", reason="signed-out"))

    # ------------------------------------------------------------------ worklist

    def _query() -> WorklistQuery:
        sort = request.args.get("sort", "priority")
        return WorklistQuery(
            status=_parse_status(request.args.get("status", "")),
            priority=_parse_priority(request.args.get("priority", "")),
            search=request.args.get("q", "")[:64],
            flagged_only=request.args.get("flagged") == "1",
            include_read=request.args.get("read") == "1",
            sort=sort if sort in SORTS else "priority",
            descending=request.args.get("dir") == "desc",
        )

    def _row_json(row: WorklistRow, now: datetime) -> dict[str, Any]:
        return row_json(
            row,
            now,
            url=url_for,
            patient=masked_patient(row.patient_ref, secret),
            header=pictures.header(row.study_instance_uid),
            human_duration=human_duration,
        )

    def _audit_worklist(rows: list[WorklistRow]) -> None:
        """One record per distinct list shown to this session (see the module docstring)."""
        shown = hashlib.sha256("\n".join(r.job_id for r in rows).encode()).hexdigest()[:32]
        if session.get("worklist_audited") == shown:
            return
        audit.record(
            AuditRecord.in_context(
                RESULT_READ,
                interaction="search-type",
                entities=tuple(f"Task/{r.job_id}" for r in rows),
                query=request.full_path if request.query_string else request.path,
                details={"matches": str(len(rows)), "view": "worklist", "patients": "masked", "thumbnails": "shown"},
            )
        )
        session["worklist_audited"] = shown

    @bp.route("/worklist", methods=["GET"])
    @page("worklist")
    def worklist_page() -> Any:
        query = _query()
        rows, total = worklist(components.engine, query)
        _audit_worklist(rows)
        now = datetime.now(UTC)
        return render_template(
            "worklist.html",
            rows=[_row_json(r, now) for r in rows],
            total=total,
            query=query,
            statuses=list(Status),
            priorities=PRIORITY_ORDER,
            poll_ms=POLL_INTERVAL_MS,
            sorts=sort_links(query, request.args.to_dict(), url_for),
            back=request.full_path if request.query_string else request.path,
        )

    @bp.route("/worklist.json", methods=["GET"])
    @page("worklist")
    def worklist_json() -> Any:
        rows, total = worklist(components.engine, _query())
        _audit_worklist(rows)
        now = datetime.now(UTC)
        shown = [_row_json(r, now) for r in rows]
        back = request.args.get("back", "")
        html = render_template("_worklist_rows.html", rows=shown, back=_safe_next(back) or url_for("web.worklist_page"))
        return jsonify({"total": total, "rows": shown, "html": html, "at": now.isoformat()})

    @bp.route("/studies/<job_id>/thumb.png", methods=["GET"])
    @page("worklist")
    def study_thumbnail(job_id: str) -> Any:
        """The worklist's small picture; covered by the worklist's own audit record ("thumbnails": "shown")."""
        _job, order, result = _load(job_id)
        try:
            png = pictures.thumbnail(order, result)
        except PictureUnavailable as error:
            return jsonify({"error": "image-unavailable", "message": error.message}), error.status
        response = send_file(_bytes(png), mimetype="image/png", max_age=0)
        response.headers["Cache-Control"] = "private, max-age=600"
        return response

    @bp.route("/studies/<job_id>/reading", methods=["POST"])
    @page("study")
    def study_reading(job_id: str) -> Any:
        """Claim, release, mark read or unread (form field ``action``); audited; back to ``next``."""
        job, order, _result = _load(job_id)
        user = current_user()
        assert user is not None  # require_page guarantees it
        action = request.form.get("action", "")
        admin = user.role is WebRole.ADMIN
        try:
            change: Callable[[], object] = {
                "claim": lambda: reading.claim(job.id, user.username),
                "release": lambda: reading.release(job.id, user.username, may_release_others=admin),
                "read": lambda: reading.mark_read(job.id, user.username),
                "unread": lambda: reading.mark_unread(job.id),
            }[action]
        except KeyError:
            return render_message("Not understood", "Choose claim, release, read or unread.", status=400)
        try:
            change()
        except ReadingRefused as refused:
            if wants_json():
                return jsonify({"error": "refused", "message": f"This study is {refused}."}), 409
            back = url_for("web.worklist_page")
            return render_message("Not changed", f"This study is {refused}.", status=409, back=back)
        audit.record(
            AuditRecord.in_context(
                STUDY_MARKED_READ if action in ("read", "unread") else STUDY_CLAIMED,
                entities=(f"Task/{job.id}",),
                patient_ref=order.patient_ref,
                details={"action": action},
            )
        )
        if wants_json():
            return jsonify({"ok": True, "action": action})
        return redirect(_safe_next(request.form.get("next", "")) or url_for("web.study_page", job_id=job.id))

    @bp.route("/studies/<job_id>/patient.json", methods=["POST"])
    @page("study")
    def reveal_patient(job_id: str) -> Any:
        job, order, _result = _load(job_id)
        _audit_read(job, order, "patient-identifier")
        return jsonify({"patient": order.patient_ref})

    # ------------------------------------------------------------------ study view

    def _load(job_id: str) -> tuple[Job, ImagingOrder, TriageResult | None]:
        if not _JOB_ID.match(job_id):
            abort(404)
        try:
            job = components.service.job(job_id)
            order = components.service.order(job.order_id)
        except TriageError as error:
            if error.code is ErrorCode.NOT_FOUND:
                abort(404)
            raise
        return job, order, store.get_result(job_id)

    def _audit_read(job: Job, order: ImagingOrder, view: str) -> None:
        audit.record(
            AuditRecord.in_context(
                RESULT_READ,
                interaction="read",
                entities=(f"Task/{job.id}",),
                patient_ref=order.patient_ref,
                details={"view": view},
            )
        )

    def _study_history(job: Job, order: ImagingOrder) -> list[AuditRow]:
        from ..compliance.audit_store import AuditFilter

        events, _total = audit.search(AuditFilter(patient=order.patient_ref), limit=500)
        mine = [e for e in events if job.id in e.resource_text]
        return [AuditRow.of(e) for e in mine]

    @bp.route("/studies/<job_id>", methods=["GET"])
    @page("study")
    def study_page(job_id: str) -> Any:
        job, order, result = _load(job_id)
        _audit_read(job, order, "study")
        status = Status.of(job.state)
        findings = sorted(result.findings, key=lambda f: (not f.positive, -f.probability)) if result else []
        positive = [f for f in findings if f.positive]
        draft = draft_report(job.id) if draft_report else None
        now = datetime.now(UTC)
        received = order.received_at or now
        taken = reading.get(job.id)
        return render_template(
            "study.html",
            job=job,
            order=order,
            result=result,
            status=status,
            reason=failure_text(job.failure_code) if status is Status.NOT_ANALYSED else None,
            findings=findings,
            positive=positive,
            palette=heatmap_palette([f.label for f in positive]),
            not_assessed=result.not_assessed if result else (),
            draft=draft,
            events=store.events(job.id),
            history=_study_history(job, order),
            patient=masked_patient(order.patient_ref, secret),
            header=pictures.header(order.study_instance_uid),
            reading=taken,
            back=request.path,
            waited=human_duration(((taken.waiting_ended_at or now) - received).total_seconds()),
            waiting_over=taken.waiting_ended_at is not None,
        )

    @bp.route("/studies/<job_id>/image.png", methods=["GET"])
    @page("study")
    def study_image(job_id: str) -> Any:
        job, order, result = _load(job_id)
        full = request.args.get("full") == "1"
        try:
            picture = pictures.image(order, result, full=full)
        except PictureUnavailable as error:
            return jsonify({"error": "image-unavailable", "message": error.message}), error.status
        _audit_read(job, order, "image-full" if full else "image")
        response = send_file(_bytes(picture.png), mimetype="image/png", max_age=0)
        response.headers["Cache-Control"] = "private, max-age=300"
        response.headers["X-Image-Size"] = f"{picture.original_width}x{picture.original_height}"
        response.headers["X-Image-Downscaled"] = "1" if picture.downscaled else "0"
        return response

    @bp.route("/studies/<job_id>/heatmaps/<label>.png", methods=["GET"])
    @page("study")
    def study_heatmap(job_id: str, label: str) -> Any:
        job, order, result = _load(job_id)
        if result is None:
            return jsonify({"error": "not-scored", "message": "This study has not been scored yet."}), 404
        try:
            picture = pictures.heatmap(order, result, label)
        except PictureUnavailable as error:
            return jsonify({"error": "heatmap-unavailable", "message": error.message}), error.status
        _audit_read(job, order, f"heatmap:{label}"[:200])
        response = send_file(_bytes(picture.png), mimetype="image/png", max_age=0)
        response.headers["Cache-Control"] = "private, max-age=300"
        return response

    add_compliance_routes(bp, components, page("compliance"))

    # ------------------------------------------------------------------ model and operations

    @bp.route("/model", methods=["GET"])
    @page("model")
    def model_page() -> Any:
        from ..model.registry import list_models

        model_error = None
        try:
            registered = list_models(components.settings.home)
        except TriageError as error:
            registered, model_error = [], error.detail or "The model registry cannot be read."
        active = next((m for m in registered if m.active), None)
        card = None
        plots: list[str] = []
        evaluation = None
        if active is not None:
            card_path = active.path / "MODEL_CARD.md"
            if card_path.exists():
                card = render_markdown(card_path.read_text(encoding="utf-8"))
            plot_dir = active.path / "plots"
            plots = sorted((p.name for p in plot_dir.glob("*.png")), key=_plot_order) if plot_dir.is_dir() else []
            evaluation = _evaluation_summary(active.path)
        ops = operations(components.engine)
        live_charts = _live_charts(components)
        from ..monitoring.site_drift import site_status  # issue 10: shadow mode and site drift banners

        return render_template(
            "model.html",
            site=site_status(components),
            live_charts=live_charts,
            models=registered,
            active=active,
            model_error=model_error,
            card=card,
            plots=plots,
            evaluation=evaluation,
            ops=ops,
            failure_text=FAILURE_TEXT,
            live=_live_performance(components.engine),
            min_cases=components.settings.drift_min_cases,
        )

    @bp.route("/model/live/<name>", methods=["GET"])
    @page("model")
    def live_plot(name: str) -> Any:
        """A chart of the live report (`_live_charts` draws them at most once a minute)."""
        path = _live_folder(components) / "plots" / name
        if not _PLOT_NAME.match(name) or not path.is_file():
            abort(404)
        response = send_file(path, mimetype="image/png", max_age=60)
        response.headers["Cache-Control"] = "private, max-age=60"
        return response

    @bp.route("/model/plots/<name>", methods=["GET"])
    @page("model")
    def model_plot(name: str) -> Any:
        from ..model.registry import list_models

        active = next((m for m in list_models(components.settings.home) if m.active), None)
        if active is None or not _PLOT_NAME.match(name):
            abort(404)
        path = active.path / "plots" / name
        if not path.is_file():
            abort(404)
        response = send_file(path, mimetype="image/png", max_age=3600)
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    return bp


# ---------------------------------------------------------------------------------------------- helpers


class _UserSource:
    """The user directory: given, or read from the users file and re-read when the file changes."""

    def __init__(self, settings: WebSettings, users: UserDirectory | None) -> None:
        self._fixed = users
        self._path = Path(settings.users_file) if settings.users_file else None
        self._loaded: tuple[float, UserDirectory] | None = None
        if users is None and self._path is None:
            log.warning("no web users file (web_users): nobody can sign in to the web pages")
        if users is None and self._path is not None:
            self.get()  # a missing or malformed users file stops the start, not the first sign-in

    def get(self) -> UserDirectory:
        if self._fixed is not None:
            return self._fixed
        if self._path is None:
            return UserDirectory()
        try:
            mtime = self._path.stat().st_mtime
            if self._loaded is None or self._loaded[0] != mtime:
                self._loaded = (mtime, UserDirectory.from_file(self._path))
        except (OSError, ValueError, KeyError, TypeError) as error:
            if self._loaded is None:  # at start-up: one line naming the setting, not a traceback
                raise SettingsError(
                    "web_users", "the users file", f"{self._path} cannot be read ({type(error).__name__})"
                ) from None
            # Edited into a broken state while running: keep the last good list rather than lock everyone out.
            log.error("the web users file cannot be read (%s); keeping the previous users", type(error).__name__)
            return self._loaded[1]
        return self._loaded[1]


def _live_performance(engine: Any) -> dict[str, Any] | None:
    """Live performance against radiologists' final reports, from `radtriage.monitoring` when it is installed
    (None when it is not, or cannot answer: the page then shows the evaluation and the job tables only)."""
    if importlib.util.find_spec("radtriage.monitoring") is None:
        return None
    try:
        from ..monitoring import metrics  # optional: built alongside these pages

        cases = metrics.labelled_cases(engine)
        summary: dict[str, Any] = metrics.performance(cases, bootstrap=0, group_by=())
    except Exception as error:  # an optional panel must never take the page down
        log.warning("live monitoring figures unavailable (%s)", type(error).__name__)
        return None
    rows = []
    for label, m in (summary.get("findings") or {}).items():
        rows.append(
            {
                "label": label,
                "n": m.get("n"),
                "positives": m.get("positives"),
                "sensitivity": (m.get("sensitivity") or {}).get("value"),
                "specificity": (m.get("specificity") or {}).get("value"),
                "auroc": (m.get("auroc") or {}).get("value"),
            }
        )
    return {"cases": summary.get("cases", 0), "rows": rows}


#: The live report behind the charts is redrawn at most this often (it recomputes every metric).
LIVE_REPORT_SECONDS = 60


def _live_folder(components: Any) -> Path:
    return Path(components.settings.home) / "cache" / "web" / "live"


def _live_charts(components: Any) -> dict[str, Any] | None:
    """Trend, ROC and calibration against final reports, and the drift checks, from `radtriage.monitoring`'s own
    report (drawn into the web cache, at most once a minute). None when monitoring is not installed or fails."""
    monitoring = getattr(components, "monitoring", None)
    if monitoring is None:
        return None
    folder = _live_folder(components)
    metrics_file = folder / "metrics.json"
    try:
        import time

        if not metrics_file.exists() or time.time() - metrics_file.stat().st_mtime > LIVE_REPORT_SECONDS:
            from ..monitoring.report import write_report

            write_report(monitoring, folder)
        snapshot = json.loads(metrics_file.read_text(encoding="utf-8"))
    except Exception as error:  # an optional panel must never take the page down
        log.warning("live monitoring charts unavailable (%s)", type(error).__name__)
        return None
    plots = sorted((p.name for p in (folder / "plots").glob("*.png")), key=_plot_order)
    return {"plots": plots, "drift": snapshot.get("drift", []), "window": snapshot.get("window", {})}


def _plot_order(name: str) -> tuple[int, str, str]:
    """ROC curves first, then calibration, each by finding: the order a reader compares them in."""
    kind, _, finding = name.removesuffix(".png").partition("_")
    return ({"trend": -1, "roc": 0, "calibration": 1}.get(kind.removesuffix(".png"), 2), finding, name)


def _safe_next(target: str) -> str:
    """Only a path on this site (no scheme, no host, no protocol-relative ``//``): no open redirect."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target and "\n" not in target:
        return target
    return ""


def _int(text: str | None, default: int) -> int:
    try:
        return int(text or default)
    except ValueError:
        return default


def _bytes(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


def _evaluation_summary(folder: Path) -> dict[str, Any] | None:
    """Headline numbers from the artefact's evaluation.json: per finding, AUROC (with its 95% interval),
    sensitivity and specificity at the shipped operating point, on the held-out test split of each source and
    on each source left out of training (the figure that says how the model does at a hospital it never saw).
    Older artefacts (one held-out split and external data) are read too."""
    path = folder / "evaluation.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    sections = _per_source_sections(data) or _held_out_sections(data)
    return {
        "evaluated_at": data.get("evaluated_at"),
        "threshold_source": data.get("threshold_source"),
        "target_sensitivity": data.get("target_sensitivity"),
        "sections": sections,
    }


def _metric_row(label: str, m: dict[str, Any]) -> dict[str, Any]:
    interval = m.get("auroc_ci95") or [None, None]
    return {
        "label": label,
        "n": m.get("n"),
        "positives": m.get("positives"),
        "auroc": m.get("auroc"),
        "ci_low": interval[0],
        "ci_high": interval[1],
        "sensitivity": m.get("sensitivity", m.get("recall")),
        "specificity": m.get("specificity"),
        "threshold": m.get("threshold"),
    }


def _per_source_sections(data: dict[str, Any]) -> list[dict[str, Any]]:
    titles = {
        "per_source_test": "Held-out test split, by source",
        "leave_one_source_out": "Each source left out of training, then scored",
    }
    sections = []
    for key, title in titles.items():
        block = data.get(key)
        if not isinstance(block, dict):
            continue
        rows = []
        for source, metrics in block.items():
            if not isinstance(metrics, dict):
                continue
            for label, m in metrics.items():
                if isinstance(m, dict) and "n" in m and ("auroc" in m or "specificity" in m):
                    rows.append(_metric_row(f"{source} · {label}", m))
        images = sum(int(m.get("images") or 0) for m in block.values() if isinstance(m, dict))
        sections.append({"name": title, "images": images or None, "rows": rows})
    return sections


def _held_out_sections(data: dict[str, Any]) -> list[dict[str, Any]]:
    sections = []
    for key in ("held_out", "external"):
        block = data.get(key)
        if not isinstance(block, dict):
            continue
        everything = (block.get("groups") or {}).get("all") or {}
        rows = [_metric_row(label, m) for label, m in everything.items() if isinstance(m, dict)]
        sections.append({"name": block.get("description") or key, "images": block.get("images"), "rows": rows})
    return sections


__all__ = ["web_blueprint", "render_message", "masked_patient"]
