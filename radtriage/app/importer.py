"""``radtriage import FOLDER``: put chest X-rays into the image archive the service reads, and optionally order
them, so that a server started once (``radtriage serve``) has studies on its worklist.

Images are DICOM Part 10 files (stored as they are) or PNG/JPEG (wrapped into a DICOM Secondary Capture study
each, `radtriage.imaging.wrap`). Where they go follows ``study_source``: the study folder (``study_folder``, by
default ``home/studies``), or the PACS by DICOMweb STOW-RS (PS3.18 10.5) at ``dicomweb_url``. With ``--order``
each study is then ordered from the running server's FHIR API with one transaction Bundle (ServiceRequest +
ImagingStudy), exactly as an EHR would (docs/example-order-bundle.json is one such Bundle).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .config import Settings
from .core.errors import TriageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class Imported:
    source: Path
    study_uid: str | None
    error: str | None = None


def dicom_studies(folder: Path, limit: int) -> Iterator[tuple[Path, bytes | None, str | None]]:
    """(file, Part 10 bytes, None), or (file, None, why it cannot be imported), for up to `limit` images."""
    from ..imaging.files import image_files, is_part10_file
    from ..imaging.wrap import wrap_image_as_dicom

    count = 0
    for path in image_files([folder]):
        if count >= limit:
            return
        count += 1
        if path.suffix.lower() in IMAGE_SUFFIXES:
            try:
                yield path, wrap_image_as_dicom(path, patient_id=f"IMPORT{count:05d}"), None
            except TriageError as error:
                yield path, None, error.detail or "the image cannot be read"
        elif is_part10_file(path):
            yield path, path.read_bytes(), None
        else:
            yield path, None, "not a DICOM Part 10, PNG or JPEG file"


def folder_store(folder: Path) -> Callable[[bytes], str]:
    """Store into the study folder (``<SOP Instance UID>.dcm``); returns the Study Instance UID."""
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)

    def store(data: bytes) -> str:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        (folder / f"{header.SOPInstanceUID}.dcm").write_bytes(data)
        return str(header.StudyInstanceUID)

    return store


def stow_store(settings: Settings) -> Callable[[bytes], str]:
    """Store into the PACS by STOW-RS; returns the Study Instance UID. A refusal raises `ValueError`."""
    import pydicom
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if settings.dicomweb_username:
        session.auth = (settings.dicomweb_username, settings.dicomweb_password)
    client = DICOMwebClient(settings.dicomweb_url.rstrip("/"), session=session, timeout=settings.dicomweb_timeout)

    def store(data: bytes) -> str:
        dataset = pydicom.dcmread(io.BytesIO(data))
        try:
            client.store_instances([dataset])
        except (requests.RequestException, RuntimeError, ValueError) as error:
            raise ValueError(f"the PACS refused or did not answer ({type(error).__name__})") from None
        return str(dataset.StudyInstanceUID)

    return store


def import_images(folder: Path, store: Callable[[bytes], str], *, limit: int) -> list[Imported]:
    out = []
    for path, data, problem in dicom_studies(folder, limit):
        if data is None:
            out.append(Imported(path, None, problem))
            continue
        try:
            out.append(Imported(path, store(data)))
        except (OSError, ValueError) as error:
            out.append(Imported(path, None, str(error) or type(error).__name__))
    return out


def order_study(fhir_base: str, n: int, label: str, study_uid: str, priority: str) -> str:
    """Order one study from the running server (a transaction Bundle); returns the Task id."""
    import requests

    from .demo import DemoStudy, order_bundle, task_of_transaction

    bundle = order_bundle(n, DemoStudy(label, study_uid, priority=priority))
    # A pseudonymous patient per study (no patient data is invented), and no client-chosen resource ids, so
    # that repeated imports never collide.
    patient = f"Patient/import-{hashlib.sha256(study_uid.encode()).hexdigest()[:12]}"
    for entry in bundle["entry"]:
        entry["resource"].pop("id", None)
        entry["resource"]["subject"] = {"reference": patient}
    response = requests.post(fhir_base, json=bundle, headers={"Content-Type": "application/fhir+json"}, timeout=30)
    if response.status_code >= 300:
        raise ValueError(f"the FHIR API answered HTTP {response.status_code}")
    return task_of_transaction(fhir_base, response.json())


def default_fhir_base(settings: Settings) -> str:
    return (settings.base_url.rstrip("/") or f"http://{settings.host}:{settings.port}") + "/fhir"


@click.command("import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--limit", default=1000, show_default=True, help="At most this many images.")
@click.option("--order", "place_orders", is_flag=True, help="Also order each study from the running server.")
@click.option(
    "--priority",
    type=click.Choice(["routine", "urgent", "asap", "stat"]),
    default="routine",
    show_default=True,
    help="The orders' priority (with --order).",
)
@click.option("--fhir-url", help="The running server's FHIR base (default: base_url, or http://host:port/fhir).")
@click.pass_obj
def import_command(obj: Any, folder: Path, limit: int, place_orders: bool, priority: str, fhir_url: str | None) -> None:
    """Put PNG/JPEG/DICOM chest X-rays from FOLDER into the study folder or, with study_source = "dicomweb",
    the PACS by STOW-RS; with --order, order each one from the running server (it then appears on the
    worklist). Exit status 1 when an image could not be imported, 2 when the folder has none."""
    from .config import load_settings

    settings = load_settings(obj.get("config") if isinstance(obj, dict) else None)
    if settings.study_source == "dicomweb":
        if not settings.dicomweb_url:
            raise click.UsageError("study_source is dicomweb but dicomweb_url is not set")
        store, where = stow_store(settings), f"the PACS at {settings.dicomweb_url} (STOW-RS)"
    else:
        target = Path(settings.study_folder or Path(settings.home) / "studies")
        store, where = folder_store(target), f"the study folder {target}"
    results = import_images(folder, store, limit=limit)
    if not results:
        click.echo(f"radtriage: no DICOM, PNG or JPEG images in {folder}", err=True)
        raise SystemExit(2)
    base = fhir_url or default_fhir_base(settings)
    failures = 0
    for n, item in enumerate(results, start=1):
        if item.study_uid is None:
            failures += 1
            click.echo(f"{item.source.name}: not imported: {item.error}", err=True)
            continue
        line = f"{item.source.name}: study {item.study_uid}"
        if place_orders:
            try:
                line += (
                    f", ordered ({priority}) as Task/{order_study(base, n, item.source.name, item.study_uid, priority)}"
                )
            except (OSError, ValueError, RuntimeError) as error:
                failures += 1
                line += f", NOT ordered: {error} (is `radtriage serve` running at {base}?)"
        click.echo(line)
    imported = len(results) - sum(1 for r in results if r.study_uid is None)
    click.echo(f"{imported} of {len(results)} image(s) imported into {where}", err=True)
    if failures:
        raise SystemExit(1)
