"""The service's fast path: few commits per study with every audited fact kept, heatmaps after the priority,
STAT before routine work queued earlier, and orphaned jobs taken over after their lease."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from radtriage.app.config import load_settings
from radtriage.app.core.domain import ImagingOrder, JobState, Priority
from radtriage.app.core.pipeline import advance
from radtriage.app.factory import Components, build_components
from radtriage.compliance.audit_store import AuditFilter
from tests.app.studies import copies_of_rg1
from tests.support.data import pydicom_data_dir
from tests.support.models import flagging_default_model

RG1_STUDY = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"
S = JobState

pytestmark = pytest.mark.slow


@pytest.fixture
def components(database_url: str, tmp_path: Path):
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(pydicom_data_dir() / "RG1_J2KI.dcm", studies)
    STUDIES[:] = copies_of_rg1(studies, 12)
    settings = load_settings(
        env={}, home=str(tmp_path), database_url=database_url, study_folder=str(studies), shadow_mode="off",
        model=str(flagging_default_model(tmp_path)),  # every film has a positive finding, hence a heatmap job
    )
    built = build_components(settings)
    yield built
    built.close()


#: Study UIDs of the copies the fixture made (one live order per study: orders queued together need their own).
STUDIES: list[str] = []


def order(n: int, priority: Priority = Priority.ROUTINE, study: int | None = None) -> ImagingOrder:
    return ImagingOrder(
        study_instance_uid=RG1_STUDY if study is None else STUDIES[study],
        patient_ref=f"Patient/fast-{n}",
        source="fhir",
        source_key=f"fast-{n}",
        requested_priority=priority,
    )


def count_calls(components: Components, monkeypatch: pytest.MonkeyPatch, *names: str) -> dict[str, int]:
    calls = dict.fromkeys(names, 0)
    for name in names:
        original = getattr(components.store, name)

        def counting(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(components.store, name, counting)
    return calls


def test_a_study_costs_four_job_commits_and_keeps_every_event_and_audited_fact(components, monkeypatch) -> None:
    # Every job move goes through record_transitions (record_transition is one move through it).
    calls = count_calls(components, monkeypatch, "add_order", "record_transitions")
    components.start()
    _, job, _ = components.service.submit_order(order(1))
    assert components.queue.wait_idle(120)
    assert components.store.get_job(job.id).state is S.COMPLETED
    # submit (received + queued), claim (fetching), score stored (selected ... publishing), completed.
    assert calls["add_order"] + calls["record_transitions"] == 4
    path = [e.to_state for e in components.store.events(job.id)]
    assert path == [S.RECEIVED, S.QUEUED, S.FETCHING, S.SELECTED, S.PREPROCESSED, S.SCORING, S.SCORED,
                    S.PUBLISHING, S.COMPLETED]  # fmt: skip
    events = components.store.events(job.id)
    assert all(a.at <= b.at for a, b in zip(events, events[1:], strict=False))  # each move keeps its own time
    kinds = [e.kind for e in components.audit.search(AuditFilter(patient="Patient/fast-1"), limit=100)[0]]
    for kind in ("order-received", "study-retrieved", "study-scored", "result-created"):
        assert kinds.count(kind) == 1, kinds
    assert components.audit.verify().ok


def test_heatmaps_are_made_after_the_task_completed(components, monkeypatch) -> None:
    scorer = components.service.scorer
    states_when_explained = []
    explain = scorer.explain

    def watching(image, labels):
        states_when_explained.append(components.store.get_job(job_ids[0]).state)
        return explain(image, labels)

    monkeypatch.setattr(scorer, "explain", watching)
    job_ids: list[str] = []
    components.start()
    _, job, _ = components.service.submit_order(order(2))
    job_ids.append(job.id)
    assert components.queue.wait_idle(120)
    result = components.store.get_result(job.id)
    positives = [f.label for f in result.findings if f.positive]
    assert positives, "the flagging model flags every film; without a positive finding this test checks nothing"
    assert states_when_explained == [S.COMPLETED]
    assert components.store.heatmap_labels(job.id) == positives


def test_a_stat_order_is_scored_before_routine_orders_queued_earlier(components) -> None:
    service = components.service
    routine = [service.submit_order(order(10 + n, study=n))[1] for n in range(6)]
    components.start()  # the burst is waiting; a STAT order arrives after it
    _, stat, _ = service.submit_order(order(99, Priority.STAT, study=6))
    assert components.queue.wait_idle(180)

    def scored_at(job_id: str):
        return next(e.at for e in components.store.events(job_id) if e.to_state is S.SCORED)

    later = [job for job in routine if scored_at(job.id) > scored_at(stat.id)]
    # At most one routine study (the one already running when the STAT arrived) is scored before it.
    assert len(later) >= len(routine) - 1, [scored_at(j.id) for j in routine]


def test_a_raised_priority_moves_a_queued_job_ahead(components) -> None:
    service = components.service
    routine = [service.submit_order(order(20 + n, study=n))[1] for n in range(4)]
    service.update_order(order(23, Priority.STAT, study=3))  # the last one queued, raised by an XO
    components.start()
    assert components.queue.wait_idle(180)
    scored = sorted(routine, key=lambda j: next(e.at for e in components.store.events(j.id) if e.to_state is S.SCORED))
    assert scored[0].id == routine[3].id


def test_a_running_job_belongs_to_its_worker_until_its_lease_runs_out(components) -> None:
    service = components.service
    _, job, _ = service.submit_order(order(30))
    running = components.store.record_transition(advance(job, S.FETCHING, service.clock.now()))
    # A second delivery while the first worker is inside its lease changes nothing.
    assert service.run_job(job.id).state is S.FETCHING
    assert [e.to_state for e in components.store.events(job.id)][-1] is S.FETCHING
    # The worker died: after the lease another delivery takes the job over and finishes it.
    service.lease = timedelta(0)
    finished = service.run_job(running.id)
    assert finished.state is S.COMPLETED and finished.attempts == 2
    assert [e.detail for e in components.store.events(job.id) if e.to_state is S.QUEUED].count("resumed") == 1
