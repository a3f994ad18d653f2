"""The HL7 door's tables and stores, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData

from radtriage.app.core.domain import ImagingOrder, Job, JobEvent, JobState
from radtriage.app.storage import SqlOrderStore, create_database_engine, migrate
from radtriage.app.storage.messaging_tables import hl7_message_log, hl7_order_context, hl7_outbox
from radtriage.app.storage.tables import metadata
from radtriage.hl7.mapping import OrderContext
from radtriage.hl7.outbox import OutboxState, OutboxStore
from radtriage.hl7.store import HL7Store

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
OURS = {hl7_message_log.name, hl7_order_context.name, hl7_outbox.name}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    built = create_database_engine(database_url)
    migrate(built)
    yield built
    built.dispose()


def add_order(engine: Engine, n: int, study_uid: str | None = None, source: str = "hl7") -> str:
    order = ImagingOrder(
        id=f"order{n:04d}",
        study_instance_uid=study_uid or f"1.2.3.{n}",
        patient_ref=f"H|P{n}",
        source=source,
        source_key=f"RIS^HOSP|PL{n}",
        received_at=T0,
    )
    job = Job(id=f"job{n:04d}", order_id=order.id or "", state=JobState.RECEIVED, priority=order.requested_priority)
    SqlOrderStore(engine).add_order(order, job, JobEvent(job.id, JobState.RECEIVED, JobState.RECEIVED, T0))
    return order.id or ""


def schema_differences(engine: Engine, target: MetaData) -> list[str]:
    """What Alembic would change to make the database match `target`, for the HL7 tables only."""
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), target)
    return [repr(d) for d in diff if any(name in repr(d) for name in OURS)]


def test_the_migration_creates_exactly_the_declared_tables(engine: Engine) -> None:
    assert schema_differences(engine, metadata) == []
    # The check itself notices a difference:
    changed = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        copy = table.to_metadata(changed)
        if table is hl7_outbox:
            copy.append_column(Column("extra", Integer))
    assert len(schema_differences(engine, changed)) == 1


def test_the_answer_to_a_message_is_kept_once(engine: Engine) -> None:
    store = HL7Store(engine)
    assert store.find_answer("RIS^HOSP", "C1") is None
    values: dict[str, Any] = {"sender": "RIS^HOSP", "control_id": "C1", "message_code": "ORM^O01", "at": T0}
    first = store.record_answer(**values, payload_sha256="a" * 64, ack_code="AA", ack="MSA|AA|C1")
    later = store.record_answer(**values, payload_sha256="b" * 64, ack_code="AE", ack="MSA|AE|C1")
    assert later == first and store.find_answer("RIS^HOSP", "C1") == first
    assert store.find_answer("OTHER^HOSP", "C1") is None


def test_concurrent_answers_to_the_same_message_agree(engine: Engine) -> None:
    store = HL7Store(engine)
    answers: list[str] = []
    barrier = threading.Barrier(4)

    def record(n: int) -> None:
        barrier.wait()
        answers.append(
            store.record_answer(
                sender="RIS^HOSP",
                control_id="RACE",
                message_code="ORM^O01",
                payload_sha256="c" * 64,
                ack_code="AA",
                ack=f"ack {n}",
                at=T0,
            ).ack
        )

    threads = [threading.Thread(target=record, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(answers) == 4 and len(set(answers)) == 1


def test_order_context_is_saved_and_replaced(engine: Engine) -> None:
    order_id = add_order(engine, 1)
    store = HL7Store(engine)
    context = OrderContext(version="2.3.1", placer_order_number=("PL1", "RIS"), patient_name=("Müller", "Jürgen"))
    store.save_context(order_id, context, T0)
    assert store.get_context(order_id) == context
    store.save_context(order_id, OrderContext(version="2.5.1", accession_number="A2"), T0)
    stored = store.get_context(order_id)
    assert stored is not None and stored.version == "2.5.1" and stored.accession_number == "A2"
    assert store.get_context("nope") is None


def test_outbox_order_per_patient_and_state_changes(engine: Engine) -> None:
    outbox = OutboxStore(engine)
    orders = [add_order(engine, n) for n in range(1, 5)]
    patients = ["H|A", "H|A", "H|B", "H|A"]
    for n, (order_id, patient) in enumerate(zip(orders, patients, strict=True)):
        stored = outbox.add(
            order_id=order_id,
            job_id=f"job{n + 1:04d}",
            kind="priority",
            patient_ref=patient,
            control_id=f"C{n}",
            payload=f"MSH|^~\\&|RADTRIAGE||||||ORM^O01|C{n}|P|2.3.1\rNTE|1||Müller {n}",
            at=T0 + timedelta(seconds=n),
        )
        assert stored
    assert not outbox.add(
        order_id=orders[0], job_id="job0001", kind="priority", patient_ref="H|A", control_id="X", payload="", at=T0
    )
    later = T0 + timedelta(minutes=1)
    heads = outbox.deliverable(later)
    assert [m.control_id for m in heads] == ["C0", "C2"]  # one per patient, oldest first
    assert heads[0].created_at == T0 and heads[0].next_attempt_at.tzinfo is not None
    assert "Müller 0" in heads[0].payload

    outbox.retry_later(heads[0].id, later, later + timedelta(seconds=30), "AR 207")
    assert [m.control_id for m in outbox.deliverable(later)] == ["C2"]  # A waits for its first message
    assert outbox.next_due() == T0 + timedelta(seconds=2)
    outbox.mark_sent(heads[1].id, later)
    assert outbox.next_due() == later + timedelta(seconds=30)
    assert [m.control_id for m in outbox.deliverable(later + timedelta(seconds=30))] == ["C0"]

    outbox.park(heads[0].id, later, "AE 101")
    assert outbox.deliverable(later + timedelta(hours=1)) == []
    parked = outbox.get(heads[0].id)
    assert parked is not None and parked.state is OutboxState.PARKED and parked.attempts == 2
    assert outbox.release(parked.id, later) and not outbox.release(parked.id, later)
    assert [m.control_id for m in outbox.deliverable(later)] == ["C0"]
    outbox.park(parked.id, later, "AE 101")
    assert outbox.discard(parked.id, later)
    assert [m.control_id for m in outbox.deliverable(later)] == ["C1"]
    assert [m.control_id for m in outbox.messages(state=OutboxState.DISCARDED)] == ["C0"]
