"""The audit store on SQLite and PostgreSQL: append-only in the database, hash-chained, verifiable."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from radtriage.app.storage import create_database_engine, migrate
from radtriage.app.storage.audit_tables import audit_chain_head, audit_events, oauth_seen_jti
from radtriage.app.storage.schema import metadata
from radtriage.app.storage.tables import orders
from radtriage.compliance.audit import (
    AUTHENTICATION_FAILED,
    LOGIN,
    ORDER_RECEIVED,
    RESULT_READ,
    AuditOutcome,
    AuditRecord,
)
from radtriage.compliance.audit_store import (
    GENESIS_HASH,
    AuditLog,
    append,
    canonical_json,
    chain_hash,
    content_sha256,
    verify,
)

from .conftest import SOURCE, drop_append_only_triggers

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def record(n: int, **fields: object) -> AuditRecord:
    values: dict[str, object] = {
        "kind": ORDER_RECEIVED,
        "recorded": T0 + timedelta(minutes=n),
        "client_id": f"client-{n % 3}",
        "peer_address": "10.1.2.3",
        "interaction": "create",
        "entities": (f"ServiceRequest/sr{n}",),
        "patient_ref": f"Patient/p{n % 2}",
    }
    values.update(fields)
    return AuditRecord(**values)  # type: ignore[arg-type]


def fill(log: AuditLog, count: int) -> None:
    for n in range(1, count + 1):
        log.record(record(n))


def test_records_form_a_chain_from_genesis_to_the_head(audit_log: AuditLog) -> None:
    first = audit_log.record(record(1))
    second = audit_log.record(record(2))
    assert (first.id, second.id) == (1, 2)
    assert first.prev_hash == GENESIS_HASH and second.prev_hash == first.hash
    assert first.content_sha256 == content_sha256(first.resource_text)
    assert second.hash == chain_hash(2, first.hash, second.content_sha256)
    assert audit_log.head().id == 2 and audit_log.head().hash == second.hash
    assert first.resource()["id"] == "1" and first.resource()["resourceType"] == "AuditEvent"
    result = audit_log.verify()
    assert result.ok and result.checked == 2 and result.head == audit_log.head()


def test_an_empty_trail_verifies(audit_log: AuditLog) -> None:
    result = audit_log.verify()
    assert result.ok and result.checked == 0 and result.head is not None and result.head.hash == GENESIS_HASH


def test_indexed_columns_come_from_the_resource(audit_log: AuditLog) -> None:
    stored = audit_log.record(record(1, recorded=T0))
    assert (stored.kind, stored.action, stored.outcome) == ("order-received", "C", 0)
    assert (stored.client_id, stored.patient_ref) == ("client-1", "Patient/p1")
    again = audit_log.get(1)
    assert again is not None and again.recorded == T0 and again.patient_ref == "Patient/p1"


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET outcome = 8",
        "UPDATE audit_events SET resource = '{}' WHERE id = 1",
        "DELETE FROM audit_events WHERE id = 1",
        "DELETE FROM audit_events",
        "DELETE FROM audit_chain_head",
        "UPDATE audit_chain_head SET last_id = 0, last_hash = '" + "0" * 64 + "'",
        "UPDATE audit_chain_head SET last_hash = 'forged'",
        "UPDATE audit_chain_head SET last_id = last_id + 1, last_hash = 'forged'",
    ],
)
def test_the_database_refuses_to_change_or_remove_audit_rows(audit_log: AuditLog, statement: str) -> None:
    fill(audit_log, 2)
    with pytest.raises(DBAPIError, match="append-only|only advances|cannot be deleted"):
        with audit_log.engine.begin() as connection:
            connection.execute(text(statement))
    assert audit_log.verify().ok
    with audit_log.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one() == 2


def test_postgresql_refuses_truncate(audit_log: AuditLog) -> None:
    if audit_log.engine.dialect.name != "postgresql":
        pytest.skip("TRUNCATE exists on PostgreSQL only")
    fill(audit_log, 1)
    with pytest.raises(DBAPIError, match="append-only"):
        with audit_log.engine.begin() as connection:
            connection.execute(text("TRUNCATE audit_events CASCADE"))


def _order_row(order_id: str) -> dict[str, object]:
    return {
        "id": order_id,
        "source": "fhir",
        "source_key": order_id,
        "study_instance_uid": "1.2.3",
        "patient_ref": "Patient/p1",
        "requested_priority": 0,
        "received_at": datetime.now(UTC),
    }


def test_an_audit_row_commits_and_rolls_back_with_the_callers_transaction(audit_log: AuditLog) -> None:
    engine = audit_log.engine
    with pytest.raises(RuntimeError, match="boom"):
        with engine.begin() as connection:
            connection.execute(insert(orders).values(_order_row("a" * 32)))
            append(connection, record(1), source=SOURCE)
            raise RuntimeError("boom")
    assert audit_log.head().id == 0 and audit_log.get(1) is None
    with engine.connect() as connection:
        assert connection.execute(select(orders.c.id)).all() == []
    with engine.begin() as connection:
        connection.execute(insert(orders).values(_order_row("b" * 32)))
        stored = append(connection, record(1), source=SOURCE)
    assert audit_log.get(stored.id) is not None and audit_log.verify().ok
    with engine.connect() as connection:
        assert connection.execute(select(orders.c.id)).scalars().all() == ["b" * 32]


def test_concurrent_appends_are_serialised(audit_log: AuditLog) -> None:
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for n in range(8):
                audit_log.record(record(n, client_id=f"worker-{worker}"))
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    result = audit_log.verify()
    assert result.ok and result.checked == 32
    with audit_log.engine.connect() as connection:
        ids = connection.execute(select(audit_events.c.id).order_by(audit_events.c.id)).scalars().all()
    assert ids == list(range(1, 33))


# ---------------------------------------------------------------------------------------------- tampering


def tamper(engine: Engine, *statements: str) -> None:
    drop_append_only_triggers(engine)
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))


def test_a_changed_record_is_named(audit_log: AuditLog) -> None:
    fill(audit_log, 5)
    tamper(audit_log.engine, "UPDATE audit_events SET resource = replace(resource, '\"C\"', '\"R\"') WHERE id = 3")
    result = audit_log.verify()
    assert not result.ok and result.first_broken_id == 3 and "changed" in (result.reason or "")
    assert result.checked == 2


def test_a_changed_record_with_recomputed_hashes_breaks_the_next_link(audit_log: AuditLog) -> None:
    fill(audit_log, 5)
    row = audit_log.get(3)
    assert row is not None
    forged = row.resource_text.replace('"action":"C"', '"action":"R"')
    digest = content_sha256(forged)
    drop_append_only_triggers(audit_log.engine)
    with audit_log.engine.begin() as connection:
        connection.execute(
            update(audit_events)
            .where(audit_events.c.id == 3)
            .values(resource=forged, content_sha256=digest, action="R", hash=chain_hash(3, row.prev_hash, digest))
        )
    result = audit_log.verify()
    assert not result.ok and result.first_broken_id == 4 and "previous-hash" in (result.reason or "")


def test_a_changed_index_column_is_detected(audit_log: AuditLog) -> None:
    fill(audit_log, 3)
    tamper(audit_log.engine, "UPDATE audit_events SET outcome = 4 WHERE id = 2")
    result = audit_log.verify()
    assert not result.ok and result.first_broken_id == 2 and "outcome" in (result.reason or "")


def test_a_deleted_record_is_named(audit_log: AuditLog) -> None:
    fill(audit_log, 5)
    tamper(audit_log.engine, "DELETE FROM audit_events WHERE id = 3")
    result = audit_log.verify()
    assert not result.ok and result.first_broken_id == 3 and "missing" in (result.reason or "")


def test_deleted_newest_records_are_detected_by_the_head(audit_log: AuditLog) -> None:
    fill(audit_log, 5)
    tamper(audit_log.engine, "DELETE FROM audit_events WHERE id >= 4")
    result = audit_log.verify()
    assert not result.ok and result.first_broken_id == 4 and "4 to 5" in (result.reason or "")


def test_reordered_records_are_detected(audit_log: AuditLog) -> None:
    fill(audit_log, 5)
    tamper(
        audit_log.engine,
        "UPDATE audit_events SET id = -1 WHERE id = 2",
        "UPDATE audit_events SET id = 2 WHERE id = 4",
        "UPDATE audit_events SET id = 4 WHERE id = -1",
    )
    result = audit_log.verify()
    assert not result.ok and result.first_broken_id == 2


def test_reordered_records_with_recomputed_hashes_break_at_the_first_untouched_record(audit_log: AuditLog) -> None:
    """An attacker swaps records 2 and 3, renumbers them and recomputes their hashes: record 4 no longer links."""
    fill(audit_log, 5)
    first, second, third = audit_log.get(1), audit_log.get(2), audit_log.get(3)
    assert first is not None and second is not None and third is not None
    drop_append_only_triggers(audit_log.engine)
    prev = first.hash
    with audit_log.engine.begin() as connection:
        for position, moved in ((2, third), (3, second)):
            resource = moved.resource()
            resource["id"] = str(position)
            forged = canonical_json(resource)
            digest = content_sha256(forged)
            new_hash = chain_hash(position, prev, digest)
            connection.execute(
                update(audit_events)
                .where(audit_events.c.id == position)
                .values(
                    resource=forged,
                    content_sha256=digest,
                    prev_hash=prev,
                    hash=new_hash,
                    recorded=moved.recorded,
                    client_id=moved.client_id,
                    patient_ref=moved.patient_ref,
                )
            )
            prev = new_hash
    result = audit_log.verify()
    assert not result.ok and result.first_broken_id == 4 and "previous-hash" in (result.reason or "")


def test_migrations_create_the_declared_audit_schema(engine: Engine) -> None:
    migrate(engine)  # idempotent
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
    ours = {audit_events.name, audit_chain_head.name, oauth_seen_jti.name}
    about_ours = [d for d in diff if any(name in repr(d) for name in ours)]
    assert about_ours == []
    with engine.connect() as connection:
        head = connection.execute(select(audit_chain_head)).all()
    assert [tuple(r) for r in head] == [(1, 0, GENESIS_HASH)]


def test_other_kinds_and_outcomes_are_stored(audit_log: AuditLog) -> None:
    audit_log.record(AuditRecord(LOGIN, client_id="ehr", token_id="t1", peer_address="127.0.0.1"))
    audit_log.record(AuditRecord(AUTHENTICATION_FAILED, outcome=AuditOutcome.MINOR_FAILURE, peer_address="127.0.0.1"))
    audit_log.record(AuditRecord(RESULT_READ, client_id="ehr", peer_address="::1", interaction="read"))
    found, total = audit_log.search()
    assert total == 3 and [e.kind for e in found] == ["result-read", "authentication-failed", "login"]
    assert [e.action for e in found] == ["R", "E", "E"] and found[1].outcome == 4
    assert audit_log.verify().ok


# ---------------------------------------------------------------------------------------------- property


@pytest.fixture(scope="module")
def template_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database with 8 records, copied for every example (migrating per example would be slow)."""
    path = tmp_path_factory.mktemp("audit-template") / "template.sqlite3"
    engine = create_database_engine(f"sqlite:///{path}")
    migrate(engine)
    fill(AuditLog(engine, source=SOURCE), 8)
    engine.dispose()
    return path


