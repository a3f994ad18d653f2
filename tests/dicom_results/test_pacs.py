"""Issue 13: results into the PACS. The real pipeline scores a chest CR from a real Orthanc (DICOMweb), and the
results go back to that Orthanc by STOW-RS as a TID 1500 SR and a heatmap Secondary Capture: first to a PACS
address where nothing listens (the outbox keeps them and retries, and the priority is not held up), then to
Orthanc. They are then found by QIDO-RS, read back by WADO-RS with pydicom and highdicom, and dumped by dcmtk's
``dsrdump`` and ``dcmdump`` without errors.

The network is the untrained placeholder with fixed scores (`UrgentScorer`, as in the CDS tests): this test is
about the DICOM objects and their delivery, not about the model.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import generate_uid

from radtriage.app.config import Settings
from radtriage.app.core.domain import ImagingOrder, JobState, Priority
from radtriage.app.factory import build_components
from radtriage.compliance.audit_store import AuditFilter
from radtriage.dicom_results.objects import FINDING_SNOMED
from radtriage.dicom_results.outbox import StowClient
from radtriage.model.placeholder import ensure_placeholder
from tests.cds.test_hooks import UrgentScorer
from tests.support.data import pydicom_data_dir
from tests.support.orthanc import OrthancServer, free_loopback_port

pytestmark = pytest.mark.slow


def wait_for(what: str, check, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def dcmtk(tool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="needs dcmtk (Debian package 'dcmtk')")
def test_results_reach_the_pacs_as_sr_and_secondary_capture(own_orthanc: OrthancServer, tmp_path: Path) -> None:
    source = dcmread(pydicom_data_dir() / "RG1_UNCR.dcm")  # a chest PA CR; new UIDs so the study is this test's
    source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID = (generate_uid() for _ in range(3))
    source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
    part10 = io.BytesIO()
    source.save_as(part10)
    own_orthanc.upload(part10.getvalue())

    dead_pacs = f"http://127.0.0.1:{free_loopback_port()}/dicom-web"
    settings = Settings(
        home=str(tmp_path),
        database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        study_source="dicomweb",
        dicomweb_url=own_orthanc.dicomweb_url,
        dicomweb_username=own_orthanc.username,
        dicomweb_password=own_orthanc.password,
        dicom_results=True,
        dicom_results_url=dead_pacs,
        dicom_results_retry_base=0.2,
        dicom_results_retry_max=0.5,
        shadow_mode="off",
    )
    scorer = UrgentScorer.from_artefact(ensure_placeholder(tmp_path / "models"), max_threads=None)
    components = build_components(settings, scorer_factory=lambda: scorer)
    sender = components.dicom_results
    assert sender is not None
    components.start()
    try:
        order = ImagingOrder(
            study_instance_uid=source.StudyInstanceUID, patient_ref="Patient/pacs-1", source="fhir",
            source_key="ImagingStudy/pacs-1", accession_number="ACC-PACS-1",
        )  # fmt: skip
        _, job, _ = components.service.submit_order(order)
        done = wait_for(
            "the job", lambda: components.service.job(job.id).state.is_terminal and components.service.job(job.id)
        )
        assert done.state is JobState.COMPLETED and done.priority is Priority.URGENT  # not held up by the PACS

        # The PACS for results is down: the outbox keeps the job and tries again.
        row = wait_for("a failed attempt", lambda: (r := sender.outbox.state(job.id)) and r["attempts"] >= 2 and r)
        assert row["state"] == "pending" and "unreachable" in row["last_error"]

        sender.client = StowClient(own_orthanc.dicomweb_url, auth=(own_orthanc.username, own_orthanc.password))
        sender.wake()
        wait_for("the STOW-RS", lambda: (sender.outbox.state(job.id) or {}).get("state") == "sent")
    finally:
        components.close()

    result = components.service.result(job.id)
    assert result is not None
    client = DICOMwebClient(own_orthanc.dicomweb_url, session=_session(own_orthanc))
    series = client.search_for_series(source.StudyInstanceUID)
    modalities = sorted(s["00080060"]["Value"][0] for s in series)
    assert modalities == ["CR", "OT", "SR"]
    [sr_hit] = client.search_for_instances(source.StudyInstanceUID, search_filters={"Modality": "SR"})
    [sc_hit] = client.search_for_instances(source.StudyInstanceUID, search_filters={"Modality": "OT"})

    sr = client.retrieve_instance(
        source.StudyInstanceUID, sr_hit["0020000E"]["Value"][0], sr_hit["00080018"]["Value"][0]
    )
    document = hd.sr.Comprehensive3DSR.from_dataset(sr)
    assert document.CompletionFlag == "PARTIAL" and document.VerificationFlag == "UNVERIFIED"
    assert document.PatientID == source.PatientID and document.StudyInstanceUID == source.StudyInstanceUID
    report = hd.sr.MeasurementReport.from_sequence(document.content)
    groups = report.get_image_measurement_groups()
    by_finding = {g.finding_type.meaning: g for g in groups}
    effusion = by_finding[FINDING_SNOMED["Effusion"][1]]
    [probability, threshold] = effusion.get_measurements()
    assert (probability.value, threshold.value) == (0.97, 0.5)
    assert effusion.get_qualitative_evaluations()[0].value.meaning == "Present"
    assert effusion.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
    study_group = by_finding["Chest radiograph triage by a model"]
    assert study_group.get_qualitative_evaluations()[0].value.value == "urgent"
    assert study_group.get_measurements()[0].value == 3.5  # severity
    not_assessed = {
        g.finding_type.meaning for g in groups if g.get_qualitative_evaluations()[0].value.value == "not-assessed"
    }
    assert len(groups) == len(result.findings) + len(result.not_assessed) + 1
    assert len(not_assessed) == len(result.not_assessed)

    sc = client.retrieve_instance(
        source.StudyInstanceUID, sc_hit["0020000E"]["Value"][0], sc_hit["00080018"]["Value"][0]
    )
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.pixel_array.shape == (512, 512, 3)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "Effusion" in sc.ImageComments and "AI-generated" in sc.Manufacturer

    for name, dataset in (("sr.dcm", sr), ("sc.dcm", sc)):
        dataset.save_as(tmp_path / name, enforce_file_format=True)
    for tool, name in (("dsrdump", "sr.dcm"), ("dcmdump", "sr.dcm"), ("dcmdump", "sc.dcm")):
        run = dcmtk(tool, tmp_path / name)
        assert run.returncode == 0 and "E: " not in run.stderr, (tool, name, run.stderr)
    dump = dcmtk("dsrdump", tmp_path / "sr.dcm").stdout
    assert "Imaging Measurement Report" in dump
    # TID 4019 in every group (IHE AI Results): the model's version, once per measurement group.
    assert dump.count(f'"Algorithm Version")="{result.model.version}"') == len(groups)

    sent, _ = components.audit.search(AuditFilter(kind="message-sent"))
    assert any(r.patient_ref == "Patient/pacs-1" for r in sent)


def _session(orthanc: OrthancServer) -> requests.Session:
    session = requests.Session()
    session.auth = (orthanc.username, orthanc.password)
    return session


def test_the_objects_are_not_sent_when_the_setting_is_off(tmp_path: Path) -> None:
    components = build_components(Settings(home=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}"))
    try:
        assert components.dicom_results is None
        assert not any("DicomResultsOutbox" in repr(listener) for listener in components.service.listeners)
    finally:
        components.close()
    with pytest.raises(ValueError, match="dicom_results"):
        build_components(replace(components.settings, dicom_results=True, dicomweb_url=""))
