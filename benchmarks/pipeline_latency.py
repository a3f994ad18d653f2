"""Bare path against service path, on the same studies in one run.

    .venv/bin/python -m benchmarks.pipeline_latency [--studies 20] [--images DIR]

* bare path:    QIDO-RS + WADO-RS retrieve (dicomweb-client) → decode → preprocess → model, in a loop;
* service path: FHIR POST ImagingStudy → Task completed, through the real service (waitress, SQLite, inline
                worker, the same DICOMweb source and model).

Both run against a real Orthanc on loopback, started here. For each path it prints per-study latency (p50,
p95, one study at a time) and sustained throughput (all studies submitted at once), then the ratios
service/bare. Absolute times depend on the machine; the ratios are the figures to compare.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import requests
from pydicom.uid import generate_uid
from radtriage.imaging.wrap import wrap_image_as_dicom

from radtriage.app.config import load_settings
from radtriage.app.demo import FHIR_JSON, DemoStudy, imaging_study, running_service
from radtriage.app.factory import model_scorer_factory
from radtriage.imaging.dicomweb_source import DicomwebStudySource
from radtriage.imaging.selection import select_instance
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


def bare_path(source: DicomwebStudySource, scorer, uids: list[str]) -> tuple[list[float], float]:
    def one(uid: str) -> float:
        started = time.perf_counter()
        chosen = select_instance(source.find_instances(uid))
        scorer.score(scorer.prepare(source.retrieve_instance(chosen)))
        return time.perf_counter() - started

    one(uids[0])  # warm-up: first-call costs (thread pools, allocator) are not per-study costs
    latencies = [one(uid) for uid in uids]
    started = time.perf_counter()
    for uid in uids:
        one(uid)
    return latencies, len(uids) / (time.perf_counter() - started)


def service_path(base: str, uids: list[str]) -> tuple[list[float], float]:
    session = requests.Session()
    counter = iter(range(10**6))

    def post(uid: str) -> str:
        study = DemoStudy("benchmark", uid)
        response = session.post(f"{base}/ImagingStudy", json=imaging_study(next(counter), study), headers=FHIR_JSON)
        response.raise_for_status()
        return str(response.json()["id"])

    def wait(task_id: str) -> None:
        while True:
            status = session.get(f"{base}/Task/{task_id}", headers=FHIR_JSON).json()["status"]
            if status in ("completed", "failed", "cancelled"):
                if status != "completed":
                    raise RuntimeError(f"Task {task_id} ended {status}")
                return
            time.sleep(0.005)

    def one(uid: str) -> float:
        started = time.perf_counter()
        wait(post(uid))
        return time.perf_counter() - started

    one(uids[0])
    latencies = [one(uid) for uid in uids]
    started = time.perf_counter()
    task_ids = [post(uid) for uid in uids]  # re-posting the same study would be de-duplicated: ids differ
    for task_id in task_ids:
        wait(task_id)
    return latencies, len(uids) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--images", type=Path, default=None, help="folder of PNG/JPEG chest X-rays")
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
            bare_lat, bare_rate = bare_path(source, scorer, uids)
            with running_service(settings) as base:
                service_lat, service_rate = service_path(base, uids)
        finally:
            orthanc.stop()

    print(f"studies: {described}; model: {scorer.identity.name} {scorer.identity.version}")
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
