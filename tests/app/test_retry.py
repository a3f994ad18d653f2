"""Automatic retries (radtriage.app.retry): a job that failed because the PACS was down is tried again with
backoff until a deadline, visibly (FHIR Task in progress, "waiting for PACS"), audited, across a restart.

The PACS is a real Orthanc that the tests stop and start again; the database is SQLite and PostgreSQL."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from radtriage.app.config import Settings
from radtriage.app.core.domain import ImagingOrder, Job, JobState
from radtriage.app.factory import Components, build_components, create_app
from radtriage.app.retry import RetryPolicy
from radtriage.app.storage.tables import jobs
from radtriage.compliance.audit_store import AuditLog
from radtriage.model.placeholder import ensure_placeholder
from radtriage.model.scorer import XrvScorer
from tests.support.data import pydicom_data_dir
from tests.support.orthanc import OrthancServer, free_loopback_port

pytestmark = pytest.mark.slow

FAST_RETRIES = {
    "retry_base_delay": 0.5,
    "retry_max_delay": 1.0,
    "retry_poll_interval": 0.2,
    "dicomweb_timeout": 2.0,
    "dicomweb_attempts": 1,
}


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> XrvScorer:
    return XrvScorer.from_artefact(ensure_placeholder(tmp_path_factory.mktemp("models")), max_threads=None)


@pytest.fixture
def chest_uid() -> str:
    data = (pydicom_data_dir() / "RG1_J2KI.dcm").read_bytes()
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)


def order(study_uid: str, n: int = 1) -> ImagingOrder:
    return ImagingOrder(
        study_instance_uid=study_uid, patient_ref=f"Patient/retry{n}", source="fhir", source_key=f"r{n}"
    )


def settings_for(home: Path, database_url: str, dicomweb_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": str(home),
        "database_url": database_url,
        "study_source": "dicomweb",
        "dicomweb_url": dicomweb_url,
        **FAST_RETRIES,
        **overrides,
    }
    return Settings(**values)


@contextmanager
def running(settings: Settings, scorer: XrvScorer, orthanc: OrthancServer | None = None) -> Iterator[Components]:
    if orthanc is not None:
        settings = Settings(
            **{**settings.__dict__, "dicomweb_username": orthanc.username, "dicomweb_password": orthanc.password}
        )
    components = build_components(settings, scorer_factory=lambda: scorer)
    components.start()
    try:
        yield components
    finally:
        components.close()


def wait_until(what: Callable[[], Job], ok: Callable[[Job], bool], timeout: float = 60.0) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = what()
        if ok(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting; job is {job}")
        time.sleep(0.1)


def retry_audit(components: Components) -> str:
    """The text of every job-retry audit record (their details say planned / requeued / requested / given-up)."""
    events, _ = AuditLog(components.engine).search(limit=1000)
    return "\n".join(e.resource_text for e in events if e.kind == "job-retry")


def test_pacs_outage_is_retried_visibly_and_survives_a_restart(
    own_orthanc: OrthancServer, chest_uid: str, database_url: str, tmp_path: Path, scorer: XrvScorer
) -> None:
    own_orthanc.upload((pydicom_data_dir() / "RG1_J2KI.dcm").read_bytes())
    own_orthanc.stop()  # the PACS goes down before the order arrives
    settings = settings_for(tmp_path, database_url, own_orthanc.dicomweb_url)

    with running(settings, scorer, own_orthanc) as first:
        _, job, _ = first.service.submit_order(order(chest_uid))
        waiting = wait_until(lambda: first.service.job(job.id), lambda j: j.waiting_to_retry)
        assert waiting.failure_code == "pacs-unavailable"
        client = create_app(components=first).test_client()
        deadline = time.monotonic() + 30
        while (task := client.get(f"/fhir/Task/{job.id}").get_json())["status"] != "failed":
            if task["businessStatus"]["text"].startswith("waiting for PACS") or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # caught between two tries (fetching): look again
        assert task["status"] == "in-progress"
        assert task["businessStatus"]["text"].startswith("waiting for PACS")
        assert task["statusReason"]["coding"][0]["code"] == "pacs-unavailable"
        assert "end" not in task.get("executionPeriod", {})
        # It keeps trying with backoff while the PACS stays down, and each failure plans the next try.
        retried = wait_until(lambda: first.service.job(job.id), lambda j: j.attempts >= 3 and j.waiting_to_retry)
        assert retried.state is JobState.FAILED
    # The service stops (a restart) while the job waits: the plan is in the database.
    with first.engine.connect() as conn:
        planned = conn.execute(select(jobs.c.next_attempt_at, jobs.c.retry_until).where(jobs.c.id == job.id)).one()
    assert planned.next_attempt_at is not None and planned.retry_until is not None

    own_orthanc.restart()
    with running(settings, scorer, own_orthanc) as second:
        done = wait_until(lambda: second.service.job(job.id), lambda j: j.state is JobState.COMPLETED, timeout=120)
        assert done.next_attempt_at is None
        events = second.store.events(job.id)
        actions = retry_audit(second)
    automatic = [e for e in events if e.to_state is JobState.QUEUED and (e.detail or "").startswith("automatic")]
    assert len(automatic) >= 3
    assert "planned" in actions and "requeued" in actions


def test_retries_stop_at_the_deadline_and_the_task_then_fails(
    tmp_path: Path, chest_uid: str, scorer: XrvScorer
) -> None:
    dead_pacs = f"http://127.0.0.1:{free_loopback_port()}/dicom-web"
    settings = settings_for(
        tmp_path,
        f"sqlite:///{tmp_path / 'db.sqlite3'}",
        dead_pacs,
        retry_for_hours=2.0 / 3600,  # 2 s
    )
    with running(settings, scorer) as components:
        _, job, _ = components.service.submit_order(order(chest_uid))
        given_up = wait_until(
            lambda: components.service.job(job.id), lambda j: j.state is JobState.FAILED and not j.waiting_to_retry
        )
        # Tried more than once, then given up: failed for good, and the FHIR Task says so.
        assert given_up.attempts >= 2
        time.sleep(1.0)
        assert components.service.job(job.id).attempts == given_up.attempts
        task = create_app(components=components).test_client().get(f"/fhir/Task/{job.id}").get_json()
    assert task["status"] == "failed"
    assert task["statusReason"]["coding"][0]["code"] == "pacs-unavailable"


def test_sending_the_order_again_retries_a_failed_retryable_job(
    tmp_path: Path, chest_uid: str, scorer: XrvScorer
) -> None:
    dead_pacs = f"http://127.0.0.1:{free_loopback_port()}/dicom-web"
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}", dead_pacs, retry_for_hours=0.0)
    with running(settings, scorer) as components:
        _, job, _ = components.service.submit_order(order(chest_uid))
        failed = wait_until(lambda: components.service.job(job.id), lambda j: j.state is JobState.FAILED)
        assert failed.retryable and not failed.waiting_to_retry  # automatic retries are off here
        _, again, created = components.service.submit_order(order(chest_uid))
        assert not created
        assert again.state is JobState.QUEUED
        wait_until(lambda: components.service.job(job.id), lambda j: j.state is JobState.FAILED and j.attempts == 2)
        details = [e.detail for e in components.store.events(job.id) if e.to_state is JobState.QUEUED]
    assert "retry: the order was sent again" in details


def test_a_cancelled_order_stops_its_retries(tmp_path: Path, chest_uid: str, scorer: XrvScorer) -> None:
    dead_pacs = f"http://127.0.0.1:{free_loopback_port()}/dicom-web"
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}", dead_pacs, retry_base_delay=30.0,
                            retry_max_delay=30.0)  # fmt: skip
    with running(settings, scorer) as components:
        _, job, _ = components.service.submit_order(order(chest_uid))
        wait_until(lambda: components.service.job(job.id), lambda j: j.waiting_to_retry)
        cancelled = components.service.cancel_order("fhir", "r1")
        assert cancelled.state is JobState.CANCELLED
        assert components.service.job(job.id).next_attempt_at is None


def test_operators_list_retry_and_cancel_jobs(tmp_path: Path, chest_uid: str, scorer: XrvScorer) -> None:
    from radtriage.cli import main

    dead_pacs = f"http://127.0.0.1:{free_loopback_port()}/dicom-web"
    database_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    settings = settings_for(tmp_path, database_url, dead_pacs, retry_for_hours=0.0)
    with running(settings, scorer) as components:
        # Two studies (one live order per study); the PACS is down, so neither needs to exist.
        jobs_made = [components.service.submit_order(order(f"{chest_uid}.{n}", n))[1] for n in (1, 2)]
        for job in jobs_made:
            wait_until(lambda job=job: components.service.job(job.id), lambda j: j.state is JobState.FAILED)
        env = {"RADTRIAGE_HOME": str(tmp_path), "RADTRIAGE_DATABASE_URL": database_url,
               "RADTRIAGE_STUDY_SOURCE": "dicomweb", "RADTRIAGE_DICOMWEB_URL": dead_pacs}  # fmt: skip
        runner = CliRunner()
        listed = runner.invoke(main, ["jobs", "list", "--state", "failed"], env=env)
        assert listed.exit_code == 0, listed.output
        assert all(job.id in listed.output for job in jobs_made) and "pacs-unavailable (r)" in listed.output
        assert "Patient/" not in listed.output

        # Retry from another process: the running service picks it up (automatic retries are off here, so only
        # the operator's request can explain a second attempt).
        retried = runner.invoke(main, ["jobs", "retry", jobs_made[0].id], env=env)
        assert retried.exit_code == 0, retried.output
        wait_until(lambda: components.service.job(jobs_made[0].id), lambda j: j.attempts == 2)
        assert components.service.job(jobs_made[1].id).attempts == 1

        missing = runner.invoke(main, ["jobs", "retry", "0" * 32], env=env)
        assert missing.exit_code == 1 and "no such job" in missing.output
        bad_state = runner.invoke(main, ["jobs", "list", "--state", "sleeping"], env=env)
        assert bad_state.exit_code == 2
    assert "requested" in retry_audit(components)


def test_backoff_doubles_up_to_the_maximum() -> None:
    policy = RetryPolicy(base_delay=10, max_delay=60, jitter=0.1)
    plain = [policy.delay(n, rng=lambda: 0.0) for n in range(1, 6)]
    assert plain == [10, 20, 40, 60, 60]
    assert policy.delay(1, rng=lambda: 0.999) == pytest.approx(9.0, abs=0.01)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=0)
    assert timedelta(seconds=RetryPolicy().retry_for) == timedelta(hours=24)


def test_an_unreadable_object_from_the_pacs_fails_at_once_without_a_traceback(
    orthanc: OrthancServer, tmp_path: Path, scorer: XrvScorer, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = pydicom.dcmread(pydicom_data_dir() / "RG1_J2KI.dcm")
    dataset.StudyInstanceUID, dataset.SOPInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    orthanc.upload(buffer.getvalue()[132:])  # served back without the Part 10 preamble and "DICM"
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}", orthanc.dicomweb_url)
    with running(settings, scorer, orthanc) as components:
        _, job, _ = components.service.submit_order(order(str(dataset.StudyInstanceUID)))
        failed = wait_until(lambda: components.service.job(job.id), lambda j: j.state is JobState.FAILED)
        time.sleep(1.0)  # a retry, if one were planned, would be due by now
        assert components.service.job(job.id).attempts == 1
    assert failed.failure_code == "unreadable-image" and not failed.retryable and not failed.waiting_to_retry
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
