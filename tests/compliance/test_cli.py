"""``radtriage audit verify`` / ``export`` as a user runs them (the click group the CLI mounts)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import Engine

from radtriage.compliance.audit import LOGIN, ORDER_RECEIVED, AuditRecord
from radtriage.compliance.audit_store import AuditLog
from radtriage.compliance.cli_commands import audit_group

from .conftest import drop_append_only_triggers


def run(engine: Engine, *args: str) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(
        audit_group, list(args), obj={"config": None}, env={"RADTRIAGE_DATABASE_URL": str(engine.url)}
    )
    return result.exit_code, result.stdout, result.stderr


def test_verify_export_and_verify_the_export(sqlite_engine: Engine, tmp_path: Path) -> None:
    log = AuditLog(sqlite_engine)
    for n in range(3):
        log.record(
            AuditRecord(ORDER_RECEIVED, client_id="ris", entities=(f"ServiceRequest/{n}",), patient_ref="Patient/p")
        )
    code, out, _ = run(sqlite_engine, "verify")
    assert code == 0 and "audit chain OK: 3 record(s)" in out

    target = tmp_path / "audit.csv"
    code, _, err = run(sqlite_engine, "export", "--format", "csv", "--patient", "Patient/p", "-o", str(target))
    assert code == 0 and "exported 3 record(s) as csv" in err
    head = log.head()
    assert head.id == 5 and f"#4 {log.get(4).hash}" in err  # type: ignore[union-attr]  # verify (4) came before
    code, out, _ = run(sqlite_engine, "verify", "--export", str(target), "--against-database")
    assert code == 0 and "export OK: 3 record(s)" in out
    kinds = [e.kind for e in log.search(limit=10)[0]]
    assert kinds[:3] == ["audit-verified", "audit-exported", "audit-verified"]

    target.write_text(target.read_text().replace("ServiceRequest/1", "ServiceRequest/9"))
    code, _, err = run(sqlite_engine, "verify", "--export", str(target))
    assert code == 1 and "BROKEN at record 2" in err


def test_verify_names_the_broken_record_and_exits_1(sqlite_engine: Engine) -> None:
    log = AuditLog(sqlite_engine)
    for n in range(4):
        log.record(AuditRecord(LOGIN, client_id=f"c{n}"))
    drop_append_only_triggers(sqlite_engine)
    with sqlite_engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM audit_events WHERE id = 2")
    code, _, err = run(sqlite_engine, "verify")
    assert code == 1 and "BROKEN at record 2: record 2 is missing" in err
    last = log.get(log.head().id)
    assert last is not None and last.kind == "audit-verified" and last.outcome == 8


def test_a_bad_range_exits_2_with_a_clear_message(sqlite_engine: Engine) -> None:
    code, _, err = run(sqlite_engine, "export", "--start", "2025-03-05", "--end", "2025-03-01")
    assert code == 2 and "error: the end of the range is not after its start" in err


def test_verifying_a_truncated_or_junk_export_never_says_record_none(sqlite_engine: Engine, tmp_path: Path) -> None:
    log = AuditLog(sqlite_engine)
    for n in range(3):
        log.record(AuditRecord(ORDER_RECEIVED, client_id="ris", entities=(f"ServiceRequest/{n}",)))
    target = tmp_path / "audit.ndjson"
    assert run(sqlite_engine, "export", "-o", str(target))[0] == 0
    lines = target.read_text().splitlines()
    for name, content in (("junk", "junk\n"), ("cut", "\n".join(lines[:2]) + "\n"), ("half", target.read_text()[:200])):
        broken = tmp_path / f"{name}.ndjson"
        broken.write_text(content)
        code, _, err = run(sqlite_engine, "verify", "--export", str(broken))
        assert code == 1 and "None" not in err and err.startswith("export NOT VERIFIED: "), (name, err)
