"""Contract suite for the OrderStore port, run on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from radtriage.app.core.domain import (
    FindingScore,
    ImagingOrder,
    Job,
    JobEvent,
    JobState,
    ModelIdentity,
    Priority,
    TriageResult,
)
from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.app.core.pipeline import advance
from radtriage.app.storage import SqlOrderStore, create_database_engine, migrate
from radtriage.app.storage.schema import metadata

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


@pytest.fixture
def store(database_url: str):
    engine = create_database_engine(database_url)
    migrate(engine)
    yield SqlOrderStore(engine)
    engine.dispose()


def make_order(n: int, *, priority: Priority = Priority.ROUTINE, patient: str = "Patient/p1") -> ImagingOrder:
    return ImagingOrder(
        id=f"order{n:04d}",
        study_instance_uid=f"1.2.826.0.1.3680043.10.1.{n}",
        patient_ref=patient,
        source="fhir",
        source_key=f"ImagingStudy/s{n}",
        requested_priority=priority,
        service_request_ref=f"ServiceRequest/sr{n}",
        received_at=T0 + timedelta(minutes=n),
    )


def add(store: SqlOrderStore, n: int, **kwargs) -> Job:
    order = make_order(n, **kwargs)
    job = Job(id=f"job{n:04d}", order_id=order.id, state=JobState.RECEIVED, priority=order.requested_priority)
    event = JobEvent(job.id, JobState.RECEIVED, JobState.RECEIVED, order.received_at)
    _, stored, created = store.add_order(order, job, event)
    assert created
    return stored


def walk(store: SqlOrderStore, job: Job, *states: JobState, **kwargs) -> Job:
    for state in states:
        job = store.record_transition(advance(job, state, T0), **kwargs)
    return job


def test_migrations_create_exactly_the_declared_schema(store: SqlOrderStore) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_migrate_is_idempotent(store: SqlOrderStore) -> None:
    migrate(store.engine)
    add(store, 1)
    migrate(store.engine)
    assert store.get_order("order0001") is not None


def test_order_round_trips_with_utc_times(store: SqlOrderStore) -> None:
    add(store, 1, priority=Priority.ASAP)
    order = store.get_order("order0001")
    assert order == make_order(1, priority=Priority.ASAP)
    assert order.received_at.tzinfo is not None
    job = store.job_for_order("order0001")
    assert job.state is JobState.RECEIVED and job.priority is Priority.ASAP


def test_resubmission_returns_the_stored_order_and_creates_nothing(store: SqlOrderStore) -> None:
    first = add(store, 1)
    again = make_order(1)
    duplicate = Job(id="another", order_id="another-order", state=JobState.RECEIVED, priority=Priority.ROUTINE)
    from dataclasses import replace

    order, job, created = store.add_order(
        replace(again, id="another-order"), duplicate, JobEvent("another", JobState.RECEIVED, JobState.RECEIVED, T0)
    )
    assert not created
    assert order.id == "order0001" and job.id == first.id
    assert store.get_job("another") is None
    assert store.list_jobs()[1] == 1


def test_transition_is_compare_and_set(store: SqlOrderStore) -> None:
    job = add(store, 1)
    queued = walk(store, job, JobState.QUEUED)
    # A second writer holding the stale "received" view must not move the job.
    with pytest.raises(TriageError) as err:
        store.record_transition(advance(job, JobState.QUEUED, T0))
    assert err.value.code is ErrorCode.CONFLICT
    assert store.get_job(job.id).state is JobState.QUEUED
    assert [e.to_state for e in store.events(job.id)] == [JobState.RECEIVED, JobState.QUEUED]
    assert queued.state is JobState.QUEUED


def test_only_one_of_many_concurrent_writers_wins(store: SqlOrderStore) -> None:
    job = walk(store, add(store, 1), JobState.QUEUED)
    wins: list[bool] = []

    def attempt() -> None:
        try:
            store.record_transition(advance(job, JobState.FETCHING, T0))
            wins.append(True)
        except TriageError:
            wins.append(False)

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1
    assert store.get_job(job.id).attempts == 1


def test_failure_is_recorded_and_cleared_on_requeue(store: SqlOrderStore) -> None:
    job = walk(store, add(store, 1), JobState.QUEUED, JobState.FETCHING)
    failed = store.record_transition(
        advance(job, JobState.FAILED, T0, reason_code="pacs-unavailable", detail="down", data={"retryable": "true"})
    )
    assert (failed.failure_code, failed.retryable) == ("pacs-unavailable", True)
    requeued = walk(store, failed, JobState.QUEUED)
    assert requeued.failure_code is None and not requeued.retryable


def test_result_is_stored_with_the_transition(store: SqlOrderStore) -> None:
    job = walk(
        store,
        add(store, 1),
        JobState.QUEUED,
        JobState.FETCHING,
        JobState.SELECTED,
        JobState.PREPROCESSED,
        JobState.SCORING,
    )
    result = TriageResult(
        job_id=job.id,
        findings=(FindingScore("Pneumothorax", 0.91, 0.5), FindingScore("Effusion", 0.1, 0.4)),
        priority=Priority.STAT,
        model=ModelIdentity("m", "1.0", "ab" * 32, placeholder=True),
        series_instance_uid="1.2.3",
        sop_instance_uid="1.2.3.4",
        priority_reason="Pneumothorax",
        created_at=T0,
    )
    scored = store.record_transition(advance(job, JobState.SCORED, T0), priority=Priority.STAT, result=result)
    assert scored.priority is Priority.STAT
    assert store.get_result(job.id) == result
    assert [r.job_id for r in store.list_results(service_request_ref="ServiceRequest/sr1")[0]] == [job.id]
    assert store.list_results(patient_ref="Patient/nobody") == ([], 0)


def test_jobs_list_most_urgent_first_then_oldest_with_paging(store: SqlOrderStore) -> None:
    add(store, 1, priority=Priority.ROUTINE)
    add(store, 2, priority=Priority.STAT)
    add(store, 3, priority=Priority.ROUTINE)
    add(store, 4, priority=Priority.URGENT)
    page, total = store.list_jobs(limit=3)
    assert total == 4
    assert [j.id for j in page] == ["job0002", "job0004", "job0001"]
    rest, _ = store.list_jobs(offset=3, limit=3)
    assert [j.id for j in rest] == ["job0003"]
    only_routine, n = store.list_jobs(priorities=[Priority.ROUTINE])
    assert n == 2 and {j.id for j in only_routine} == {"job0001", "job0003"}


def test_unfinished_jobs_exclude_terminal_states(store: SqlOrderStore) -> None:
    walk(store, add(store, 1), JobState.QUEUED, JobState.CANCELLED)
    walk(store, add(store, 2), JobState.QUEUED, JobState.FETCHING)
    add(store, 3)
    assert sorted(store.unfinished_job_ids()) == ["job0002", "job0003"]
    assert store.list_jobs(states=[JobState.CANCELLED])[1] == 1


# ---------------------------------------------------------------------- one live order per study (any door)


def _order_for_study(n: int, uid: str, source: str) -> tuple[ImagingOrder, Job, JobEvent]:
    order = replace(make_order(n), study_instance_uid=uid, source=source, source_key=f"{source}-key-{n}")
    job = Job(id=f"job{n:04d}", order_id=order.id, state=JobState.RECEIVED, priority=order.requested_priority)
    return order, job, JobEvent(job.id, JobState.RECEIVED, JobState.RECEIVED, T0)


def test_a_second_order_for_the_same_study_is_a_conflict_until_the_first_is_finished(store: SqlOrderStore) -> None:
    uid = "1.2.826.0.1.3680043.10.1.777"
    first, job, event = _order_for_study(1, uid, "hl7")
    store.add_order(first, job, event)
    for n, source in ((2, "fhir"), (3, "hl7")):
        with pytest.raises(TriageError) as refused:
            store.add_order(*_order_for_study(n, uid, source))
        assert refused.value.code is ErrorCode.CONFLICT and uid not in refused.value.detail
        assert store.get_order(f"order{n:04d}") is None  # nothing of the refused order was kept
    # Re-sending the first order is idempotent, not a conflict.
    assert store.add_order(first, replace(job, id="job9999"), event)[2] is False
    walk(store, store.get_job(job.id), JobState.QUEUED, JobState.FETCHING)
    with pytest.raises(TriageError):  # still live while it is being worked on
        store.add_order(*_order_for_study(5, uid, "fhir"))
    walk(store, store.get_job(job.id), JobState.CANCELLED)
    assert store.add_order(*_order_for_study(4, uid, "fhir"))[2] is True


def test_concurrent_orders_for_one_study_from_two_doors_create_one_job(store: SqlOrderStore) -> None:
    uid = "1.2.826.0.1.3680043.10.1.778"
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def submit(n: int) -> None:
        barrier.wait(10)
        try:
            store.add_order(*_order_for_study(n, uid, "fhir" if n % 2 else "hl7"))
            outcomes.append("created")
        except TriageError as err:
            outcomes.append(err.code.value)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(10, 16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["conflict"] * 5 + ["created"]
