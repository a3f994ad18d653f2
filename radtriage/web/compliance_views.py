"""The compliance officer's page: audit search (filters, pages of `AUDIT_PAGE`), export and verification.

Every search, export and verification made here is itself recorded in the audit trail.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Blueprint, render_template, request, send_file, url_for

from ..compliance.audit import AUDIT_READ, AUDIT_VERIFIED, EVENT_KINDS, AuditOutcome, AuditRecord
from ..compliance.audit_store import AuditQueryError
from ..compliance.export import ExportFormat, build_filter, export_audit, verify_export
from .audit_rows import ACTION_NAMES, AuditRow
from .sessions import current_user, web_audit_context

if TYPE_CHECKING:
    from ..app.factory import Components

#: Largest audit export a compliance officer may upload for verification through the page.
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
#: Audit records per page of search results.
AUDIT_PAGE = 100


def add_compliance_routes(bp: Blueprint, components: Components, guard: Callable[[Any], Any]) -> None:
    """Register ``/compliance``, ``/compliance/export`` and ``/compliance/verify`` on `bp`, each behind `guard`
    (the compliance page's role check)."""
    audit = components.audit

    def _filter_fields(source: Any) -> dict[str, str]:
        fields = {
            name: (source.get(name) or "").strip()[:255]
            for name in ("start", "end", "patient", "action", "kind", "client", "outcome", "user")
        }
        return fields

    def _compliance(
        fields: dict[str, str],
        *,
        message: str | None = None,
        error: str | None = None,
        verification: dict[str, Any] | None = None,
        status: int = 200,
    ) -> Any:
        rows: list[AuditRow] = []
        total = offset = 0
        searched = any(fields.values()) or request.args.get("search") == "1"
        if searched and error is None:
            try:
                audit_filter = build_filter(**{k: (v or None) for k, v in fields.items()})
            except AuditQueryError as refused:
                error = refused.detail or "The search could not be understood."
            else:
                offset = max(0, _int(request.args.get("offset"), 0))
                events, total = audit.search(audit_filter, offset=offset, limit=AUDIT_PAGE)
                rows = [AuditRow.of(e) for e in events]
                audit.record(
                    AuditRecord.in_context(
                        AUDIT_READ,
                        interaction="search-type",
                        patient_ref=fields["patient"] or None,
                        query=request.full_path if request.query_string else request.path,
                        details={"matches": str(total), "view": "compliance"},
                    )
                )
        return render_template(
            "compliance.html",
            fields=fields,
            rows=rows,
            total=total,
            searched=searched,
            kinds=sorted(EVENT_KINDS.values(), key=lambda k: k.display),
            message=message,
            error=error,
            verification=verification,
            formats=list(ExportFormat),
            actions=ACTION_NAMES,
            pages=_audit_pages(fields, offset, total),
        ), status

    def _audit_pages(fields: dict[str, str], offset: int, total: int) -> dict[str, Any]:
        """Newer/older links for results beyond one page (the newest come first)."""
        params: dict[str, Any] = {"search": "1", **{k: v for k, v in fields.items() if v}}

        def at(position: int) -> str:
            return url_for("web.compliance_page", **(params | ({"offset": position} if position else {})))

        return {
            "first": offset + 1 if total else 0,
            "last": min(total, offset + AUDIT_PAGE),
            "newer": at(max(0, offset - AUDIT_PAGE)) if offset > 0 else None,
            "older": at(offset + AUDIT_PAGE) if offset + AUDIT_PAGE < total else None,
        }

    @bp.route("/compliance", methods=["GET"])
    @guard
    def compliance_page() -> Any:
        return _compliance(_filter_fields(request.args))

    @bp.route("/compliance/export", methods=["POST"])
    @guard
    def compliance_export() -> Any:
        fields = _filter_fields(request.form)
        fmt = request.form.get("format", "ndjson")
        try:
            audit_filter = build_filter(**{k: (v or None) for k, v in fields.items()})
            export_format = ExportFormat.parse(fmt)
        except AuditQueryError as refused:
            return _compliance(fields, error=refused.detail or "The export request is not valid.", status=400)
        _events, matching = audit.search(audit_filter, limit=1)
        if matching == 0:
            return _compliance(
                fields,
                message="No audit records match these filters, so there is nothing to "
                "export. Widen the date range or clear a filter.",
            )
        user = current_user()
        assert user is not None  # require_page guarantees it
        spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024, mode="w+", encoding="utf-8")
        summary = export_audit(
            audit,
            spool,
            fmt=export_format,
            context=web_audit_context(user),
            **{k: (v or None) for k, v in fields.items()},
        )
        spool.seek(0)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        extension = {"ndjson": "ndjson", "bundle": "json", "csv": "csv"}[export_format.value]
        data = spool.read().encode("utf-8")
        spool.close()
        response = send_file(
            io.BytesIO(data),
            mimetype=export_format.media_type,
            as_attachment=True,
            download_name=f"radtriage-audit-{stamp}.{extension}",
        )
        response.headers["X-Audit-Records"] = str(summary.records)
        response.headers["X-Audit-Head"] = f"{summary.head.id}:{summary.head.hash}"
        return response

    @bp.route("/compliance/verify", methods=["POST"])
    @guard
    def compliance_verify() -> Any:
        fields = _filter_fields(request.form)
        upload = request.files.get("export_file")
        if upload is not None and upload.filename:
            raw = upload.stream.read(MAX_UPLOAD_BYTES + 1)
            if len(raw) > MAX_UPLOAD_BYTES:
                return _compliance(
                    fields,
                    error="The file is larger than 200 MB; verify it with `radtriage audit verify-export` instead.",
                    status=413,
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                return _compliance(
                    fields, error="The file is not a text audit export (NDJSON, JSON or CSV).", status=400
                )
            checked = verify_export(io.StringIO(text), engine=components.engine)
            _audit_verification("export", checked.ok, {"records": str(checked.records)})
            verification = {
                "target": "export",
                "name": Path(upload.filename).name[:120],
                "ok": checked.ok,
                "records": checked.records,
                "head": checked.head,
                "first_broken_id": checked.first_broken_id,
                "reason": checked.reason,
            }
        else:
            result = audit.verify()
            _audit_verification("database", result.ok, {"checked": str(result.checked)})
            verification = {
                "target": "database",
                "ok": result.ok,
                "records": result.checked,
                "head": result.head,
                "first_broken_id": result.first_broken_id,
                "reason": result.reason,
            }
        return _compliance(fields, verification=verification)

    def _audit_verification(target: str, ok: bool, details: dict[str, str]) -> None:
        audit.record(
            AuditRecord.in_context(
                AUDIT_VERIFIED,
                outcome=AuditOutcome.SUCCESS if ok else AuditOutcome.SERIOUS_FAILURE,
                outcome_description=None if ok else f"{target}-broken",
                details={"target": target, **details},
            )
        )



def _int(text: str | None, default: int) -> int:
    try:
        return int(text or default)
    except ValueError:
        return default
