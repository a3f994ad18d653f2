"""Retention: expired derived data is purged, each purge is audited, and the audit trail is kept."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from radtriage.compliance.audit import LOGIN, AuditContext, AuditRecord
from radtriage.compliance.audit_store import AuditLog
from radtriage.compliance.retention import FolderPurger, PurgeReport, cutoff_for, purge_expired

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def aged_file(path: Path, days_old: int, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    when = (NOW - timedelta(days=days_old)).timestamp()
    os.utime(path, (when, when))
    return path


def details(log: AuditLog, record_id: int) -> dict[str, str]:
    stored = log.get(record_id)
    assert stored is not None
    return {d["type"]: d["valueString"] for e in stored.resource().get("entity", []) for d in e.get("detail", [])}


def test_a_purge_removes_only_expired_files_and_is_audited(tmp_path: Path, audit_log: AuditLog) -> None:
    cache = tmp_path / "cache"
    old = aged_file(cache / "study-a" / "frame.npy", 40, 100)
    fresh = aged_file(cache / "study-b" / "frame.npy", 5, 50)
    audit_log.record(AuditRecord(LOGIN, client_id="ehr", recorded=NOW - timedelta(days=400)))  # very old audit row

    dry = purge_expired([FolderPurger(cache)], retention_days=30, audit=audit_log.record, now=NOW, dry_run=True)
    assert dry == [PurgeReport("pixel-cache", 1, 100)] and old.exists()

    reports = purge_expired(
        [FolderPurger(cache)],
        retention_days=30,
        audit=audit_log.record,
        now=NOW,
        context=AuditContext(user_id="os:ops"),
    )
    assert reports == [PurgeReport("pixel-cache", 1, 100)]
    assert not old.exists() and not old.parent.exists() and fresh.exists() and cache.exists()

    found, total = audit_log.search()
    assert total == 3  # the old audit row is kept; the dry run and the purge are on record
    assert [(e.kind, e.action) for e in found[:2]] == [("retention-purge", "D"), ("retention-purge", "E")]
    assert details(audit_log, found[0].id) == {
        "purger": "pixel-cache",
        "cutoff": "2025-05-02T00:00:00Z",
        "dry-run": "false",
        "items": "1",
        "studies": "0",
        "bytes": "100",
    }
    assert audit_log.verify().ok
    assert purge_expired([FolderPurger(cache)], retention_days=30, audit=audit_log.record, now=NOW)[0].items == 0


def test_a_failing_purger_is_audited_and_reraised(audit_log: AuditLog) -> None:
    def results_purger(cutoff: datetime, *, dry_run: bool) -> PurgeReport:
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        purge_expired([results_purger], retention_days=7, audit=audit_log.record, now=NOW)
    last = audit_log.get(audit_log.head().id)
    assert last is not None and last.kind == "retention-purge" and last.outcome == 8
    assert last.resource()["outcomeDesc"] == "OSError"


def test_retention_must_be_at_least_a_day() -> None:
    assert cutoff_for(1, NOW) == NOW - timedelta(days=1)
    with pytest.raises(ValueError):
        cutoff_for(0, NOW)


def test_symlinks_are_never_followed(tmp_path: Path, audit_log: AuditLog) -> None:
    outside = aged_file(tmp_path / "outside" / "keep.dcm", 100)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "link").symlink_to(outside.parent, target_is_directory=True)
    purge_expired([FolderPurger(cache)], retention_days=1, audit=audit_log.record, now=NOW)
    assert outside.exists()
