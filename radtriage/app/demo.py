"""`radtriage demo`: the whole flow on the embedded default, end to end, on real images.

It starts the real service (SQLite, a local folder of studies, an in-process worker, the FHIR API under
waitress on a free loopback port), posts one FHIR ImagingStudy per study exactly as an EHR would, waits for
each Task to finish, and prints the prioritised worklist and the FHIR resources produced.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import requests

from .config import Settings
from .factory import build_components, create_app

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}  # wrapped into DICOM; DICOM files are copied as they are
PRIORITY_RANK = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}


@dataclass
class DemoStudy:
    """One study to order: its DICOM file in the study folder and what the order says."""

    label: str
    study_uid: str
    priority: str = "routine"
    present: bool = True


def pydicom_data_dir() -> Path:
    import data_store  # the import name of the PyPI package pydicom-data (MIT)

    return Path(data_store.__file__).parent / "data"


def _copy_dicom(src: Path, folder: Path, *, new_study: bool = False, **changes: str) -> str:
    """Copy a DICOM file into the study folder, optionally as a new study (fresh UIDs) or with changed header
    fields (always a new study); returns its Study UID."""
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(src)
    if changes or new_study:
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
    ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return str(ds.StudyInstanceUID)


def builtin_studies(folder: Path) -> list[DemoStudy]:
    """Studies from pydicom-data (MIT): an adult chest CR, a non-chest radiograph, an MR, and edge cases."""
    data = pydicom_data_dir()
    chest = _copy_dicom(data / "RG1_J2KI.dcm", folder)
    return [
        DemoStudy("Adult chest CR, PA (JPEG 2000)", chest),
        # A second study of the same image: one study has one live order (a second order for it would be refused).
        DemoStudy(
            "Same chest image, another study ordered STAT",
            _copy_dicom(data / "RG1_J2KI.dcm", folder, new_study=True),
            priority="stat",
        ),
        DemoStudy("Distal tibia CR (not a chest)", _copy_dicom(data / "RG3_J2KI.dcm", folder)),
        DemoStudy("Shoulder MR (not a radiograph)", _copy_dicom(data / "MR2_J2KI.dcm", folder)),
        DemoStudy(
            "Chest CR labelled lateral only",
            _copy_dicom(data / "RG1_UNCR.dcm", folder, ViewPosition="LL", SeriesDescription="CHEST LAT"),
        ),
        DemoStudy("Study the PACS does not have", "1.2.826.0.1.3680043.10.543.404", present=False),
    ]


def _view_positions(images_dir: Path) -> dict[str, str]:
    """View (PA/AP) per image file, from a labels CSV beside the images when there is one."""
    views: dict[str, str] = {}
    for csv_path in list(images_dir.glob("*.csv")) + list(images_dir.parent.glob("*.csv")):
        with csv_path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                name, view = row.get("image"), (row.get("view") or "").strip().upper()
                if name and view in {"PA", "AP"}:
                    views[Path(name).name] = view
    return views


def folder_studies(images_dir: Path, folder: Path, limit: int) -> list[DemoStudy]:
    """Every DICOM, PNG or JPEG under `images_dir` (up to `limit`) as its own study; images are wrapped into DICOM."""
    from ..imaging.files import image_files, is_part10_file
    from ..imaging.wrap import wrap_image_as_dicom

    views = _view_positions(images_dir)
    studies: list[DemoStudy] = []
    for path in image_files([images_dir]):
        if len(studies) >= limit:
            break
        if path.suffix.lower() in IMAGE_SUFFIXES:
            patient_id = f"DEMO{len(studies) + 1:04d}"
            data = wrap_image_as_dicom(path, patient_id=patient_id, view_position=views.get(path.name))
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(data)
            studies.append(DemoStudy(path.name, str(ds.StudyInstanceUID)))
        elif is_part10_file(path):
            studies.append(DemoStudy(path.name, _copy_dicom(path, folder)))
    return studies


def imaging_study(n: int, study: DemoStudy) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": f"demo-{n}",
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_uid}"}],
        "subject": {"reference": f"Patient/demo-{n}"},
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CR"}],
        "description": study.label,
    }


def service_request(n: int, study: DemoStudy) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": f"demo-order-{n}",
        "status": "active",
        "intent": "order",
        "priority": study.priority,
        "subject": {"reference": f"Patient/demo-{n}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5", "display": "XR Chest 2 Views"}]},
    }


def order_bundle(n: int, study: DemoStudy) -> dict[str, Any]:
    """A transaction Bundle with the order (ServiceRequest) and the study it is about (ImagingStudy)."""
    request_entry = {
        "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012d}",
        "resource": service_request(n, study),
        "request": {"method": "POST", "url": "ServiceRequest"},
    }
    study_resource = imaging_study(n, study)
    study_resource["basedOn"] = [{"reference": request_entry["fullUrl"]}]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            request_entry,
            {"resource": study_resource, "request": {"method": "POST", "url": "ImagingStudy"}},
        ],
    }


@contextmanager
def running_service(settings: Settings) -> Iterator[str]:
    """The FHIR API under waitress on a free loopback port, with the worker running; yields the base URL."""
    from .http_server import create_http_server

    components = build_components(settings)
    app = create_app(components=components)
    server = create_http_server(app, settings, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.run, name="radtriage-http", daemon=True)
    components.start()
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}/fhir"
    finally:
        server.stop()  # lets in-flight requests finish before the sockets close
        components.close()


FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def submit(base: str, n: int, study: DemoStudy) -> str:
    """POST the order; returns the Task id."""
    response = requests.post(base, json=order_bundle(n, study), headers=FHIR_JSON, timeout=30)
    response.raise_for_status()
    return task_of_transaction(base, response.json())


def task_of_transaction(base: str, bundle: dict[str, Any]) -> str:
    """The Task id of the order a transaction-response Bundle reports: each entry names its own resource
    (``ServiceRequest/<id>/_history/1``), and the Task is found by its ``based-on``."""
    for entry in bundle.get("entry", []):
        location = str(entry.get("response", {}).get("location", ""))
        if location.startswith("ServiceRequest/"):
            request_ref = "/".join(location.split("/")[:2])
            found = requests.get(f"{base}/Task", params={"based-on": request_ref}, headers=FHIR_JSON, timeout=30)
            found.raise_for_status()
            for match in found.json().get("entry", []):
                return str(match["resource"]["id"])
        if location.startswith("Task/"):
            return location.split("/")[1]
    raise RuntimeError("the service answered without a Task")


def wait_for_tasks(base: str, task_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    tasks: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for task_id in task_ids:
            if task_id not in tasks or tasks[task_id]["status"] not in ("completed", "failed", "cancelled"):
                tasks[task_id] = requests.get(f"{base}/Task/{task_id}", headers=FHIR_JSON, timeout=30).json()
        if all(t["status"] in ("completed", "failed", "cancelled") for t in tasks.values()):
            break
        time.sleep(0.2)
    return tasks


def run_demo(settings: Settings, studies_source: Path | None, limit: int, out: Any, show_fhir: int | None) -> int:
    home = Path(settings.home)
    folder = Path(settings.study_folder)
    folder.mkdir(parents=True, exist_ok=True)
    studies = folder_studies(studies_source, folder, limit) if studies_source else builtin_studies(folder)
    if not studies:
        out.write(f"No DICOM, PNG or JPEG files found under {studies_source}\n")
        return 1
    started = time.monotonic()
    with running_service(settings) as base:
        out.write(f"radtriage demo: FHIR API at {base}, database {settings.resolved_database_url()}\n")
        task_ids = [submit(base, n, study) for n, study in enumerate(studies, start=1)]
        tasks = wait_for_tasks(base, task_ids, timeout=60 + 10 * len(studies))
        reports = {
            task_id: requests.get(f"{base}/DiagnosticReport/{task_id}", headers=FHIR_JSON, timeout=30)
            for task_id in task_ids
        }
        reports_json = {k: r.json() for k, r in reports.items() if r.status_code == 200}
        observations = {
            task_id: [
                requests.get(f"{base}/{ref['reference']}", headers=FHIR_JSON, timeout=30).json()
                for ref in report.get("result", [])
            ]
            for task_id, report in reports_json.items()
        }
    elapsed = time.monotonic() - started
    rows = [(study, task_ids[i], tasks[task_ids[i]]) for i, study in enumerate(studies)]
    output = home / "fhir-resources.ndjson"
    with output.open("w") as fh:
        for _, task_id, task in rows:
            for resource in [task, reports_json.get(task_id), *observations.get(task_id, [])]:
                if resource:
                    fh.write(json.dumps(resource) + "\n")
    shown = len(rows) if show_fhir is None else show_fhir
    for _, task_id, task in rows[:shown]:
        out.write(f"\n--- FHIR resources for Task/{task_id} ---\n")
        for resource in [task, reports_json.get(task_id), *observations.get(task_id, [])]:
            if resource:
                out.write(json.dumps(resource, indent=2) + "\n")
    # The worklist comes last, so it is what a person sees at the bottom of the terminal.
    print_worklist(rows, reports_json, observations, out)
    out.write(f"\n{len(rows)} studies in {elapsed:.1f} s. All FHIR resources (NDJSON): {output}\n")
    unfinished = [t for t in tasks.values() if t["status"] not in ("completed", "failed", "cancelled")]
    return 1 if unfinished else 0


def _reason(task: dict[str, Any]) -> str:
    coding = (task.get("statusReason") or {}).get("coding") or [{}]
    return str(coding[0].get("code") or task.get("statusReason", {}).get("text") or "")


def print_worklist(
    rows: list[tuple[DemoStudy, str, dict[str, Any]]],
    reports: dict[str, Any],
    observations: dict[str, list[dict[str, Any]]],
    out: Any,
) -> None:
    placeholder = any("PLACEHOLDER" in (r.get("conclusion") or "").upper() for r in reports.values())
    analysed = [r for r in rows if r[2]["status"] == "completed"]

    def worklist_key(row: tuple[DemoStudy, str, dict[str, Any]]) -> tuple[int, float, str]:
        severity = _severity(observations.get(row[1], []))
        rank = PRIORITY_RANK.get(row[2].get("priority", "routine"), 9)
        return rank, -(severity if severity is not None else -1.0), row[2].get("authoredOn", "")

    analysed.sort(key=worklist_key)  # priority, then severity, then waiting time (as the service's Task search)
    not_analysed = [r for r in rows if r[2]["status"] != "completed"]
    shadow_reasons = {reason for _, _, task in analysed if (reason := _shadow_reason(task))}
    shadow = any(_shadow_priority(task) is not None for _, _, task in analysed)
    out.write("\nWORKLIST (most urgent first, then most severe, then longest waiting)\n")
    if placeholder:
        out.write(
            "  !! Scored by the UNTRAINED PLACEHOLDER model: priorities and findings have NO clinical meaning. !!\n"
        )
    if shadow:
        out.write(
            f"  SHADOW MODE ({'; '.join(sorted(shadow_reasons)) or 'see the Task notes'}):\n"
            "  the model raised NO priority and sent no priority update. 'priority' is the order's own;\n"
            "  'model would set' is what the model would have done. `radtriage model validate-site` records a site\n"
            "  validation (see the README, \"Shadow mode\").\n"
        )
    model_column = f"{'model would set':<16}" if shadow else ""
    out.write(f"  {'priority':<9} {model_column}{'severity':<9} {'study':<48} {'positive findings (probability)'}\n")
    for study, task_id, task in analysed:
        found = observations.get(task_id, [])
        severity = _severity(found)
        would = f"{(_shadow_priority(task) or '-'):<16}" if shadow else ""
        out.write(
            f"  {task.get('priority', '?'):<9} {would}{'-' if severity is None else f'{severity:.1f}':<9} "
            f"{study.label[:48]:<48} {_positives(found)}\n"
        )
    not_assessed = sorted({name for _, task_id, _ in analysed for name in _not_assessed(observations.get(task_id, []))})
    if not_assessed:
        out.write(f"  NOT ASSESSED by this model (it has no output for them): {', '.join(not_assessed)}\n")
    if not_analysed:
        out.write("\nNOT ANALYSED (a person must read these; the service does not guess)\n")
        for study, _, task in not_analysed:
            out.write(f"  {task['status']:<9} {study.label[:48]:<48} {_reason(task)}\n")


def _shadow_priority(task: dict[str, Any]) -> str | None:
    """The priority the model would have set, when the Task says it ran in shadow mode."""
    for output in task.get("output", []):
        codes = [c.get("code") for c in output.get("type", {}).get("coding", [])]
        if "shadow-model-priority" in codes:
            return str(output.get("valueCode"))
    return None


def _shadow_reason(task: dict[str, Any]) -> str | None:
    """Why the service ran in shadow mode, from the Task's priority reason ("SHADOW MODE (why): ...")."""
    for output in task.get("output", []):
        found = re.match(r"SHADOW MODE \((.*?)\): ", str(output.get("valueString", "")))
        if found:
            return found.group(1)
    return None


