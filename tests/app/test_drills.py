"""Scale-out drills against real Redis, real PostgreSQL and real `radtriage worker` processes (Celery).

The API side (FHIR door + HL7 door with its outbox sender to a RIS peer) runs in the test process with
queue = "celery", as `radtriage api` and `radtriage mllp` do; the workers are separate processes.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hl7.client import MLLPClient

from radtriage.app.config import Settings, load_settings
from radtriage.app.core.domain import ImagingOrder, JobState, Priority
from radtriage.app.factory import Components, build_components, create_app
from radtriage.hl7.door import HL7Door, build_hl7_door
from radtriage.hl7.outbox import OutboxStore
from tests.app.studies import copies_of_rg1
from tests.hl7.conftest import ack_code
from tests.hl7.messages import orm
from tests.hl7.ris import RisPeer
from tests.support.data import pydicom_data_dir
from tests.support.postgres import PostgresCluster
from tests.support.redis import RedisServer

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
S = JobState
RUNNING = (S.FETCHING, S.SELECTED, S.PREPROCESSED, S.SCORING, S.SCORED, S.PUBLISHING)

pytestmark = pytest.mark.slow


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Site:
    """The API side of a scaled-out site, plus helpers to run worker processes."""

    settings: Settings
    components: Components
    door: HL7Door
    ris: RisPeer
    redis: RedisServer
    logs: Path
    #: Study UIDs for HL7 and FHIR orders, one each (the store allows one live order per study).
    hl7_studies: list[str]
    fhir_studies: list[str]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **{f"RADTRIAGE_{k.upper()}": str(v) for k, v in self.worker_settings().items()}}
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - the process owns it
        process = subprocess.Popen(
            [sys.executable, "-m", "radtriage.cli", "worker", "--pool", "solo"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(process)
        return process

    def worker_settings(self) -> dict[str, Any]:
        s = self.settings
        names = (
            "home", "database_url", "queue", "broker_url", "study_folder", "job_lease", "sweep_interval",
            "broker_visibility_timeout", "ris_host", "ris_port", "shadow_mode", "queue_max_wait",
        )  # fmt: skip
        return {name: getattr(s, name) for name in names}

    def post_fhir(self, key: str, priority: str | None = None) -> str:
        study = {
            "resourceType": "ImagingStudy",
            "id": key,
            "status": "available",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{self.fhir_studies.pop()}"}],
            "subject": {"reference": f"Patient/{key}"},
        }
        client = create_app(components=self.components).test_client()
        response = client.post("/fhir/ImagingStudy", json=study, headers=FHIR)
        assert response.status_code == 201, response.get_data(as_text=True)
        return str(response.get_json()["id"])

    def send_hl7(self, placer: str) -> str:
        """Send an ORM over MLLP for the next unused study; returns the job id of the stored order."""
        assert self.door.port
        study = self.hl7_studies.pop()
        with MLLPClient("127.0.0.1", self.door.port) as client:
            ack = client.send_message(orm(placer, placer=placer, study_uid=study, patient_id=f"P{placer}"))
        assert ack_code(ack) == "AA"
        order = self.components.store.find_order("hl7", f"RIS^HOSP|{placer}")
        assert order is not None and order.id is not None
        return self.components.store.job_for_order(order.id).id

    def job(self, job_id: str):
        return self.components.store.get_job(job_id)

    def logs_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.logs.glob("*.log")))


@pytest.fixture
def site(postgres_cluster: PostgresCluster, redis_server: RedisServer, tmp_path: Path) -> Iterator[Site]:
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(pydicom_data_dir() / "RG1_J2KI.dcm", studies)
    hl7_studies = copies_of_rg1(studies, 4, "hl7")
    fhir_studies = copies_of_rg1(studies, 8, "fhir")
    ris = RisPeer().start()
    settings = load_settings(
        env={},
        home=str(tmp_path),
        database_url=postgres_cluster.new_database(),
        queue="celery",
        broker_url=redis_server.url,
        study_folder=str(studies),
        job_lease=3.0,  # a worker that made no move for 3 s is taken as dead (production: minutes)
        sweep_interval=1.0,
        broker_visibility_timeout=10.0,
        ris_host="127.0.0.1",
        ris_port=ris.port,
        shadow_mode="off",
        queue_max_wait=600.0,
    )
    components = build_components(settings)
    door = build_hl7_door(components, settings, listen_port=0)
    components.start()
    door.start()
    logs = tmp_path / "logs"
    logs.mkdir()
    built = Site(settings, components, door, ris, redis_server, logs, hl7_studies, fhir_studies)
    try:
        yield built
    finally:
        for process in built.workers:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        door.stop()
        components.close()
        ris.stop()


def test_a_worker_killed_mid_study_leaves_it_to_another_one_result_one_update(site: Site) -> None:
    first = site.worker("first")
    job_id = site.send_hl7("KILL1")  # an HL7 order, so that the RIS gets a priority update
    # The first worker claims the job, then loads the model (seconds): it is killed in the middle of the study.
    wait_until(lambda: site.job(job_id).state in RUNNING, 180, "the first worker to start the study")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert site.job(job_id).state in RUNNING, "the study finished before the kill: the drill tested nothing"

    site.worker("second")
    wait_until(lambda: site.job(job_id).state.is_terminal, 300, "the second worker to finish: " + site.logs_text())
    assert site.job(job_id).state is S.COMPLETED
    events = site.components.store.events(job_id)
    assert [e.detail for e in events if e.to_state is S.QUEUED].count("resumed") == 1
    assert [e.to_state for e in events].count(S.SCORED) == 1
    # The killed worker's message comes back from Redis after the visibility timeout: it must change nothing.
    site.ris.wait_for(1, timeout=30)
    time.sleep(site.settings.broker_visibility_timeout + 5)
    assert len(site.ris.received) == 1, "exactly one HL7 update to the RIS"
    assert len(OutboxStore(site.components.engine).messages(job_id=job_id)) == 1
    order = site.components.store.get_order(site.job(job_id).order_id)
    assert site.components.store.list_results(patient_ref=order.patient_ref)[1] == 1
    client = create_app(components=site.components).test_client()
    assert client.get(f"/fhir/DiagnosticReport/{job_id}", headers=FHIR).status_code == 200
    assert [e.to_state for e in site.components.store.events(job_id)].count(S.SCORED) == 1


def test_orders_arriving_while_redis_is_down_are_accepted_stored_and_completed_after(site: Site) -> None:
    site.worker("worker")
    site.redis.stop()
    # Shortened from the 30 s to keep the suite bounded: what matters is that orders arrive meanwhile.
    outage_started = time.monotonic()
    fhir_jobs = [site.post_fhir(f"outage-{n}") for n in range(3)]
    hl7_jobs = [site.send_hl7(f"OUT{n}") for n in range(3)]  # each acknowledged AA
    jobs = fhir_jobs + hl7_jobs
    assert all(site.job(j).state is S.QUEUED for j in jobs)
    time.sleep(max(0.0, 8 - (time.monotonic() - outage_started)))
    site.redis.start()
    wait_until(
        lambda: all(site.job(j).state.is_terminal for j in jobs), 300, "the orders to complete: " + site.logs_text()
    )
    assert [site.job(j).state for j in jobs] == [S.COMPLETED] * 6


def test_a_stat_order_is_scored_before_routine_orders_queued_earlier(site: Site) -> None:
    routine = [site.post_fhir(f"burst-{n}") for n in range(5)]
    stat_order = ImagingOrder(
        study_instance_uid=site.fhir_studies.pop(),
        patient_ref="Patient/stat-1",
        source="fhir",
        source_key="stat-1",
        requested_priority=Priority.STAT,
    )
    _, stat, _ = site.components.service.submit_order(stat_order)
    site.worker("worker")  # the burst and the STAT order wait in Redis; one worker serves them
    jobs = [*routine, stat.id]
    wait_until(lambda: all(site.job(j).state.is_terminal for j in jobs), 300, "the burst: " + site.logs_text())

    def scored_at(job_id: str):
        return next(e.at for e in site.components.store.events(job_id) if e.to_state is S.SCORED)

    assert all(scored_at(stat.id) < scored_at(j) for j in routine)


# ---------------------------------------------------------------------------------------------- the barrier


def _race(settings: dict[str, Any], job_ids: list[str], barrier: Any, done: Any) -> None:
    """One worker process: load the model, then run every job at the same moment as the other process."""
    components = build_components(load_settings(env={}, **settings))
    try:
        components.service.scorer  # noqa: B018 - load the model before the race
        for job_id in job_ids:
            barrier.wait(timeout=300)
            done.put((os.getpid(), job_id, components.service.run_job(job_id).state.value))
    finally:
        components.close()


def test_two_worker_processes_on_one_postgresql_never_score_the_same_job_twice(
    postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    studies = tmp_path / "studies"
    studies.mkdir()
    uids = copies_of_rg1(studies, 6)
    settings = {
        "home": str(tmp_path),
        "database_url": postgres_cluster.new_database(),
        "study_folder": str(studies),
        "shadow_mode": "off",
    }
    components = build_components(load_settings(env={}, **settings))  # the door side; its workers not started
    try:
        orders = [
            ImagingOrder(study_instance_uid=uids[n], patient_ref=f"Patient/b{n}", source="fhir", source_key=f"b{n}")
            for n in range(6)
        ]
        job_ids = [components.service.submit_order(order)[1].id for order in orders]
        context = multiprocessing.get_context("spawn")
        barrier, done = context.Barrier(2), context.Queue()
        racers = [context.Process(target=_race, args=(settings, job_ids, barrier, done)) for _ in range(2)]
        for racer in racers:
            racer.start()
        outcomes = [done.get(timeout=600) for _ in range(2 * len(job_ids))]
        for racer in racers:
            racer.join(timeout=60)
        assert [r.exitcode for r in racers] == [0, 0]
        assert len({pid for pid, _, _ in outcomes}) == 2
        for job_id in job_ids:
            events = [e.to_state for e in components.store.events(job_id)]
            assert events.count(S.FETCHING) == 1 and events.count(S.SCORED) == 1, events
            job = components.store.get_job(job_id)
            assert job.state is S.COMPLETED and job.attempts == 1
    finally:
        components.close()
