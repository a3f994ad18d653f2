"""``radtriage audit verify`` and ``radtriage audit export``: a click group the CLI mounts with
``main.add_command(audit_group)``.

Both commands are themselves audited (who: the operating-system user running them; why: health compliance).
Exit status: 0 when the chain or export verifies, 1 when it does not, 2 for a request that cannot be run.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Any

import click

from .audit import AUDIT_VERIFIED, AuditContext, AuditOutcome, AuditRecord
from .audit_store import AuditLog, AuditQueryError
from .export import ExportFormat, export_audit, verify_export


def _operator() -> AuditContext:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (containers)
        user = "unknown"
    return AuditContext(user_id=f"os:{user}"[:255], purpose_of_use="HCOMPL")


def _log(obj: Any) -> AuditLog:
    from ..app.config import load_settings
    from ..app.storage import create_database_engine, migrate

    config = obj.get("config") if isinstance(obj, dict) else None
    settings = load_settings(config)
    engine = create_database_engine(settings.resolved_database_url())
    migrate(engine)
    return AuditLog(engine)


@click.group("audit")
def audit_group() -> None:
    """The audit trail: verify its hash chain, export it for compliance officers."""


@audit_group.command("verify")
@click.option(
    "--export",
    "export_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verify this export file on its own instead of the database.",
)
@click.option("--against-database", is_flag=True, help="With --export: also check its head is in the database.")
@click.pass_obj
def verify_command(obj: Any, export_file: Path | None, against_database: bool) -> None:
    """Recompute the hash chain and name the first broken record (exit 1 if there is one)."""
    if export_file is not None:
        log = _log(obj) if against_database else None
        export_result = verify_export(export_file, engine=log.engine if log else None)
        if log is not None:
            log.record(
                AuditRecord.in_context(
                    AUDIT_VERIFIED,
                    _operator(),
                    outcome=AuditOutcome.SUCCESS if export_result.ok else AuditOutcome.SERIOUS_FAILURE,
                    outcome_description=None if export_result.ok else "export-broken",
                    details={"target": "export", "records": str(export_result.records)},
                )
            )
        head = export_result.head
        where = f"head #{head.id} {head.hash}" if head else "no head"
        if export_result.ok:
            click.echo(f"export OK: {export_result.records} record(s), {where}")
            return
        if export_result.first_broken_id is None:  # not a record that is wrong: the file as a whole
            click.echo(f"export NOT VERIFIED: {export_result.reason}", err=True)
        else:
            click.echo(f"export BROKEN at record {export_result.first_broken_id}: {export_result.reason}", err=True)
        sys.exit(1)
    log = _log(obj)
    result = log.verify()
    log.record(
        AuditRecord.in_context(
            AUDIT_VERIFIED,
            _operator(),
            outcome=AuditOutcome.SUCCESS if result.ok else AuditOutcome.SERIOUS_FAILURE,
            outcome_description=None if result.ok else "chain-broken",
            details={"target": "database", "checked": str(result.checked)}
            | ({"first-broken-id": str(result.first_broken_id)} if result.first_broken_id else {}),
        )
    )
    if result.ok:
        head = result.head
        click.echo(
            f"audit chain OK: {result.checked} record(s), head #{head.id if head else 0} {head.hash if head else ''}"
        )
        return
    click.echo(f"audit chain BROKEN at record {result.first_broken_id}: {result.reason}", err=True)
    sys.exit(1)


@audit_group.command("export")
@click.option(
    "--format", "fmt", type=click.Choice([f.value for f in ExportFormat]), default="ndjson", show_default=True
)
@click.option("--start", help="First day or instant included (FHIR date or date-time with time zone).")
@click.option("--end", help="Last day or instant included.")
@click.option("--patient", help="Only records about this patient reference (as recorded, e.g. Patient/123).")
@click.option("--action", type=click.Choice(["C", "R", "U", "D", "E"], case_sensitive=False))
@click.option("--kind", help="Only this radtriage event kind (order-received, authentication-failed, ...).")
@click.option("--client", help="Only records of this client id.")
@click.option("--user", help="Only records naming this person (user id, e.g. a web user name).")
@click.option("--outcome", type=click.Choice(["0", "4", "8", "12"]))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File to write (default: stdout)."
)
@click.pass_obj
def export_command(
    obj: Any,
    fmt: str,
    start: str | None,
    end: str | None,
    patient: str | None,
    action: str | None,
    kind: str | None,
    client: str | None,
    user: str | None,
    outcome: str | None,
    output: Path | None,
) -> None:
    """Export audit records with the chain head hash, so the file can be verified on its own later."""
    log = _log(obj)
    try:
        if output is None:
            summary = _export(log, sys.stdout, fmt, start, end, patient, action, kind, client, outcome, user)
        else:
            with output.open("w", encoding="utf-8", newline="") as out:
                summary = _export(log, out, fmt, start, end, patient, action, kind, client, outcome, user)
    except AuditQueryError as error:
        click.echo(f"error: {error.detail}", err=True)
        sys.exit(2)
    click.echo(
        f"exported {summary.records} record(s) as {summary.format.value}; "
        f"chain head #{summary.head.id} {summary.head.hash} (keep this line to verify the export later)",
        err=True,
    )


def _export(log: AuditLog, out: Any, fmt: str, *args: str | None) -> Any:
    start, end, patient, action, kind, client, outcome, user = args
    return export_audit(
        log,
        out,
        fmt=fmt,
        start=start,
        end=end,
        patient=patient,
        action=action,
        kind=kind,
        client=client,
        outcome=outcome,
        user=user,
        context=_operator(),
    )
