"""Sustained-load drill: FHIR orders at a fixed rate for a fixed time, through the real service and a real Orthanc.

    .venv/bin/python -m benchmarks.sustained_load [--rate 10] [--duration 30] [--workers 1] [--drain 300]

Starts Orthanc on loopback, stores rate x duration distinct chest studies (the NIH PNGs of ../shared wrapped
into DICOM when present, at most as many as there are; else copies of pydicom-data RG1_J2KI.dcm), starts the
service (waitress + the inline queue + the default model, SQLite), posts one ImagingStudy every 1/rate seconds
until they are all sent, then waits at most `drain` seconds for the queue to empty. Prints POST latency (p50,
p99), scoring throughput, the deepest queue seen, and time from POST to a completed Task (p50, p95), read from
the database. Bounded in count and time; absolute figures depend on the machine and on what else runs on it:
say which when reporting them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests
from sqlalchemy import create_engine, func, select

from benchmarks.pipeline_latency import make_studies, study_uid
from radtriage.app.config import load_settings
from radtriage.app.core.domain import JobState
from radtriage.app.demo import FHIR_JSON, DemoStudy, imaging_study, running_service
from radtriage.app.storage.database import as_utc
from radtriage.app.storage.tables import jobs
from tests.support.orthanc import start_orthanc


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0, help="orders per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of sending (at most 300)")
    parser.add_argument("--workers", type=int, default=1, help="the service's worker threads")
    parser.add_argument("--drain", type=float, default=300.0, help="longest wait for the queue to empty (s)")
    args = parser.parse_args()
    count = int(args.rate * min(args.duration, 300.0))
    home = Path(tempfile.mkdtemp(prefix="radtriage-load-"))
    orthanc = start_orthanc(home / "orthanc")
    try:
        studies, what = make_studies(count, None)
        uids = [study_uid(data) for data in studies]
        for data in studies:
            orthanc.upload(data)
        count = len(uids)  # fewer than asked when the image folder has fewer
        print(f"{count} studies in Orthanc: {what}")
        database = f"sqlite:///{home / 'radtriage.sqlite3'}"
        settings = load_settings(
            env={}, home=str(home), database_url=database, study_source="dicomweb", workers=args.workers,
            dicomweb_url=orthanc.dicomweb_url, dicomweb_username=orthanc.username,
            dicomweb_password=orthanc.password,
        )  # fmt: skip
        engine = create_engine(database)
        with running_service(settings) as base:
            post_latencies: list[float] = []
            depth: list[int] = []
            sending = threading.Event()
            sending.set()

            def watch_queue() -> None:
                waiting = (JobState.RECEIVED.value, JobState.QUEUED.value)
                while sending.is_set():
                    with engine.connect() as conn:
                        depth.append(
                            conn.execute(select(func.count()).where(jobs.c.state.in_(waiting))).scalar_one()
                        )
                    time.sleep(1.0)

            watcher = threading.Thread(target=watch_queue, daemon=True)
            watcher.start()
            started = time.monotonic()
            with requests.Session() as http:
                for n, uid in enumerate(uids):
                    due = started + n / args.rate
                    time.sleep(max(0.0, due - time.monotonic()))
                    t0 = time.monotonic()
                    response = http.post(
                        f"{base}/ImagingStudy", json=imaging_study(n + 1, DemoStudy(f"load{n}", uid)),
                        headers=FHIR_JSON, timeout=30,
                    )  # fmt: skip
                    post_latencies.append(time.monotonic() - t0)
                    response.raise_for_status()
            sent_for = time.monotonic() - started
            deadline = time.monotonic() + args.drain
            terminal = [s.value for s in JobState if s.is_terminal]
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    left = conn.execute(select(func.count()).where(jobs.c.state.not_in(terminal))).scalar_one()
                if left == 0:
                    break
                time.sleep(1.0)
            sending.clear()
            watcher.join(timeout=5)
            with engine.connect() as conn:
                rows = conn.execute(select(jobs.c.state, jobs.c.created_at, jobs.c.updated_at)).all()
        done = [r for r in rows if r.state == JobState.COMPLETED.value]
        to_done = [(as_utc(r.updated_at) - as_utc(r.created_at)).total_seconds() for r in done]
        span = (max(as_utc(r.updated_at) for r in done) - min(as_utc(r.created_at) for r in rows)).total_seconds()
        states: dict[str, int] = {}
        for r in rows:
            states[r.state] = states.get(r.state, 0) + 1
        print(f"sent {count} orders in {sent_for:.1f} s ({count / sent_for:.2f}/s asked {args.rate:g}/s)")
        print(f"POST latency: p50 {statistics.median(post_latencies) * 1000:.0f} ms, "
              f"p99 {percentile(post_latencies, 0.99) * 1000:.0f} ms")  # fmt: skip
        print(f"jobs: {states}")
        print(f"completed {len(done)} in {span:.1f} s from the first order: {len(done) / span:.2f} studies/s")
        print(f"deepest queue (received+queued, sampled each second): {max(depth) if depth else 0}")
        print(f"POST to completed Task: p50 {percentile(to_done, 0.5):.1f} s, p95 {percentile(to_done, 0.95):.1f} s")
    finally:
        orthanc.stop()


if __name__ == "__main__":
    main()