def _severity(observations: list[dict[str, Any]]) -> float | None:
    for obs in observations:
        if obs["code"]["coding"][0].get("code") == "severity-geographic-extent":
            return float(obs["valueQuantity"]["value"])
    return None


def _not_assessed(observations: list[dict[str, Any]]) -> list[str]:
    return [str(obs["code"]["coding"][0].get("code")) for obs in observations if "dataAbsentReason" in obs]


def _positives(observations: list[dict[str, Any]]) -> str:
    """Findings at or above their threshold, e.g. "Effusion 0.81, Edema 0.64"."""
    found = []
    for obs in observations:
        codes = [c.get("code") for i in obs.get("interpretation", []) for c in i.get("coding", [])]
        if "POS" in codes:
            label = obs["code"]["coding"][0].get("display") or obs["code"]["coding"][0].get("code", "?")
            found.append((obs["valueQuantity"]["value"], label))
    if not found:
        return "none above threshold"
    return ", ".join(f"{label} {value:.2f}" for value, label in sorted(found, reverse=True))


def reset_demo_home(home: Path) -> None:
    """The demo starts from an empty database and study folder each time, so its output is reproducible."""
    for name in ("radtriage.sqlite3", "radtriage.sqlite3-wal", "radtriage.sqlite3-shm", "fhir-resources.ndjson"):
        (home / name).unlink(missing_ok=True)
    shutil.rmtree(home / "studies", ignore_errors=True)
