"""Order updates (HL7 XO, FHIR re-posts) through the real service and store, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from radtriage.app.config import load_settings
from radtriage.app.core.domain import ImagingOrder, JobState, Priority
from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.app.factory import build_components


@pytest.fixture
def components(database_url: str, tmp_path: Path):
    settings = load_settings(env={}, home=str(tmp_path), database_url=database_url, study_folder=str(tmp_path))
    built = build_components(settings)  # workers not started: jobs stay queued
    yield built
    built.close()


def order(priority: Priority = Priority.ROUTINE, study: str = "1.2.826.0.1.3680043.10.9.1") -> ImagingOrder:
    return ImagingOrder(
        study_instance_uid=study,
        patient_ref="hl7|MRN-1",
        source="hl7",
        source_key="RIS|PLACER-1",
        requested_priority=priority,
    )


def test_an_update_raises_the_priority_of_a_queued_job(components) -> None:
    service = components.service
    stored, job, _ = service.submit_order(order(Priority.ROUTINE))
    updated, job = service.update_order(order(Priority.STAT))
    assert updated.id == stored.id
    assert (updated.requested_priority, job.priority) == (Priority.STAT, Priority.STAT)
    assert updated.received_at == stored.received_at


def test_an_update_never_lowers_the_priority(components) -> None:
    service = components.service
    service.submit_order(order(Priority.ASAP))
    updated, job = service.update_order(order(Priority.ROUTINE))
    assert (updated.requested_priority, job.priority) == (Priority.ASAP, Priority.ASAP)


def test_the_study_can_change_only_before_fetching_starts(components) -> None:
    service = components.service
    _, job, _ = service.submit_order(order())
    new_study = "1.2.826.0.1.3680043.10.9.2"
    updated, _ = service.update_order(order(study=new_study))
    assert updated.study_instance_uid == new_study
    # A worker starts fetching: from now on the study is fixed, but the priority may still rise.
    from radtriage.app.core.pipeline import advance

    job = components.store.get_job(job.id)
    components.store.record_transition(advance(job, JobState.FETCHING, service.clock.now()))
    with pytest.raises(TriageError) as err:
        service.update_order(order(study="1.2.826.0.1.3680043.10.9.3"))
    assert err.value.code is ErrorCode.CONFLICT
    _, raised = service.update_order(order(Priority.URGENT, study=new_study))
    assert raised.priority is Priority.URGENT


def test_the_worker_cannot_lower_a_priority_raised_while_it_was_scoring(components) -> None:
    from radtriage.app.core.pipeline import advance

    service, store = components.service, components.store
    _, job, _ = service.submit_order(order())
    for state in (JobState.FETCHING, JobState.SELECTED, JobState.PREPROCESSED, JobState.SCORING):
        job = store.record_transition(advance(job, state, service.clock.now()))
    service.update_order(order(Priority.STAT))
    job = store.get_job(job.id)
    # The worker read the order before the update and decided "routine"; the stored priority stays stat.
    scored = store.record_transition(advance(job, JobState.SCORED, service.clock.now()), priority=Priority.ROUTINE)
    assert scored.priority is Priority.STAT


def test_unknown_and_finished_orders_cannot_be_updated(components) -> None:
    service = components.service
    with pytest.raises(TriageError) as err:
        service.update_order(order())
    assert err.value.code is ErrorCode.NOT_FOUND
    service.submit_order(order())
    service.cancel_order("hl7", "RIS|PLACER-1")
    with pytest.raises(TriageError) as err:
        service.update_order(replace(order(), requested_priority=Priority.STAT))
    assert err.value.code is ErrorCode.CONFLICT
