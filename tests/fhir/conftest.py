"""Fixtures for the FHIR door's API tests: the real service on a temporary SQLite database, a DICOM folder
as the image archive and the real (untrained placeholder) model, loaded once per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom import dcmread

from radtriage.app.config import Settings
from radtriage.app.factory import Components, build_components, create_app
from radtriage.imaging.folder_source import FolderStudySource
from radtriage.model.placeholder import ensure_placeholder
from radtriage.model.scorer import XrvScorer
from tests.support.data import pydicom_data_dir


@dataclass(frozen=True)
class Studies:
    """The image archive's folder and the Study Instance UIDs in it (pydicom-data files, MIT licence)."""

    root: Path
    chest: str  # RG1_J2KI: CR, chest, PA, JPEG 2000
    extremity: str  # RG3_J2KI: CR, extremity
    mr: str  # MR2_J2KI: MR


@pytest.fixture(scope="session")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Studies:
    root = tmp_path_factory.mktemp("archive")
    uids = {}
    for name in ("RG1_J2KI.dcm", "RG3_J2KI.dcm", "MR2_J2KI.dcm"):
        shutil.copy(pydicom_data_dir() / name, root / name)
        uids[name] = str(dcmread(root / name, stop_before_pixels=True).StudyInstanceUID)
    return Studies(root, uids["RG1_J2KI.dcm"], uids["RG3_J2KI.dcm"], uids["MR2_J2KI.dcm"])


@pytest.fixture(scope="session")
def fhir_scorer(tmp_path_factory: pytest.TempPathFactory) -> XrvScorer:
    # max_threads=None: leave torch's thread setting alone in the shared test process.
    return XrvScorer.from_artefact(ensure_placeholder(tmp_path_factory.mktemp("models")), max_threads=None)


@contextmanager
def running_components(home: Path, studies: Studies, scorer: XrvScorer, **settings: Any) -> Iterator[Components]:
    """The service with its worker running, on a fresh SQLite database under `home` (`settings` override)."""
    configured = Settings(home=str(home), database_url=f"sqlite:///{home / 'radtriage.sqlite3'}", **settings)
    built = build_components(configured, scorer_factory=lambda: scorer, study_source=FolderStudySource(studies.root))
    built.start()
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def components(tmp_path: Path, studies: Studies, fhir_scorer: XrvScorer) -> Iterator[Components]:
    with running_components(tmp_path, studies, fhir_scorer) as built:
        yield built


@pytest.fixture
def app(components: Components) -> Flask:
    return create_app(components=components)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
