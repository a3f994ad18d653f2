"""Fixtures for the web pages: the real service (SQLite, a DICOM folder as the image archive, the shipped model
loaded once per session), a users file with one person per role, and helpers to order and sign in."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.uid import generate_uid

from radtriage.app.config import Settings
from radtriage.app.core.domain import ImagingOrder, Job, Priority
from radtriage.app.factory import Components, build_components, create_app
from radtriage.imaging.folder_source import FolderStudySource
from radtriage.model.registry import SHIPPED_DEFAULT
from radtriage.model.scorer import XrvScorer
from radtriage.web.users import SCRYPT_R, UserDirectory, WebRole, WebUser, hash_password
from tests.support.data import copy_as_new_study, pydicom_data_dir

PASSWORD = "correct horse battery staple"
#: Test-only scrypt cost: the production default (N = 2**14) is checked in test_users; here speed matters.
_FAST_N = 2**10


@dataclass(frozen=True)
class Archive:
    root: Path
    chest: str  # RG1_J2KI: CR chest PA (JPEG 2000), analysable
    extremity: str  # RG3_J2KI: not a chest → not analysed


@pytest.fixture(scope="session")
def web_scorer(tmp_path_factory: pytest.TempPathFactory) -> XrvScorer:
    """The shipped model with its operating points at 0: the pages need a study with positive findings
    (chips, heatmaps), and the new default rightly does not flag the adult test film. Weights and sha256 are as
    shipped; only the manifest's threshold differs."""
    import json
    import shutil

    model = tmp_path_factory.mktemp("model") / "flags-pneumonia"
    shutil.copytree(SHIPPED_DEFAULT, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["thresholds"] = dict.fromkeys(manifest["labels"], 0.0)  # every assessed finding positive
    (model / "manifest.json").write_text(json.dumps(manifest))
    return XrvScorer.from_artefact(model, max_threads=None)


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    root = tmp_path / "archive"
    root.mkdir()
    chest = copy_as_new_study(pydicom_data_dir() / "RG1_J2KI.dcm", root)
    extremity = copy_as_new_study(pydicom_data_dir() / "RG3_J2KI.dcm", root)
    return Archive(root, chest, extremity)


def users_directory() -> UserDirectory:
    return UserDirectory(
        [
            WebUser("rad", WebRole.RADIOLOGIST, hash_password(PASSWORD, n=_FAST_N, r=SCRYPT_R), "Dr Rad Iologist"),
            WebUser("comp", WebRole.COMPLIANCE, hash_password(PASSWORD, n=_FAST_N, r=SCRYPT_R), "Cleo Compliance"),
            WebUser("admin", WebRole.ADMIN, hash_password(PASSWORD, n=_FAST_N, r=SCRYPT_R), "Ada Admin"),
        ]
    )


@pytest.fixture
def components(tmp_path: Path, archive: Archive, web_scorer: XrvScorer) -> Iterator[Components]:
    settings = Settings(home=str(tmp_path / "home"), database_url=f"sqlite:///{tmp_path / 'radtriage.sqlite3'}")
    built = build_components(settings, scorer_factory=lambda: web_scorer, study_source=FolderStudySource(archive.root))
    built.start()
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"users": [u.to_dict() for u in users_directory()]}), "utf-8")
    return path


@pytest.fixture
def app(components: Components, users_file: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """The app exactly as the composition root builds it, with the web users and secret from the environment."""
    monkeypatch.setenv("RADTRIAGE_WEB_USERS", str(users_file))
    monkeypatch.setenv("RADTRIAGE_WEB_SECRET_KEY", "test-secret-" + "x" * 40)
    return create_app(components=components)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def order(
    components: Components,
    study_uid: str,
    *,
    priority: Priority = Priority.ROUTINE,
    accession: str | None = None,
    patient: str = "Patient/p-1",
) -> tuple[ImagingOrder, Job]:
    stored, job, _created = components.service.submit_order(
        ImagingOrder(
            study_instance_uid=study_uid,
            patient_ref=patient,
            source="test",
            source_key=generate_uid(),
            requested_priority=priority,
            accession_number=accession,
        )
    )
    return stored, job


def wait_terminal(components: Components, job_id: str, timeout: float = 60.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = components.service.job(job_id)
        if job.state.is_terminal:
            return job
        time.sleep(0.05)
    raise AssertionError("the job did not finish in time")


def sign_in(client: FlaskClient, username: str, password: str = PASSWORD) -> None:
    page = client.get("/login")
    token = _csrf(page.get_data(as_text=True))
    response = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]


def csrf_of(client: FlaskClient, path: str) -> str:
    return _csrf(client.get(path).get_data(as_text=True))


def _csrf(html: str) -> str:
    import re

    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)
