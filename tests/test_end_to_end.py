"""The whole flow over real loopback servers: FHIR POST → Orthanc over DICOMweb → model → FHIR results."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
import pytest
import requests

from radtriage.app.config import load_settings
from radtriage.app.demo import FHIR_JSON, DemoStudy, imaging_study, order_bundle, running_service, task_of_transaction
from tests.support.data import pydicom_data_dir

pytestmark = pytest.mark.slow


def wait_for(base: str, task_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = requests.get(f"{base}/Task/{task_id}", headers=FHIR_JSON, timeout=10).json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        time.sleep(0.1)
    raise AssertionError(f"Task {task_id} did not finish")


@pytest.fixture(scope="module")
def loaded_orthanc(orthanc):
    orthanc.clear()
    uids = {}
    for name in ("RG1_J2KI.dcm", "RG3_J2KI.dcm", "MR2_J2KI.dcm"):
        data = (pydicom_data_dir() / name).read_bytes()
        orthanc.upload(data)
        uids[name] = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)
    return orthanc, uids


def test_orders_are_triaged_from_a_real_pacs(loaded_orthanc, tmp_path: Path) -> None:
    orthanc, uids = loaded_orthanc
    settings = load_settings(
        env={},
        home=str(tmp_path),
        study_source="dicomweb",
        dicomweb_url=orthanc.dicomweb_url,
        dicomweb_username=orthanc.username,
        dicomweb_password=orthanc.password,
    )
    with running_service(settings) as base:
        chest = requests.post(
            base, json=order_bundle(1, DemoStudy("chest", uids["RG1_J2KI.dcm"], priority="asap")), headers=FHIR_JSON
        )
        assert chest.status_code == 200, chest.text  # transaction-response Bundle
        leg = requests.post(
            f"{base}/ImagingStudy", json=imaging_study(2, DemoStudy("leg", uids["RG3_J2KI.dcm"])), headers=FHIR_JSON
        )
        mr = requests.post(
            f"{base}/ImagingStudy", json=imaging_study(3, DemoStudy("mr", uids["MR2_J2KI.dcm"])), headers=FHIR_JSON
        )
        missing = requests.post(
            f"{base}/ImagingStudy", json=imaging_study(4, DemoStudy("gone", "1.2.3.4.404")), headers=FHIR_JSON
        )
        assert [r.status_code for r in (leg, mr, missing)] == [201, 201, 201]

        chest_task_id = task_of_transaction(base, chest.json())
        chest_task = wait_for(base, chest_task_id)
        assert chest_task["status"] == "completed"
        # The order said asap: the result may raise it to stat but never lower it.
        assert chest_task["priority"] in ("asap", "stat")

        report = requests.get(f"{base}/DiagnosticReport/{chest_task_id}", headers=FHIR_JSON).json()
        assert report["status"] == "preliminary"
        assert report["basedOn"][0]["reference"].startswith("ServiceRequest/")
        observations = [requests.get(f"{base}/{r['reference']}", headers=FHIR_JSON).json() for r in report["result"]]
        assert observations and all(o["resourceType"] == "Observation" for o in observations)
        # A value for each finding the model assesses; a dataAbsentReason (and no value) for each it cannot.
        absent = [o for o in observations if "dataAbsentReason" in o]
        assert all("valueQuantity" in o and "interpretation" in o for o in observations if o not in absent)
        assert all(not any(k.startswith("value") for k in o) for o in absent)

        def reason(response: requests.Response) -> str:
            task = wait_for(base, response.json()["id"])
            assert task["status"] == "failed"
            return task["statusReason"]["coding"][0]["code"]

        assert reason(leg) == "not-a-chest"
        assert reason(mr) == "not-a-radiograph"
        assert reason(missing) == "study-not-found"


def test_a_pacs_that_is_down_leaves_the_task_waiting_for_a_retry(tmp_path: Path) -> None:
    from tests.support.orthanc import free_loopback_port

    settings = load_settings(
        env={},
        home=str(tmp_path),
        study_source="dicomweb",
        dicomweb_url=f"http://127.0.0.1:{free_loopback_port()}/dicom-web",
        dicomweb_timeout=1.0,
        dicomweb_attempts=1,
    )
    with running_service(settings) as base:
        response = requests.post(
            f"{base}/ImagingStudy", json=imaging_study(1, DemoStudy("x", "1.2.3.4.5")), headers=FHIR_JSON
        )
        started = time.monotonic()
        task_url = f"{base}/Task/{response.json()['id']}"
        while "statusReason" not in (task := requests.get(task_url, headers=FHIR_JSON, timeout=10).json()):
            assert time.monotonic() - started < 15
            time.sleep(0.1)
    # Not failed: the service will try again (radtriage.app.retry), and the Task says what it waits for.
    assert task["status"] == "in-progress"
    assert task["businessStatus"]["text"].startswith("waiting for PACS")
    assert task["statusReason"]["coding"][0]["code"] == "pacs-unavailable"
