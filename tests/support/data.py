"""Where test data lives, and fixtures that skip (with the reason) when it is not there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("RADTRIAGE_SHARED_DATA", REPO.parent / "shared" / "data"))
SHARED_FHIR = Path(os.environ.get("RADTRIAGE_SHARED_FHIR", REPO.parent / "shared" / "fhir"))
NO_SHARED = "needs ../shared (the project's shared data); it is not in a fresh clone"


def pydicom_data_dir() -> Path:
    """The DICOM files of the PyPI package pydicom-data (MIT), always installed with the dev requirements."""
    import data_store  # the import name of pydicom-data

    return Path(data_store.__file__).parent / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(NO_SHARED)
    return SHARED_DATA


@pytest.fixture(scope="session")
def fhir_schema_path() -> Path | None:
    """The FHIR R4 JSON Schema, or None without ../shared: resources are then checked by fhir.resources alone,
    so the FHIR tests still run in a fresh clone (with one opinion instead of two)."""
    path = SHARED_FHIR / "fhir.schema.r4.json"
    return path if path.exists() else None


@pytest.fixture(scope="session")
def required_fhir_schema_path(fhir_schema_path: Path | None) -> Path:
    """For the tests of the schema check itself."""
    if fhir_schema_path is None:
        pytest.skip(NO_SHARED)
    return fhir_schema_path


def copy_as_new_study(src: Path, root: Path) -> str:
    """Copy a DICOM file into an archive folder under fresh UIDs (a new study of the same image); its Study UID.

    One study has one live order at a time, so tests that need several orders in flight need several studies.
    """
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    ds = dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(root / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return str(ds.StudyInstanceUID)
