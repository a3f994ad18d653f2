"""``radtriage import FOLDER``: images into the study folder or the PACS (STOW-RS), and orders to a running
server so that they reach the worklist; bad input is a message and an exit status, never a traceback."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import requests
from click.testing import CliRunner
from PIL import Image

from radtriage.app.config import load_settings
from radtriage.app.demo import FHIR_JSON, running_service
from radtriage.cli import main
from tests.support.data import pydicom_data_dir
from tests.support.orthanc import OrthancServer


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def _images(folder: Path) -> Path:
    folder.mkdir()
    gradient = (np.add.outer(np.arange(512), np.arange(512)) % 256).astype(np.uint8)
    Image.fromarray(gradient, mode="L").save(folder / "chest.png")
    shutil.copy(pydicom_data_dir() / "RG1_J2KI.dcm", folder / "chest.dcm")
    return folder


def test_images_go_into_the_study_folder_and_bad_ones_are_named(tmp_path: Path) -> None:
    images = _images(tmp_path / "in")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    env = {"RADTRIAGE_HOME": str(tmp_path / "home")}
    code, out = run(env, "import", str(images))
    assert code == 1  # one image could not be imported
    assert "broken.jpg: not imported" in out and "2 of 3 image(s) imported" in out
    stored = sorted((tmp_path / "home" / "studies").glob("*.dcm"))
    assert len(stored) == 2
    studies = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in stored}
    assert all(f"study {uid}" in out for uid in studies)


def test_an_empty_folder_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out = run({"RADTRIAGE_HOME": str(tmp_path)}, "import", str(tmp_path / "empty"))
    assert code == 2 and out.strip() == f"radtriage: no DICOM, PNG or JPEG images in {tmp_path / 'empty'}"
    code, out = run({"RADTRIAGE_HOME": str(tmp_path)}, "import", str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in out


def test_images_go_to_the_pacs_by_stow_rs(tmp_path: Path, orthanc: OrthancServer) -> None:
    orthanc.clear()
    images = _images(tmp_path / "in")
    env = {
        "RADTRIAGE_HOME": str(tmp_path / "home"),
        "RADTRIAGE_STUDY_SOURCE": "dicomweb",
        "RADTRIAGE_DICOMWEB_URL": orthanc.dicomweb_url,
        "RADTRIAGE_DICOMWEB_USERNAME": orthanc.username,
        "RADTRIAGE_DICOMWEB_PASSWORD": orthanc.password,
    }
    code, out = run(env, "import", str(images))
    assert code == 0, out
    assert "into the PACS" in out and not (tmp_path / "home" / "studies").exists()
    found = requests.get(f"{orthanc.base_url}/studies", auth=(orthanc.username, orthanc.password), timeout=10)
    assert len(found.json()) == 2


def test_with_order_each_study_reaches_the_running_servers_worklist(tmp_path: Path) -> None:
    images = _images(tmp_path / "in")
    env = {"RADTRIAGE_HOME": str(tmp_path / "home")}
    settings = load_settings(env=env, shadow_mode="off")
    with running_service(settings) as base:
        code, out = run(env, "import", str(images), "--order", "--priority", "urgent", "--fhir-url", base)
        assert code == 0, out
        tasks = [line.split("Task/")[1] for line in out.splitlines() if "ordered (urgent) as Task/" in line]
        assert len(tasks) == 2
        deadline = time.monotonic() + 120
        states: set[str] = set()
        while time.monotonic() < deadline:
            states = {requests.get(f"{base}/Task/{t}", headers=FHIR_JSON, timeout=10).json()["status"] for t in tasks}
            if states <= {"completed", "failed"}:
                break
            time.sleep(0.2)
        assert states <= {"completed", "failed"}
    code, out = run(env, "import", str(images), "--order", "--fhir-url", "http://127.0.0.1:9/fhir")
    assert code == 1 and "NOT ordered" in out and "radtriage serve" in out  # nothing listening: said, not raised


def test_the_example_order_bundle_in_docs_is_accepted_as_it_stands(tmp_path: Path) -> None:
    import json

    from radtriage.app.demo import task_of_transaction

    bundle = json.loads((Path(__file__).parents[2] / "docs" / "example-order-bundle.json").read_text("utf-8"))
    settings = load_settings(env={"RADTRIAGE_HOME": str(tmp_path)})
    with running_service(settings) as base:
        response = requests.post(base, json=bundle, headers=FHIR_JSON, timeout=30)
        assert response.status_code == 200, response.text
        task = requests.get(f"{base}/Task/{task_of_transaction(base, response.json())}", headers=FHIR_JSON, timeout=10)
        assert task.json()["priority"] == "urgent"
