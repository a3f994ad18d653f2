"""A restarted service finishes what the previous process left unfinished (the database is the source of truth)."""

from __future__ import annotations

from pathlib import Path

import pytest

from radtriage.app.config import load_settings
from radtriage.app.core.domain import ImagingOrder, JobState
from radtriage.app.core.pipeline import advance
from radtriage.app.factory import build_components
from tests.support.data import copy_as_new_study, pydicom_data_dir


@pytest.mark.slow
def test_jobs_left_mid_flight_are_resumed_and_completed(database_url: str, tmp_path: Path) -> None:
    studies = tmp_path / "studies"
    studies.mkdir()
    uids = [copy_as_new_study(pydicom_data_dir() / "RG1_J2KI.dcm", studies) for _ in range(2)]
    settings = load_settings(env={}, home=str(tmp_path), database_url=database_url, study_folder=str(studies))

    # First process: accepts two orders, starts fetching one, then dies before its workers ran anything.
    first = build_components(settings)
    orders = [
        ImagingOrder(study_instance_uid=uid, patient_ref=f"Patient/r{n}", source="fhir", source_key=f"k{n}")
        for n, uid in enumerate(uids, start=1)
    ]
    jobs = [first.service.submit_order(order)[1] for order in orders]
    first.store.record_transition(advance(jobs[0], JobState.FETCHING, first.service.clock.now()))
    first.close()

    # Second process on the same database.
    second = build_components(settings)
    try:
        second.start()
        assert second.queue.wait_idle(timeout=120)
        finished = [second.store.get_job(job.id) for job in jobs]
    finally:
        second.close()
    assert [job.state for job in finished] == [JobState.COMPLETED, JobState.COMPLETED]
    # The interrupted job was put back in the queue once, with an event saying so, and fetched twice in all.
    events = second.store.events(jobs[0].id)
    assert [e.detail for e in events if e.to_state is JobState.QUEUED].count("resumed") == 1
    assert finished[0].attempts == 2
