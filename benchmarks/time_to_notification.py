"""Time to notification under sustained load, and the wait of a STAT order behind a routine burst.

    .venv/bin/python -m benchmarks.time_to_notification [--rate 10] [--seconds 60] [--doors fhir,mllp] [--burst 30]

The embedded default (`radtriage serve`'s shape: one process, in-process priority queue, SQLite, the real model),
with its FHIR door under waitress and its HL7 door on an MLLP socket, both on loopback. Orders are sent at a fixed
rate by a paced client, one door at a time; each order is its own study (HL7 allows one order per study): copies
of up to ten NIH images (or of pydicom-data's RG1 chest CR) under new UIDs, downscaled to 512 px, in the study
folder (the folder source, not a PACS: this measures the service, not DICOMweb).

Times come from the job's own events, written by the service: from ``received`` (the order is committed) to
``publishing`` (the score is stored and the priority handed to the publishers: the FHIR Task shows it and the HL7
update is in the outbox). Then the burst: `--burst` routine orders at once, then one STAT order; its time to
notification against the routine ones'. Absolute times depend on the machine (and who else uses it).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import requests
from hl7.client import MLLPClient
from PIL import Image
from pydicom.uid import generate_uid

from radtriage.app.config import Settings, load_settings
from radtriage.app.core.domain import ImagingOrder, JobState, Priority
from radtriage.app.factory import Components, build_components, create_app
from radtriage.hl7.door import build_hl7_door
from radtriage.imaging.wrap import wrap_image_as_dicom
from tests.hl7.messages import orm
from tests.support.data import SHARED_DATA, pydicom_data_dir

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def base_images(tmp: Path, side: int = 512) -> list[pydicom.Dataset]:
    nih = SHARED_DATA / "cxr" / "nih"
    paths = sorted(p for p in nih.rglob("*.png"))[:10] if nih.is_dir() else []
    datasets = []
    for n, path in enumerate(paths):
        small = tmp / f"base-{n}.png"
        Image.open(path).convert("L").resize((side, side)).save(small)
        datasets.append(pydicom.dcmread(io.BytesIO(wrap_image_as_dicom(small, patient_id=f"TTN{n:02d}"))))
    return datasets or [pydicom.dcmread(pydicom_data_dir() / "RG1_J2KI.dcm")]


def write_studies(folder: Path, templates: list[pydicom.Dataset], count: int, prefix: str) -> list[str]:
    uids = []
    for n in range(count):
        ds = templates[n % len(templates)]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / f"{prefix}-{n:05d}.dcm", enforce_file_format=True)
        uids.append(str(ds.StudyInstanceUID))
    return uids


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextmanager
def running(settings: Settings) -> Iterator[tuple[Components, str, int]]:
    from waitress.server import create_server

    components = build_components(settings)
    app = create_app(components=components)
    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    http = threading.Thread(target=server.run, daemon=True)
    door = build_hl7_door(components, settings, listen_port=0)
    components.start()
    door.start()
    http.start()
    try:
        assert door.port is not None
        yield components, f"http://127.0.0.1:{server.effective_port}/fhir", door.port
    finally:
        server.task_dispatcher.shutdown()
        server.close()
        door.stop()
        components.close()


def paced(rate: float, uids: list[str], send: Callable[[int, str], None]) -> float:
    """Send one order per 1/rate seconds; returns the rate achieved."""
    started = time.monotonic()
    for n, uid in enumerate(uids):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        send(n, uid)
    return len(uids) / (time.monotonic() - started)


def job_of(components: Components, source: str, key: str) -> str:
    order = components.store.find_order(source, key)
    job = components.store.job_for_order(order.id) if order and order.id else None
    assert job is not None, f"order {key} was not stored"
    return job.id


def latencies(components: Components, job_ids: list[str], timeout: float) -> tuple[list[float], int]:
    """Seconds from received to publishing for each job (waits until all ended); and how many did not complete."""
    store = components.store
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(job.state.is_terminal for job in map(store.get_job, job_ids) if job):
            break
        time.sleep(0.5)
    values, not_completed = [], 0
    for job_id in job_ids:
        events = {e.to_state: e.at for e in store.events(job_id)}
        if JobState.PUBLISHING not in events:
            not_completed += 1
            continue
        values.append((events[JobState.PUBLISHING] - events[JobState.RECEIVED]).total_seconds())
    return values, not_completed


def run_door(door: str, components: Components, base: str, mllp_port: int, uids: list[str], rate: float) -> str:
    job_ids: list[str] = []
    if door == "fhir":
        session = requests.Session()

        def send(n: int, uid: str) -> None:
            study = {
                "resourceType": "ImagingStudy",
                "id": f"ttn-{n}",
                "status": "available",
                "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
                "subject": {"reference": f"Patient/ttn-{n}"},
            }
            response = session.post(f"{base}/ImagingStudy", json=study, headers=FHIR_JSON, timeout=30)
            response.raise_for_status()
            job_ids.append(str(response.json()["id"]))  # the Task; its id is the job id

        achieved = paced(rate, uids, send)
    else:
        client = MLLPClient("127.0.0.1", mllp_port)

        def send(n: int, uid: str) -> None:
            client.send_message(orm(f"T{n}", placer=f"TTN{n}", study_uid=uid, patient_id=f"PT{n}"))
            job_ids.append(job_of(components, "hl7", f"RIS^HOSP|TTN{n}"))

        try:
            achieved = paced(rate, uids, send)
        finally:
            client.close()
    values, missing = latencies(components, job_ids, timeout=600)
    return (
        f"{door:<5} {len(uids)} orders at {achieved:.1f}/s: p50 {statistics.median(values):.3f} s, "
        f"p99 {percentile(values, 0.99):.3f} s, max {max(values):.3f} s"
        + (f", {missing} not completed" if missing else "")
    )


def run_burst(components: Components, uids: list[str]) -> str:
    service = components.service
    routine = [
        ImagingOrder(study_instance_uid=uid, patient_ref=f"Patient/b{n}", source="bench", source_key=f"b{n}")
        for n, uid in enumerate(uids[:-1])
    ]
    routine_jobs = [service.submit_order(order)[1].id for order in routine]
    stat = ImagingOrder(
        study_instance_uid=uids[-1],
        patient_ref="Patient/stat",
        source="bench",
        source_key="stat",
        requested_priority=Priority.STAT,
    )
    stat_job = service.submit_order(stat)[1].id
    values, _ = latencies(components, routine_jobs, timeout=600)
    [stat_value], _ = latencies(components, [stat_job], timeout=60)
    return (
        f"burst of {len(routine)} routine then 1 STAT: STAT {stat_value:.3f} s, routine p50 "
        f"{statistics.median(values):.3f} s, routine max {max(values):.3f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10.0, help="orders per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each door is loaded")
    parser.add_argument("--doors", default="fhir,mllp")
    parser.add_argument("--burst", type=int, default=30, help="routine orders in the STAT-behind-routine burst")
    args = parser.parse_args(argv)
    doors = [d.strip() for d in args.doors.split(",") if d.strip()]
    per_door = int(args.rate * args.seconds)
    with tempfile.TemporaryDirectory(prefix="radtriage-ttn-") as tmp:
        folder = Path(tmp) / "studies"
        folder.mkdir()
        templates = base_images(Path(tmp))
        uids = {door: write_studies(folder, templates, per_door, door) for door in doors}
        burst = write_studies(folder, templates, args.burst + 1, "burst")
        settings = load_settings(
            env={}, home=tmp, study_folder=str(folder), shadow_mode="off", mllp_port=0, queue_max_wait=300.0
        )
        lines = []
        with running(settings) as (components, base, mllp_port):
            components.service.source.find_instances(burst[0])  # index the folder once, before the clock runs
            warm = ImagingOrder(study_instance_uid=burst[0], patient_ref="Patient/w", source="warm", source_key="w")
            warm_job = components.service.submit_order(warm)[1].id  # model loaded and warm before the clock runs
            latencies(components, [warm_job], timeout=300)
            for door in doors:
                lines.append(run_door(door, components, base, mllp_port, uids[door], args.rate))
                print(lines[-1], flush=True)
            lines.append(run_burst(components, burst))
            print(lines[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
