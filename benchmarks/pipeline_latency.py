"""Bare path against service path, on the same studies in one run.

    .venv/bin/python -m benchmarks.pipeline_latency [--studies 20] [--images DIR]

* bare path:    QIDO-RS + WADO-RS retrieve (dicomweb-client) → decode → preprocess → model, in a loop;
* service path: FHIR POST ImagingStudy → Task completed, through the real service (waitress, SQLite, inline
                worker, the same DICOMweb source and model).

Both run against a real Orthanc on loopback, started here, with the same model object shape (the service loads
its own copy). For each path it prints per-study latency (p50, p95; one study at a time, the two paths
interleaved study by study) and sustained throughput (all studies submitted at once; median of --rounds rounds,
alternating paths), then the ratios service/bare. Absolute times depend on the machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pydicom
import requests
from pydicom.uid import generate_uid

from radtriage.app.config import Settings, load_settings
from radtriage.app.demo import FHIR_JSON, DemoStudy, imaging_study, running_service
from radtriage.app.factory import model_scorer_factory
from radtriage.imaging.dicomweb_source import DicomwebStudySource
from radtriage.imaging.selection import select_instance
from radtriage.imaging.wrap import wrap_image_as_dicom
from tests.support.data import SHARED_DATA, pydicom_data_dir
from tests.support.orthanc import start_orthanc


def make_studies(count: int, images: Path | None) -> tuple[list[bytes], str]:
    """`count` distinct single-image studies, as DICOM Part 10 bytes."""
    if images is None and (SHARED_DATA / "cxr" / "nih").is_dir():
        images = SHARED_DATA / "cxr" / "nih"
    if images is not None:
        paths = sorted(p for p in images.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[:count]
        studies = [wrap_image_as_dicom(p, patient_id=f"BENCH{n:04d}") for n, p in enumerate(paths)]
        return studies, f"{len(studies)} PNG/JPEG images from {images}, wrapped into DICOM"
    template = pydicom.dcmread(pydicom_data_dir() / "RG1_J2KI.dcm")
    studies = []
    for _ in range(count):
        template.StudyInstanceUID = generate_uid()
        template.SeriesInstanceUID = generate_uid()
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        template.save_as(buffer, enforce_file_format=True)
        studies.append(buffer.getvalue())
    return studies, f"{count} copies of pydicom-data RG1_J2KI.dcm (CR chest, 1955x1841, JPEG 2000)"


def study_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class BarePath:
    """What one study costs without the service: find, retrieve, decode, preprocess, score."""

    def __init__(self, source: DicomwebStudySource, scorer) -> None:
        self.source, self.scorer = source, scorer

    def one(self, uid: str) -> float:
        started = time.perf_counter()
        chosen = select_instance(self.source.find_instances(uid))
        self.scorer.score(self.scorer.prepare(self.source.retrieve_instance(chosen)))
        return time.perf_counter() - started

    def batch(self, uids: list[str]) -> float:
        started = time.perf_counter()
        for uid in uids:
            self.one(uid)
        return len(uids) / (time.perf_counter() - started)


class ServicePath:
    """The same studies through the real service: FHIR POST ImagingStudy, then poll the Task until completed."""

    def __init__(self, base: str, poll_s: float = 0.02) -> None:
        self.base = base
        self.session = requests.Session()
        self.posted = 0
        self.poll_s = poll_s

    def post(self, uid: str) -> str:
        self.posted += 1  # a new ImagingStudy id each time, so a re-post is a new order, not a duplicate
        resource = imaging_study(self.posted, DemoStudy("benchmark", uid))
        response = self.session.post(f"{self.base}/ImagingStudy", json=resource, headers=FHIR_JSON)
        response.raise_for_status()
        return str(response.json()["id"])

    def wait(self, task_id: str) -> float:
        """Poll the Task until it ends; returns when it completed (its lastModified, as epoch seconds).

        The completion time comes from the Task itself (server and client share this machine's clock), so the
        poll interval neither rounds the latency up nor, polling fast, takes CPU from the worker being timed."""
        while True:
            task = self.session.get(f"{self.base}/Task/{task_id}", headers=FHIR_JSON).json()
            status = task["status"]
            if status in ("completed", "failed", "cancelled"):
                if status != "completed":
                    raise RuntimeError(f"Task {task_id} ended {status}")
                return datetime.fromisoformat(task["lastModified"].replace("Z", "+00:00")).timestamp()
            time.sleep(self.poll_s)

    def settle(self, task_id: str, timeout: float = 60) -> None:
        """Wait until the study's heatmaps are stored (a later, lower-priority job), so that they are not made
        while the bare path is being timed. Studies without a positive finding get none."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            report = self.session.get(f"{self.base}/DiagnosticReport/{task_id}", headers=FHIR_JSON).json()
            if report["meta"].get("versionId") != "1" or "operating point" not in report.get("conclusion", ""):
                return
            time.sleep(self.poll_s)

    def one(self, uid: str) -> float:
        started = time.time()
        task_id = self.post(uid)
        latency = self.wait(task_id) - started
        self.settle(task_id)
        return latency

    def batch(self, uids: list[str]) -> float:
        started = time.time()
        task_ids = [self.post(uid) for uid in uids]  # all submitted at once: the queue is never empty
        # The last one in finishes last: wait on it, slowly (its own lastModified says when), then read the rest.
        poll_s, self.poll_s = self.poll_s, max(self.poll_s, 0.1)
        try:
            finished = max(self.wait(task_id) for task_id in reversed(task_ids))
        finally:
            self.poll_s = poll_s
        for task_id in task_ids:
            self.settle(task_id)
        return len(uids) / (finished - started)


def measure(bare: BarePath, service: ServicePath, uids: list[str], rounds: int):
    """Interleaved, so that a change in machine load hits both paths alike."""
    bare.one(uids[0])  # warm-up: first-call costs (model threads, connections) are not per-study costs
    service.one(uids[0])
    bare_lat, service_lat = [], []
    for uid in uids:
        bare_lat.append(bare.one(uid))
        service_lat.append(service.one(uid))
    bare_rates, service_rates = [], []
    for _ in range(rounds):
        bare_rates.append(bare.batch(uids))
        service_rates.append(service.batch(uids))
    return bare_lat, service_lat, statistics.median(bare_rates), statistics.median(service_rates)


@contextmanager
def celery_stack(settings: Settings, tmp: Path) -> Iterator[str]:
    """The scaled-out service on loopback: PostgreSQL and Redis (started here, as the tests do), the FHIR API in
    this process publishing to Redis, and one `radtriage worker` process; yields the FHIR base URL."""
    from tests.support.postgres import PostgresCluster, _pg_bin
    from tests.support.redis import RedisServer

    bindir, redis_binary = _pg_bin(), shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin")
    if bindir is None or redis_binary is None:
        raise SystemExit("--stack celery needs PostgreSQL and redis-server (scripts/bootstrap.sh --dev)")
    postgres, redis = PostgresCluster(bindir), RedisServer(redis_binary)
    postgres.start()
    redis.start()
    worker = None
    try:
        settings = replace(settings, database_url=postgres.new_database(), queue="celery", broker_url=redis.url)
        shared = ("home", "database_url", "queue", "broker_url", "study_source", "dicomweb_url", "dicomweb_username",
                  "dicomweb_password", "dicomweb_timeout", "dicomweb_attempts", "shadow_mode")  # fmt: skip
        env = {**os.environ, **{f"RADTRIAGE_{name.upper()}": str(getattr(settings, name)) for name in shared}}
        with open(tmp / "worker.log", "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "radtriage.cli", "worker", "--pool", "solo"], env=env, stdout=log, stderr=log
            )
        with running_service(settings) as base:
            yield base
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        redis.remove()
        postgres.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--images", type=Path, default=None, help="folder of PNG/JPEG chest X-rays")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per path (median reported)")
    parser.add_argument("--poll-ms", type=float, default=20.0, help="Task poll interval of the service client")
    parser.add_argument(
        "--stack",
        choices=("embedded", "celery"),
        default="embedded",
        help="embedded: radtriage serve's shape (one process, in-process queue, SQLite); celery: the API with a "
        "Celery queue, one `radtriage worker --pool solo` process, Redis and PostgreSQL, all on loopback",
    )
    args = parser.parse_args(argv)

    studies, described = make_studies(args.studies, args.images)
    uids = [study_uid(s) for s in studies]
    with tempfile.TemporaryDirectory(prefix="radtriage-bench-") as tmp:
        orthanc = start_orthanc(Path(tmp) / "orthanc")
        try:
            for data in studies:
                orthanc.upload(data)
            settings = load_settings(
                env={},
                home=tmp,
                study_source="dicomweb",
                dicomweb_url=orthanc.dicomweb_url,
                dicomweb_username=orthanc.username,
                dicomweb_password=orthanc.password,
            )
            source = DicomwebStudySource(
                orthanc.dicomweb_url, username=orthanc.username, password=orthanc.password, timeout=30, attempts=1
            )
            scorer = model_scorer_factory(settings)()
            stack = running_service(settings) if args.stack == "embedded" else celery_stack(settings, Path(tmp))
            with stack as base:
                bare_lat, service_lat, bare_rate, service_rate = measure(
                    BarePath(source, scorer), ServicePath(base, args.poll_ms / 1000), uids, args.rounds
                )
        finally:
            orthanc.stop()

    print(f"stack: {args.stack}; studies: {described}; model: {scorer.identity.name} {scorer.identity.version}")
    print(f"{'path':<10} {'p50 s':>8} {'p95 s':>8} {'studies/s':>10}")
    for name, lat, rate in (("bare", bare_lat, bare_rate), ("service", service_lat, service_rate)):
        print(f"{name:<10} {statistics.median(lat):8.3f} {percentile(lat, 0.95):8.3f} {rate:10.2f}")
    print(
        f"service/bare: p50 x{statistics.median(service_lat) / statistics.median(bare_lat):.2f}, "
        f"p95 x{percentile(service_lat, 0.95) / percentile(bare_lat, 0.95):.2f}, "
        f"throughput x{service_rate / bare_rate:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
