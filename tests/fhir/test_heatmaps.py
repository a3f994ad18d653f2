"""Explain: the DiagnosticReport carries a heatmap overlay per positive finding, readable as PNG or FHIR Binary."""

from __future__ import annotations

import base64
import io
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fhirclient.models.diagnosticreport import DiagnosticReport as FhirclientReport
from PIL import Image

from radtriage.app.config import load_settings
from radtriage.app.factory import build_components, create_app
from tests.support.data import pydicom_data_dir
from tests.support.fhir_validation import assert_valid_fhir

RG1_STUDY = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"
FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}

pytestmark = pytest.mark.slow


def _model_flagging_everything(tmp_path: Path) -> Path:
    """The shipped model with one finding's operating point at 0, so this adult film has a positive finding to
    explain whatever its score (thresholds live in the manifest; the weights and their sha256 are untouched)."""
    import json

    from radtriage.model.evaluation.score_files import DEFAULT_MODEL_DIR

    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["thresholds"][manifest["labels"][0]] = 0.0
    (model / "manifest.json").write_text(json.dumps(manifest))
    return model


@pytest.fixture
def client(tmp_path: Path):
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(pydicom_data_dir() / "RG1_J2KI.dcm", studies)
    components = build_components(load_settings(env={}, home=str(tmp_path), study_folder=str(studies),
                                                model=str(_model_flagging_everything(tmp_path))))
    components.start()
    yield create_app(components=components).test_client()
    components.close()


def test_each_positive_finding_has_a_heatmap_the_report_links(client, fhir_schema_path) -> None:
    study = {
        "resourceType": "ImagingStudy",
        "id": "hm-1",
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{RG1_STUDY}"}],
        "subject": {"reference": "Patient/hm-1"},
    }
    task = client.post("/fhir/ImagingStudy", json=study, headers=FHIR).get_json()
    deadline = time.monotonic() + 120
    while task["status"] not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        task = client.get(f"/fhir/Task/{task['id']}", headers=FHIR).get_json()
    assert task["status"] == "completed"

    # The heatmaps are a separate, later job: the report gets them as a new version once they are stored.
    report = client.get(f"/fhir/DiagnosticReport/{task['id']}", headers=FHIR).get_json()
    while report["meta"]["versionId"] == "1" and time.monotonic() < deadline:
        time.sleep(0.2)
        report = client.get(f"/fhir/DiagnosticReport/{task['id']}", headers=FHIR).get_json()
    assert report["meta"]["versionId"] == "2"
    assert_valid_fhir(report, fhir_schema_path)
    positives = [
        client.get(f"/fhir/{r['reference']}", headers=FHIR).get_json()["code"]["coding"][0]["code"]
        for r in report["result"]
        if "POS" in str(client.get(f"/fhir/{r['reference']}", headers=FHIR).get_json().get("interpretation"))
    ]
    pictures = [form for form in report.get("presentedForm", []) if form["contentType"] == "image/png"]
    assert positives, "the model's first finding is positive at threshold 0; without it this test checks nothing"
    assert len(pictures) == len(positives)
    assert all(label in form["title"] for label, form in zip(positives, pictures, strict=True))

    # Absolute URLs from the service's base (issue 13: a relative Binary/... is refused by fhir.resources 6), and
    # fhirclient's R4 models read the report.
    absolute = pictures[0]["url"]
    assert urlsplit(absolute).scheme in ("http", "https") and urlsplit(absolute).netloc
    assert absolute.startswith("http://localhost/fhir/Binary/heatmap-")
    parsed = FhirclientReport(report)
    assert parsed.presentedForm[-1].url == pictures[-1]["url"]
    url = urlsplit(absolute).path
    png = client.get(url, headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.mimetype == "image/png"
    assert Image.open(io.BytesIO(png.data)).size == (512, 512)

    binary = client.get(url, headers=FHIR)
    assert binary.status_code == 200 and binary.mimetype == "application/fhir+json"
    resource = binary.get_json()
    assert_valid_fhir(resource, fhir_schema_path)
    assert base64.b64decode(resource["data"]) == png.data
    assert resource["securityContext"]["reference"] == f"DiagnosticReport/{task['id']}"

    missing = client.get(f"/fhir/Binary/heatmap-{task['id']}-{len(pictures) + 1}", headers=FHIR)
    assert missing.status_code == 404 and missing.get_json()["resourceType"] == "OperationOutcome"
