"""A client polling the same resource costs at most two chained audit records per minute, and every read counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from radtriage.app.storage import create_database_engine, migrate
from radtriage.compliance.audit import RESULT_READ, AuditRecord
from radtriage.compliance.audit_store import AuditFilter, AuditLog

T0 = datetime(2026, 12, 6, 8, 0, 5, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Engine:
    engine = create_database_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def poll(client: str, at: datetime, task: str = "Task/t1") -> AuditRecord:
    return AuditRecord(
        RESULT_READ,
        recorded=at,
        client_id=client,
        peer_address="127.0.0.1",
        interaction="read",
        entities=(task,),
        patient_ref="Patient/rr-1",
    )


def reads(log: AuditLog) -> list:
    return sorted(log.search(AuditFilter(kind="result-read"), limit=100)[0], key=lambda e: e.id)


def test_repeated_polls_are_counted_in_one_record_per_client_resource_and_minute(engine: Engine) -> None:
    log = AuditLog(engine)
    for n in range(30):
        log.record_read(poll("ris", T0 + timedelta(seconds=n)))
    log.record_read(poll("ehr", T0))  # another client is another record
    log.record_read(poll("ris", T0, task="Task/t2"))  # another resource too
    assert len(reads(log)) == 3
    # The next minute: the closed window's count is written, and the first read of the new window is recorded.
    log.record_read(poll("ris", T0 + timedelta(seconds=60)))
    stored = reads(log)
    summaries = [e.resource() for e in stored if "repeated" in str(e.resource().get("entity"))]
    assert len(stored) == 5 and len(summaries) == 1
    details = {d["type"]: d["valueString"] for d in summaries[0]["entity"][-1].get("detail", [])}
    assert details["repeated"] == "29" and details["window-seconds"] == "60"
    assert stored[-1].client_id == "ris"
    assert log.flush() == 0  # the new window has one read and no repeat yet
    assert log.verify().ok


def test_flush_writes_the_counts_of_open_windows(engine: Engine, tmp_path: Path) -> None:
    log = AuditLog(engine)
    for n in range(5):
        log.record_read(poll("ris", T0 + timedelta(seconds=n)))
    assert len(reads(log)) == 1
    assert log.flush() == 1
    assert len(reads(log)) == 2
    assert log.verify().ok
