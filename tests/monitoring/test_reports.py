"""Final reports in: FHIR POST /DiagnosticReport and HL7 ORU^R01 over MLLP, linking, amendments, bad input."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from radtriage.app.storage.monitoring_tables import final_reports, report_labels
from radtriage.hl7.door import build_hl7_door
from radtriage.hl7.mllp import send_messages
from radtriage.monitoring.reports import FinalReport
from tests.monitoring.conftest import monitored_app, seed_result

FINDINGS = {"Pneumonia": 0.9, "Infiltration": 0.2, "Atelectasis": 0.1, "Edema": 0.05, "Effusion": 0.7}


def fhir_report(report_id: str = "rr1", *, status: str = "final", conclusion: str = "Right pleural effusion.",
                based_on: str | None = "ServiceRequest/sr1", **extra) -> dict:
    body = {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "30745-4"}]},
        "subject": {"reference": "Patient/p1"},
        "issued": "2026-11-30T09:00:00Z",
        "conclusion": conclusion,
        **extra,
    }
    if based_on:
        body["basedOn"] = [{"reference": based_on}]
    return body


def labels_of(stack, job_id: str) -> dict[str, tuple[float, str]]:
    with stack.engine.connect() as conn:
        rows = conn.execute(select(report_labels).where(report_labels.c.job_id == job_id)).all()
    return {r.label: (r.value, r.certainty) for r in rows}


def reports(stack) -> list:
    with stack.engine.connect() as conn:
        return conn.execute(select(final_reports).order_by(final_reports.c.received_at)).all()


def test_a_fhir_final_report_is_linked_by_based_on_and_labelled(stack_factory) -> None:
    stack = stack_factory()
    job_id = seed_result(stack, 1, FINDINGS)
    client = monitored_app(stack).test_client()
    body = fhir_report(conclusion="Possible pneumonia. No pneumothorax.")
    response = client.post("/fhir/DiagnosticReport", json=body)
    assert response.status_code == 201
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "linked to the study radtriage scored" in outcome["issue"][0]["diagnostics"]
    labels = labels_of(stack, job_id)
    assert labels["Pneumonia"] == (1.0, "uncertain")
    assert labels["Pneumothorax"] == (0.0, "negated")
    assert labels["Effusion"] == (0.0, "unmentioned")
    assert labels["abnormal"] == (1.0, "uncertain")


def test_links_by_study_uid_accession_and_presented_form(stack_factory) -> None:
    stack = stack_factory()
    by_uid = seed_result(stack, 1, FINDINGS, uid="1.2.826.0.1.3680043.10.99.77")
    by_accession = seed_result(stack, 2, FINDINGS)
    client = monitored_app(stack).test_client()
    study = {"identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.826.0.1.3680043.10.99.77"}}
    text = base64.b64encode(b"Left lower lobe atelectasis.").decode()
    response = client.post("/fhir/DiagnosticReport", json=fhir_report(
        "a", based_on=None, conclusion=None, imagingStudy=[study],
        presentedForm=[{"contentType": "text/plain", "data": text}],
    ))
    assert response.status_code == 201, response.get_json()
    assert labels_of(stack, by_uid)["Atelectasis"] == (1.0, "stated")
    accession = {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                 "value": "ACC2"}
    coded = [{"coding": [{"system": "http://snomed.info/sct", "code": "60046008"}]}]
    response = client.post("/fhir/DiagnosticReport", json=fhir_report(
        "b", based_on=None, conclusion="See findings.", identifier=[accession], conclusionCode=coded,
        subject={"reference": "Patient/p2"},
    ))
    assert response.status_code == 201
    assert labels_of(stack, by_accession)["Effusion"] == (1.0, "coded")


def test_an_amended_report_replaces_the_earlier_one_and_its_labels(stack_factory) -> None:
    stack = stack_factory()
    job_id = seed_result(stack, 1, FINDINGS)
    client = monitored_app(stack).test_client()
    client.post("/fhir/DiagnosticReport", json=fhir_report(conclusion="Right pleural effusion."))
    client.post("/fhir/DiagnosticReport", json=fhir_report(status="amended", conclusion="No pleural effusion."))
    assert labels_of(stack, job_id)["Effusion"] == (0.0, "negated")
    stored = reports(stack)
    assert [r.superseded for r in stored] == [True, False]


def test_the_later_report_for_a_study_wins_whatever_the_arrival_order(stack_factory) -> None:
    stack = stack_factory()
    job_id = seed_result(stack, 1, FINDINGS)
    intake = stack.monitoring.intake
    later = datetime.now(UTC) - timedelta(hours=1)
    intake.receive(FinalReport("hl7", "F2", "final", "Pneumonia.", issued_at=later,
                               service_request_ref="ServiceRequest/sr1"))
    # An earlier report (another key) arriving afterwards is kept, but does not replace the later one.
    received = intake.receive(FinalReport("hl7", "F1", "final", "No pneumonia.", issued_at=later - timedelta(hours=2),
                                          service_request_ref="ServiceRequest/sr1"))
    assert not received.current
    assert labels_of(stack, job_id)["Pneumonia"] == (1.0, "stated")


def test_a_report_from_a_fast_clock_is_ordered_by_receipt_and_counted(stack_factory) -> None:
    stack = stack_factory()
    seed_result(stack, 1, FINDINGS)
    intake = stack.monitoring.intake
    future = datetime.now(UTC) + timedelta(days=2)
    intake.receive(FinalReport("fhir", "x", "final", "Pneumonia.", issued_at=future,
                               service_request_ref="ServiceRequest/sr1"))
    received = intake.receive(FinalReport("fhir", "y", "corrected", "No pneumonia.",
                                          service_request_ref="ServiceRequest/sr1"))
    assert received.current  # received later; the other's future issue time does not make it "later"
    assert intake.counts()["clock-ahead"] == 1


def test_unmatched_unscored_empty_and_foreign_reports_are_kept_and_counted(stack_factory) -> None:
    stack = stack_factory()
    stack.order(5, uid="1.2.826.0.1.3680043.10.99.5")  # ordered, never scored
    intake = stack.monitoring.intake
    assert intake.receive(FinalReport("fhir", "u", "final", "Pneumonia.", accession_number="NOPE")).match == "unmatched"
    not_scored = intake.receive(FinalReport("fhir", "n", "final", "Pneumonia.", accession_number="ACC5"))
    assert not_scored.match == "not-scored"
    seed_result(stack, 6, FINDINGS)
    empty = intake.receive(FinalReport("fhir", "e", "final", "   ", accession_number="ACC6"))
    assert (empty.match, empty.quality, empty.labels) == ("matched", "empty", {})
    german = intake.receive(FinalReport("fhir", "g", "final", "Kein Pleuraerguss. Herz normal gross.",
                                        accession_number="ACC6"))
    assert german.quality == "not-english" and german.labels == {}
    counts = intake.counts()
    assert counts["received"] == 4
    assert (counts["match:unmatched"], counts["match:not-scored"], counts["match:matched"]) == (1, 1, 2)
    assert (counts["quality:empty"], counts["quality:not-english"]) == (1, 1)


def test_bad_fhir_reports_are_refused_with_an_operation_outcome(stack_factory) -> None:
    stack = stack_factory()
    client = monitored_app(stack).test_client()
    preliminary = client.post("/fhir/DiagnosticReport", json=fhir_report(status="preliminary"))
    assert preliminary.status_code == 422
    assert preliminary.get_json()["issue"][0]["expression"] == ["DiagnosticReport.status"]
    nothing = client.post("/fhir/DiagnosticReport", json=fhir_report(based_on=None))
    assert nothing.status_code == 400 and nothing.get_json()["resourceType"] == "OperationOutcome"
    not_a_report = client.post("/fhir/DiagnosticReport", json={"resourceType": "Patient"})
    assert not_a_report.status_code == 400
    assert reports(stack) == []


# ---------------------------------------------------------------------------------------------- HL7


def oru(control_id: str, *, placer: str = "PL1", filler: str = "FL1", status: str = "F", accession: str = "",
        observations: tuple[str, ...] = ("OBX|1|TX|&IMP^Impression^L||Small right pleural effusion.||||||F",),
        version: str = "2.5.1") -> bytes:
    segments = [
        f"MSH|^~\\&|RIS|HOSP|RADTRIAGE|HOSP|20261130090000||ORU^R01|{control_id}|P|{version}",
        "PID|||PAT1^^^HOSP^MR||Doe^John",
        f"ORC|RE|{placer}^RIS|{filler}^RIS",
        f"OBR|1|{placer}^RIS|{filler}^RIS|71045^XR CHEST 1 VIEW^CPT4|||20261130080000|||||||||||{accession}||||"
        f"20261130090000|||{status}",
        *observations,
    ]
    return "\r".join(segments).encode("ascii")


@pytest.fixture
def hl7_stack(stack_factory):
    stack = stack_factory()
    door = build_hl7_door(stack.components, listen_port=0)
    door.start()
    yield stack, door
    door.stop()


def ack_code(raw: bytes) -> str:
    msa = next(line for line in raw.decode("latin-1").split("\r") if line.startswith("MSA"))
    return msa.split("|")[1]


def test_an_oru_over_mllp_is_acknowledged_and_labelled(hl7_stack) -> None:
    stack, door = hl7_stack
    job_id = seed_result(stack, 1, FINDINGS, placer_order_number="PL1")
    coded = "OBX|2|CWE|36118008^Pneumothorax^SCT||N^No^HL70136||||||F"
    (answer,) = send_messages("127.0.0.1", door.port, [oru("M1", observations=(
        "OBX|1|TX|&IMP^Impression^L||Small right pleural effusion.~Possible pneumonia.||||||F", coded))])
    assert ack_code(answer) == "AA"
    labels = labels_of(stack, job_id)
    assert labels["Effusion"] == (1.0, "stated")
    assert labels["Pneumonia"] == (1.0, "uncertain")
    assert labels["Pneumothorax"] == (0.0, "coded")


def test_a_corrected_oru_replaces_the_report(hl7_stack) -> None:
    stack, door = hl7_stack
    job_id = seed_result(stack, 1, FINDINGS, placer_order_number="PL1")
    answers = send_messages("127.0.0.1", door.port, [
        oru("M1"),
        oru("M2", status="C", observations=("OBX|1|FT|&IMP^Impression^L||No effusion.\\.br\\Lungs clear.||||||C",)),
    ])
    assert [ack_code(a) for a in answers] == ["AA", "AA"]
    assert labels_of(stack, job_id)["Effusion"] == (0.0, "negated")
    assert [r.superseded for r in reports(stack)] == [True, False]


def test_bad_and_preliminary_orus(hl7_stack) -> None:
    stack, door = hl7_stack
    no_obr = b"MSH|^~\\&|RIS|HOSP|RADTRIAGE|HOSP|20261130090000||ORU^R01|B1|P|2.5.1\rPID|||PAT1"
    no_key = oru("B2", placer="", filler="")
    bad_time = oru("B3").replace(b"20261130090000|||F", b"yesterday|||F")
    preliminary = oru("B4", status="P")
    answers = send_messages("127.0.0.1", door.port, [no_obr, no_key, bad_time, preliminary])
    assert [ack_code(a) for a in answers] == ["AE", "AE", "AE", "AA"]
    assert b"|100" in answers[0] or b"^100^" in answers[0]
    assert reports(stack) == []  # nothing stored from refused or preliminary reports


def test_without_monitoring_the_door_rejects_orus(stack_factory) -> None:
    stack = stack_factory()
    door = build_hl7_door(stack.components, listen_port=0, report_handler=None)
    door.receiver.reports = None  # a door built without monitoring
    door.start()
    try:
        (answer,) = send_messages("127.0.0.1", door.port, [oru("R1")])
    finally:
        door.stop()
    assert ack_code(answer) == "AR"


def test_a_report_about_another_patient_is_never_linked(stack_factory) -> None:
    stack = stack_factory()
    job_id = seed_result(stack, 1, FINDINGS)  # the order's patient is Patient/p1
    client = monitored_app(stack).test_client()
    body = fhir_report(conclusion="Right pleural effusion.", subject={"reference": "Patient/someone-else"})
    response = client.post("/fhir/DiagnosticReport", json=body)
    assert response.status_code == 201
    assert "another patient" in response.get_json()["issue"][0]["diagnostics"]
    assert labels_of(stack, job_id) == {}
    assert stack.monitoring.intake.counts()["match:patient-mismatch"] == 1
    # The same patient, as an absolute reference, links.
    body = fhir_report("rr2", subject={"reference": "https://ehr.example/fhir/Patient/p1"})
    assert "linked to the study" in client.post("/fhir/DiagnosticReport", json=body).get_json()["issue"][0][
        "diagnostics"]


def test_an_hl7_report_about_another_patient_is_never_linked(hl7_stack) -> None:
    stack, door = hl7_stack
    from radtriage.app.core.domain import ImagingOrder

    order = ImagingOrder(study_instance_uid="1.2.826.0.1.3680043.10.99.300", patient_ref="HOSP|PAT9", source="hl7",
                         source_key="RIS^HOSP|PL9", placer_order_number="PL9")
    stack.components.service.submit_order(order)
    (answer,) = send_messages("127.0.0.1", door.port, [oru("P1", placer="PL9")])  # PID-3 is PAT1
    assert ack_code(answer) == "AA"
    assert stack.monitoring.intake.counts()["match:patient-mismatch"] == 1