TAMPERING: st.SearchStrategy[tuple[Any, ...]] = st.one_of(
    st.tuples(st.sampled_from(["change", "delete", "column"]), st.integers(1, 8)),
    st.integers(1, 7).flatmap(lambda first: st.tuples(st.just("swap"), st.just(first), st.integers(first + 1, 8))),
)


@settings(max_examples=30, deadline=None)
@given(operation=TAMPERING)
def test_any_single_tampering_is_found_at_the_first_touched_record(
    template_database: Path, tmp_path_factory: pytest.TempPathFactory, operation: tuple[Any, ...]
) -> None:
    path = tmp_path_factory.mktemp("tampered") / "audit.sqlite3"
    shutil.copy(template_database, path)
    engine = create_database_engine(f"sqlite:///{path}")
    try:
        kind, first = operation[0], operation[1]
        statements = {
            "change": [f"UPDATE audit_events SET resource = resource || ' ' WHERE id = {first}"],
            "delete": [f"DELETE FROM audit_events WHERE id = {first}"],
            "column": [f"UPDATE audit_events SET client_id = 'intruder' WHERE id = {first}"],
            "swap": [
                f"UPDATE audit_events SET id = -1 WHERE id = {first}",
                f"UPDATE audit_events SET id = {first} WHERE id = {operation[-1]}",
                f"UPDATE audit_events SET id = {operation[-1]} WHERE id = -1",
            ],
        }[kind]
        tamper(engine, *statements)
        result = verify(engine)
        assert not result.ok and result.first_broken_id == first, result
    finally:
        engine.dispose()
