"""No patient data where it does not belong (issue 5, item 6), proven on the whole flow.

The whole service runs as in production (access control on, tokens from the real token endpoint, the worker
scoring with the real placeholder model) on orders whose patient reference, identifiers, name and birth date
are marker values, in the FHIR resources *and* in the DICOM headers of the studies. Every log line (root
logger at DEBUG, raw: without the redacting filter, because the rule is that nothing logs patient data in the
first place) and every job-queue message is collected, and no marker may appear in any of them. Error
bodies are checked too. The markers must appear where they belong (FHIR bodies, the database, the audit
export): otherwise the test would pass without having tested anything.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydicom import dcmread
from werkzeug.test import TestResponse

from radtriage.app.config import Settings
from radtriage.app.factory import Components, build_components, create_app
from radtriage.compliance.phi import LogCollector, collect_logs
from radtriage.imaging.folder_source import FolderStudySource
from radtriage.model.placeholder import ensure_placeholder
from radtriage.model.scorer import XrvScorer
from tests.fhir.smart import SmartClient, access_settings, write_registry
from tests.support.data import pydicom_data_dir
from tests.support.fhir_validation import assert_valid_fhir

PATIENT = "Patient/PHIMARKER-7731"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"
MRN = "MRNMARKER-3319"
ACCESSION = "ACCMARKER-5512"
PLACER = "PLACMARKER-8842"
FAMILY, GIVEN = "NAMEMARKERFAMILY", "NAMEMARKERGIVEN"
BIRTH_DATE = "19580422"  # also looked for as 1958-04-22
MARKERS = ("PHIMARKER", MRN, ACCESSION, PLACER, FAMILY, GIVEN, BIRTH_DATE, "1958-04-22")

FHIR_JSON = "application/fhir+json"
EHR = SmartClient("ehr-phi", "ehr")
COMPLIANCE = SmartClient("compliance-phi", "compliance")
EHR_SCOPES = (
    "system/ImagingStudy.c system/ServiceRequest.c system/Task.rs system/DiagnosticReport.rs "
    "system/Observation.rs system/Provenance.rs system/Device.rs"
)


@dataclass
class Archive:
    root: Path
    chest: str
    extremity: str


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """The chest CR and the extremity CR of pydicom-data, with the markers as the patient in their headers."""
    root = tmp_path_factory.mktemp("phi-archive")
    uids = []
    for name in ("RG1_J2KI.dcm", "RG3_J2KI.dcm"):
        dataset = dcmread(pydicom_data_dir() / name)
        dataset.PatientName = f"{FAMILY}^{GIVEN}"
        dataset.PatientID = MRN
        dataset.PatientBirthDate = BIRTH_DATE
        dataset.AccessionNumber = ACCESSION
        dataset.save_as(root / name)
        uids.append(str(dataset.StudyInstanceUID))
    return Archive(root, *uids)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> XrvScorer:
    return XrvScorer.from_artefact(ensure_placeholder(tmp_path_factory.mktemp("models")), max_threads=None)


@dataclass
class QueueTap:
    """Every message the job queue carries, as the queue received it."""

    messages: list[str] = field(default_factory=list)

    def wrap(self, components: Components) -> None:
        enqueue = components.queue.enqueue

        def recording(*args: Any, **kwargs: Any) -> None:
            self.messages.append(repr((args, kwargs)))
            enqueue(*args, **kwargs)

        components.queue.enqueue = recording  # type: ignore[method-assign]


@dataclass
class Running:
    components: Components
    http: FlaskClient
    queue: QueueTap
    schema: Path


@pytest.fixture
def running(tmp_path: Path, archive: Archive, scorer: XrvScorer, fhir_schema_path: Path) -> Iterator[Running]:
    registry = write_registry(tmp_path / "clients.json", EHR, COMPLIANCE)
    settings = Settings(
        home=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", **access_settings(registry)
    )
    components = build_components(settings, scorer_factory=lambda: scorer, study_source=FolderStudySource(archive.root))
    tap = QueueTap()
    tap.wrap(components)
    components.start()
    try:
        yield Running(components, create_app(components=components).test_client(), tap, fhir_schema_path)
    finally:
        components.close()


def leaks(text: str) -> list[str]:
    return [m for m in MARKERS if m.lower() in text.lower()]


def assert_clean(logs: LogCollector, queue: QueueTap) -> None:
    leaked_lines = logs.containing(MARKERS)
    assert not leaked_lines, "patient data in log lines:\n" + "\n".join(leaked_lines[:20])
    assert queue.messages, "the job queue carried nothing: the flow did not run"
    for message in queue.messages:
        assert not leaks(message), f"patient data in a job-queue message: {message}"
        # A message is a job id and nothing else (DESIGN.md): nothing else can leak through it. The priority only
        # picks the queue the id waits in.
        assert re.fullmatch(r"\(\('[0-9a-f]{32}', <Priority\.[A-Z]+: \d>\), \{\}\)", message), message


# ---------------------------------------------------------------------------------------------- FHIR


def test_the_fhir_flow_keeps_patient_data_out_of_logs_queue_and_errors(running: Running, archive: Archive) -> None:
    http, schema = running.http, running.schema
    addr = {"REMOTE_ADDR": "192.0.2.77"}
    error_bodies: list[str] = []

    def call(method: str, path: str, token: str | None, body: Any = None, status: int = 200) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
        response: TestResponse = http.open(
            path, method=method, headers=headers, data=data, content_type=FHIR_JSON, environ_base=addr
        )
        text = response.get_data(as_text=True)
        assert response.status_code == status, text
        if status >= 400:
            error_bodies.append(text + json.dumps(dict(response.headers)))
        if response.mimetype != FHIR_JSON:
            return {"text": text, "headers": dict(response.headers)}
        parsed: dict[str, Any] = json.loads(text)
        assert_valid_fhir(parsed, schema)
        return parsed

    def poll(task_id: str, token: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while True:
            task = call("GET", f"/fhir/Task/{task_id}", token)
            if task["status"] in ("completed", "failed"):
                return task
            assert time.monotonic() < deadline
            time.sleep(0.05)

    def study(uid: str, study_id: str) -> dict[str, Any]:
        return {
            "resourceType": "ImagingStudy",
            "id": study_id,
            "status": "available",
            "subject": {"reference": PATIENT, "display": f"{GIVEN} {FAMILY}"},
            "identifier": [
                {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"},
                {
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                    "value": ACCESSION,
                },
            ],
        }

    with collect_logs() as logs:
        ehr = EHR.token(http, EHR_SCOPES)
        compliance = COMPLIANCE.token(http, "system/AuditEvent.rs")

        # Orders: one that is scored, one that cannot be analysed (not a chest), one whose study is unknown.
        scored = poll(call("POST", "/fhir/ImagingStudy", ehr, study(archive.chest, "is-phi-1"), 201)["id"], ehr)
        request = {
            "resourceType": "ServiceRequest",
            "id": "sr-phi-2",
            "status": "active",
            "intent": "order",
            "subject": {"identifier": {"system": MRN_SYSTEM, "value": MRN}, "display": f"{GIVEN} {FAMILY}"},
            "identifier": [
                {"system": "urn:dicom:uid", "value": f"urn:oid:{archive.extremity}"},
                {
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]},
                    "system": "urn:oid:2.16.840.1.113883.19.6",
                    "value": PLACER,
                },
            ],
        }
        not_a_chest = poll(call("POST", "/fhir/ServiceRequest", ehr, request, 201)["id"], ehr)
        unknown = poll(
            call("POST", "/fhir/ImagingStudy", ehr, study("1.2.826.0.1.3680043.8.498.4242", "is-phi-3"), 201)["id"], ehr
        )
        assert (scored["status"], not_a_chest["status"], unknown["status"]) == ("completed", "failed", "failed")
        assert not_a_chest["statusReason"]["coding"][0]["code"] == "not-a-chest"
        assert unknown["statusReason"]["coding"][0]["code"] == "study-not-found"

        # Bad requests carrying the markers.
        bad_uid = study("1.02.x", "is-phi-bad")
        call("POST", "/fhir/ImagingStudy", ehr, bad_uid, 400)
        with_name = study(archive.chest, "is-phi-bad-2")
        with_name["series"] = [{"uid": "1.2.3", "modality": {"code": "CR"}, "patientName": f"{FAMILY}^{GIVEN}"}]
        call("POST", "/fhir/ImagingStudy", ehr, with_name, 400)
        call("POST", "/fhir/ImagingStudy", ehr, '{"resourceType": "ImagingStudy", "subject": "' + PATIENT, 400)
        call("POST", "/fhir/ImagingStudy", None, study(archive.chest, "is-phi-4"), 401)
        call("GET", f"/fhir/DiagnosticReport?subject={PATIENT}", None, status=401)
        call("GET", f"/fhir/AuditEvent?patient={PATIENT}", ehr, status=403)
        call("GET", f"/fhir/DiagnosticReport?subject={PATIENT}&colour={MRN}", ehr, status=400)
        call("GET", f"/fhir/DiagnosticReport?subject={PATIENT}&subject:identifier={MRN_SYSTEM}|{MRN}", ehr, status=400)

        # Reads and searches by the EHR.
        report = call("GET", f"/fhir/DiagnosticReport/{scored['id']}", ehr)
        for reference in report["result"]:
            call("GET", f"/fhir/{reference['reference']}", ehr)
        call("GET", f"/fhir/Provenance?target=DiagnosticReport/{scored['id']}", ehr)
        call("GET", f"/fhir/{report['extension'][0]['extension'][-1]['valueReference']['reference']}", ehr)
        by_subject = call("GET", f"/fhir/DiagnosticReport?subject={PATIENT}", ehr)
        call("GET", f"/fhir/DiagnosticReport?subject:identifier={MRN_SYSTEM}|{MRN}", ehr)
        failed = call("GET", "/fhir/Task?status=failed", ehr)

        # The compliance officer's view.
        audit_events = call("GET", f"/fhir/AuditEvent?patient={PATIENT}", compliance)
        export = call("GET", f"/fhir/$audit-export?format=csv&patient={PATIENT}", compliance)
        call("GET", f"/fhir/$audit-export?patient={PATIENT}&start=2025-02-01&end=2025-01-01", compliance, status=400)
        assert running.components.queue.wait_idle(60)

    assert_clean(logs, running.queue)
    assert any("FHIR order accepted" in line for line in logs.lines)  # the collector did see the flow's logging
    for body in error_bodies:
        assert not leaks(body), f"patient data in an error response: {body}"
    # The markers did go where they belong: FHIR bodies, the database and its audit trail.
    assert report["subject"] == {"reference": PATIENT} and by_subject["total"] == 1
    assert any(e["resource"]["for"].get("identifier", {}).get("value") == MRN for e in failed["entry"])
    assert audit_events["total"] > 0 and PATIENT in export["text"]
    assert running.components.audit.verify().ok


# ---------------------------------------------------------------------------------------------- HL7 v2


def test_the_hl7_flow_keeps_patient_data_out_of_logs_and_queue(running: Running, archive: Archive) -> None:
    from radtriage.hl7.door import build_hl7_door
    from radtriage.hl7.mllp import send_messages
    from tests.hl7.messages import orm

    def order(control_id: str, placer: str, study_uid: str, **changes: Any) -> bytes:
        message = orm(
            control_id,
            placer=placer,
            study_uid=study_uid,
            patient_id=MRN,
            patient_name=f"{FAMILY}^{GIVEN}",
            accession=ACCESSION,
            **changes,
        )
        return message.replace(b"|19700101|", f"|{BIRTH_DATE}|".encode())  # PID-7

    door = build_hl7_door(running.components, listen_port=0)
    door.start()
    try:
        with collect_logs() as logs:
            assert door.port
            answers = send_messages(
                "127.0.0.1",
                door.port,
                [
                    order("PHI1", f"{PLACER}A", archive.chest),  # scored
                    order("PHI2", f"{PLACER}B", archive.extremity),  # not a chest: failed
                    order("PHI3", f"{PLACER}C", archive.chest, drop=("ZDS",)),  # no study UID: AE
                    order("PHI4", f"{PLACER}D", "1.02.x"),  # a bad study UID: AE
                    b"MSH|^~\\&|RIS|HOSP|RADTRIAGE|HOSP|x||ORM^O01|PHI5|P|2.3.1\rPID|||" + MRN.encode() + b"|broken",
                ],
            )
            assert running.components.queue.wait_idle(60)
    finally:
        door.stop()

    codes = [re.search(rb"MSA\|(\w\w)", answer).group(1) for answer in answers]  # type: ignore[union-attr]
    assert codes[:2] == [b"AA", b"AA"] and all(code in (b"AE", b"AR") for code in codes[2:]), codes
    for answer in answers:
        assert not leaks(answer.decode("latin-1")), "patient data in an ACK"
    assert_clean(logs, running.queue)
    assert any("HL7" in line for line in logs.lines)
    jobs, total = running.components.store.list_jobs()
    assert total == 2 and sorted(j.state.value for j in jobs) == ["completed", "failed"]
    orders = [running.components.store.get_order(j.order_id) for j in jobs]
    assert all(o is not None and MRN in o.patient_ref for o in orders)  # where it belongs: the database
    assert running.components.audit.verify().ok
