"""The FHIR door over the real service: Flask's test client, SQLite, a DICOM folder and the placeholder model.

Every body the door sends is checked against the FHIR R4 JSON Schema and parsed with fhir.resources.R4B
(`fhir_json`), errors included.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from radtriage.app.factory import Components, create_app
from radtriage.fhir import terminology
from radtriage.fhir.api import MAX_BODY_BYTES
from tests.support.data import copy_as_new_study
from tests.support.fhir_validation import assert_valid_fhir

from .conftest import Studies, running_components

FHIR_JSON = "application/fhir+json"
TERMINAL = ("completed", "failed", "cancelled")


# ---------------------------------------------------------------------------------- helpers


def fhir_json(response: TestResponse, status: int, schema: Path) -> dict[str, Any]:
    """The response's body after checking its status, media type and FHIR validity."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == FHIR_JSON
    body: dict[str, Any] = json.loads(response.get_data(as_text=True))
    assert_valid_fhir(body, schema)
    return body


def post(client: FlaskClient, path: str, resource: Any, content_type: str = FHIR_JSON) -> TestResponse:
    return client.post(f"/fhir{path}", data=json.dumps(resource), content_type=content_type)


def get(client: FlaskClient, url: str, schema: Path, status: int = 200, **kwargs: Any) -> dict[str, Any]:
    path = url if url.startswith("/") else urlsplit(url).path + "?" + urlsplit(url).query
    return fhir_json(client.get(path, **kwargs), status, schema)


def poll_task(client: FlaskClient, task_id: str, schema: Path, timeout: float = 60.0) -> dict[str, Any]:
    """Poll the Task as an EHR would, until it is finished."""
    deadline = time.monotonic() + timeout
    while True:
        task = get(client, f"/fhir/Task/{task_id}", schema)
        if task["status"] in TERMINAL:
            return task
        assert time.monotonic() < deadline, f"Task still {task['status']} after {timeout} s"
        time.sleep(0.05)


def imaging_study(uid: str, *, study_id: str = "is-1", patient: str = "Patient/p1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": study_id,
        "status": "available",
        "subject": {"reference": patient},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        **extra,
    }


def service_request(uid: str | None, *, request_id: str = "sr-1", priority: str = "routine") -> dict[str, Any]:
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": request_id,
        "status": "active",
        "intent": "order",
        "priority": priority,
        "subject": {"reference": "Patient/p1"},
    }
    if uid:
        request["identifier"] = [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}]
    return request


def submit(client: FlaskClient, path: str, resource: dict[str, Any], schema: Path) -> dict[str, Any]:
    return fhir_json(post(client, path, resource), 201, schema)


# ---------------------------------------------------------------------------------- the main flow


def test_imaging_study_to_completed_report(
    client: FlaskClient, studies: Studies, fhir_schema_path: Path, fhir_scorer: Any
) -> None:
    response = post(client, "/ImagingStudy", imaging_study(studies.chest))
    task = fhir_json(response, 201, fhir_schema_path)
    assert response.headers["Location"].endswith(f"/fhir/Task/{task['id']}")
    assert task["resourceType"] == "Task" and task["intent"] == "order"
    assert task["status"] in ("ready", "in-progress", "completed")

    task = poll_task(client, task["id"], fhir_schema_path)
    assert task["status"] == "completed", task.get("statusReason")
    assert task["priority"] == "routine"  # the placeholder finds nothing; nothing raised it
    [report_ref] = [o["valueReference"]["reference"] for o in task["output"] if "valueReference" in o]
    assert report_ref == f"DiagnosticReport/{task['id']}"

    report = get(client, f"/fhir/{report_ref}", fhir_schema_path)
    assert report["status"] == "preliminary"
    assert report["subject"] == {"reference": "Patient/p1"}
    assert report["imagingStudy"][0]["reference"] == "ImagingStudy/is-1"
    assert "UNTRAINED PLACEHOLDER" in report["conclusion"]
    labels = list(fhir_scorer.labels)
    assert len(report["result"]) == len(labels) > 0
    for label, reference in zip(labels, report["result"], strict=True):
        observation = get(client, f"/fhir/{reference['reference']}", fhir_schema_path)
        assert observation["code"]["coding"][0] == {
            "system": terminology.FINDING_SYSTEM,
            "code": label,
            "display": label,
        }
        assert 0.0 <= observation["valueQuantity"]["value"] <= 1.0
        assert observation["interpretation"][0]["coding"][0]["code"] in ("POS", "NEG")
        assert observation["subject"] == report["subject"]
    get(client, f"/fhir/Observation/{task['id']}-{len(labels) + 1}", fhir_schema_path, status=404)


def test_posting_the_same_resource_again_returns_the_same_task(
    client: FlaskClient, components: Components, studies: Studies, fhir_schema_path: Path
) -> None:
    first = submit(client, "/ImagingStudy", imaging_study(studies.chest), fhir_schema_path)
    components.queue.wait_idle(60)
    again = post(client, "/ImagingStudy", imaging_study(studies.chest))
    second = fhir_json(again, 200, fhir_schema_path)
    assert second["id"] == first["id"]
    assert again.headers["Location"].endswith(f"/Task/{first['id']}")
    assert second["status"] == "completed"  # the existing Task, as it is now
    assert components.store.list_jobs()[1] == 1


def test_a_second_order_for_the_same_study_under_another_id_is_a_409_outcome(
    client: FlaskClient, components: Components, studies: Studies, fhir_schema_path: Path
) -> None:
    """One live order per study, for every door (before: two 201s and two jobs for one study)."""
    submit(client, "/ImagingStudy", imaging_study(studies.chest, study_id="is-1"), fhir_schema_path)
    second = post(client, "/ImagingStudy", imaging_study(studies.chest, study_id="is-2"))
    outcome = fhir_json(second, 409, fhir_schema_path)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "conflict"
    assert studies.chest not in json.dumps(outcome)  # the UID is not echoed
    assert components.store.list_jobs()[1] == 1


def test_stat_service_request_stays_stat_with_negative_findings(
    client: FlaskClient, studies: Studies, fhir_schema_path: Path
) -> None:
    task = submit(client, "/ServiceRequest", service_request(studies.chest, priority="stat"), fhir_schema_path)
    assert task["priority"] == "stat"
    task = poll_task(client, task["id"], fhir_schema_path)
    assert task["status"] == "completed"
    assert task["priority"] == "stat"
    assert task["basedOn"] == [{"reference": "ServiceRequest/sr-1"}]
    report = get(client, f"/fhir/DiagnosticReport/{task['id']}", fhir_schema_path)
    interpretations = {
        get(client, f"/fhir/{r['reference']}", fhir_schema_path)["interpretation"][0]["coding"][0]["code"]
        for r in report["result"]
    }
    assert interpretations == {"NEG"}  # nothing positive, and still stat: a priority is never lowered
    assert "STAT" in report["conclusion"]


def test_transaction_bundle(client: FlaskClient, studies: Studies, fhir_schema_path: Path) -> None:
    request_url = f"urn:uuid:{uuid.uuid4()}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": request_url,
                "resource": service_request(None, request_id="sr-tx", priority="urgent"),
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
            {
                "resource": imaging_study(studies.chest, study_id="is-tx", basedOn=[{"reference": request_url}]),
                "request": {"method": "POST", "url": "ImagingStudy"},
            },
        ],
    }
    response = fhir_json(post(client, "", bundle), 200, fhir_schema_path)
    assert response["type"] == "transaction-response"
    assert [e["response"]["status"] for e in response["entry"]] == ["201 Created", "201 Created"]
    # Each entry names its own resource as kept (issue 13: both used to name the Task); the Task is found from
    # the ServiceRequest, and each entry's outcome names it too.
    locations = [e["response"]["location"] for e in response["entry"]]
    assert locations == ["ServiceRequest/sr-tx/_history/1", "ImagingStudy/is-tx/_history/1"]
    assert [e["resource"]["resourceType"] for e in response["entry"]] == ["ServiceRequest", "ImagingStudy"]
    [task_entry] = get(client, "/fhir/Task?based-on=ServiceRequest/sr-tx", fhir_schema_path)["entry"]
    task_id = task_entry["resource"]["id"]
    assert {e["response"]["outcome"]["issue"][0]["details"]["text"] for e in response["entry"]} == {f"Task/{task_id}"}
    kept_study = get(client, "/fhir/ImagingStudy/is-tx", fhir_schema_path)
    assert kept_study["basedOn"] == [{"reference": "ServiceRequest/sr-tx"}]  # the urn:uuid resolved

    task = poll_task(client, task_id, fhir_schema_path)
    assert (task["status"], task["priority"]) == ("completed", "urgent")
    found = get(client, "/fhir/DiagnosticReport?based-on=ServiceRequest/sr-tx", fhir_schema_path)
    assert found["total"] == 1
    report = found["entry"][0]["resource"]
    assert report["id"] == task_id
    assert report["basedOn"] == [{"reference": "ServiceRequest/sr-tx"}]
    assert report["imagingStudy"][0]["reference"] == "ImagingStudy/is-tx"

    again = fhir_json(post(client, "/", bundle), 200, fhir_schema_path)  # /fhir/ works as well as /fhir
    assert [e["response"]["status"] for e in again["entry"]] == ["200 OK", "200 OK"]


@pytest.mark.parametrize(
    ("study", "reason"),
    [("extremity", "not-a-chest"), ("mr", "not-a-radiograph"), ("unknown", "study-not-found")],
)
def test_studies_that_cannot_be_analysed_fail_with_a_coded_reason(
    client: FlaskClient, studies: Studies, fhir_schema_path: Path, study: str, reason: str
) -> None:
    uid = getattr(studies, study, "1.2.826.0.1.3680043.8.498.99999")
    task = submit(client, "/ImagingStudy", imaging_study(uid), fhir_schema_path)
    task = poll_task(client, task["id"], fhir_schema_path)
    assert task["status"] == "failed"
    [coding] = task["statusReason"]["coding"]
    assert (coding["system"], coding["code"]) == (terminology.TRIAGE_ERROR_SYSTEM, reason)
    assert "output" not in task
    outcome = get(client, f"/fhir/DiagnosticReport/{task['id']}", fhir_schema_path, status=404)
    assert outcome["issue"][0]["code"] == "not-found"


# ---------------------------------------------------------------------------------- provenance and audit


def test_provenance_and_the_model_device_resolve_for_a_result(
    client: FlaskClient, studies: Studies, fhir_schema_path: Path, fhir_scorer: Any
) -> None:
    task = poll_task(
        client, submit(client, "/ImagingStudy", imaging_study(studies.chest), fhir_schema_path)["id"], fhir_schema_path
    )
    job_id = task["id"]
    report = get(client, f"/fhir/DiagnosticReport/{job_id}", fhir_schema_path)
    [model] = [e for e in report["extension"] if e["url"] == terminology.MODEL_EXTENSION_URL]
    device_ref = next(e["valueReference"]["reference"] for e in model["extension"] if e["url"] == "device")
    device = get(client, f"/fhir/{device_ref}", fhir_schema_path)
    assert device["version"] == [{"value": fhir_scorer.identity.version}]
    assert device["meta"]["tag"][0]["code"] == "untrained-placeholder"  # the placeholder says so here too

    provenance = get(client, f"/fhir/Provenance/{job_id}", fhir_schema_path)
    for target, total in [
        (f"DiagnosticReport/{job_id}", 1),
        (f"Task/{job_id}", 1),
        (f"Observation/{job_id}-1", 1),
        (f"http://elsewhere.test/fhir/Observation/{job_id}-2", 1),
        (f"Observation/{job_id}-{len(report['result']) + 1}", 0),
        ("Task/0123abc", 0),
    ]:
        found = get(client, f"/fhir/Provenance?target={target}", fhir_schema_path)
        assert found["total"] == total, target
        if total:
            assert found["entry"][0]["resource"] == provenance
    assert get(client, "/fhir/Provenance", fhir_schema_path)["total"] == 1
    for bad in ("Patient/p1", "abc", f"DiagnosticReport/{job_id},Task/{job_id}"):
        get(client, f"/fhir/Provenance?target={bad}", fhir_schema_path, status=400)
    get(client, "/fhir/Device/model-" + "0" * 32, fhir_schema_path, status=404)
    get(client, "/fhir/Device/not-a-model", fhir_schema_path, status=404)
    get(client, "/fhir/Provenance/0123abc", fhir_schema_path, status=404)


def test_reads_are_audited_with_access_control_off(
    client: FlaskClient, components: Components, studies: Studies, fhir_schema_path: Path
) -> None:
    """Development mode still audits: the client is unknown, its address is not."""
    from radtriage.compliance.audit_store import AuditFilter

    for n, patient in enumerate(("Patient/p1", "Patient/p2")):
        uid = copy_as_new_study(studies.root / "RG1_J2KI.dcm", studies.root)  # one live order per study
        submit(client, "/ImagingStudy", imaging_study(uid, study_id=f"is-{n}", patient=patient), fhir_schema_path)
    assert components.queue.wait_idle(60)
    assert get(client, "/fhir/DiagnosticReport?status=preliminary", fhir_schema_path)["total"] == 2
    get(client, "/fhir/DiagnosticReport/0123abc", fhir_schema_path, status=404)

    records, _ = components.audit.search(AuditFilter(kind="result-read"))
    by_patient = {r.patient_ref: r for r in records if r.outcome == 0}
    assert set(by_patient) == {"Patient/p1", "Patient/p2"}  # a search: one record per patient it returned
    for record in by_patient.values():
        resource = record.resource()
        assert record.client_id is None and record.action == "E"
        assert "127.0.0.1" in json.dumps(resource["agent"])
        [query] = [e["query"] for e in resource["entity"] if "query" in e]
        assert base64.b64decode(query).decode() == "/fhir/DiagnosticReport?status=preliminary"
    [missing] = [r for r in records if r.outcome == 4]
    assert missing.action == "R" and "DiagnosticReport/0123abc" in missing.resource_text
    assert "not-found" in missing.resource_text
    assert components.audit.verify().ok


# ---------------------------------------------------------------------------------- bad input


def snapshot(client: FlaskClient, components: Components, schema: Path) -> list[dict[str, Any]]:
    jobs, _ = components.store.list_jobs(limit=100)
    return [get(client, f"/fhir/Task/{job.id}", schema) for job in jobs]


BAD_INPUT = [
    # Issue 13: 50,000 nested arrays used to be a 500 (RecursionError in the parser); nesting is capped first.
    pytest.param("/ImagingStudy", b"[" * 50_000 + b"]" * 50_000, FHIR_JSON, 400, "invalid", None, id="deep-arrays"),
    pytest.param("/", b'{"a":' * 20_000 + b"1" + b"}" * 20_000, FHIR_JSON, 400, "invalid", None, id="deep-objects"),
    # Issue 13: a JSON string is never a FHIR integer or boolean (fhir.resources would coerce it).
    pytest.param(
        "/ImagingStudy",
        json.dumps({**imaging_study("1.2.3"), "numberOfSeries": "1"}),
        FHIR_JSON,
        400,
        "invalid",
        "ImagingStudy.numberOfSeries",
        id="integer-as-string",
    ),
    pytest.param(
        "/ServiceRequest",
        json.dumps({**service_request("1.2.3"), "doNotPerform": "false"}),
        FHIR_JSON,
        400,
        "invalid",
        "ServiceRequest.doNotPerform",
        id="boolean-as-string",
    ),
    pytest.param("/ImagingStudy", b'{"resourceType": "ImagingStudy",', FHIR_JSON, 400, "invalid", None, id="malformed"),
    pytest.param("/ImagingStudy", b'{"resourceType": NaN}', FHIR_JSON, 400, "invalid", None, id="nan-is-not-json"),
    pytest.param("/ImagingStudy", b"\xff\xfe{}", FHIR_JSON, 400, "invalid", None, id="not-utf8"),
    pytest.param(
        "/ImagingStudy",
        json.dumps({"resourceType": "Patient", "id": "p1"}),
        FHIR_JSON,
        400,
        "invalid",
        None,
        id="wrong-type",
    ),
    pytest.param(
        "/ServiceRequest",
        json.dumps(service_request(None)),
        FHIR_JSON,
        400,
        "invalid",
        "ServiceRequest.identifier",
        id="no-uid",
    ),
    pytest.param(
        "/ImagingStudy",
        json.dumps({**imaging_study("1.2.3"), "identifier": []}),
        FHIR_JSON,
        400,
        "invalid",
        "ImagingStudy.identifier",
        id="study-without-uid",
    ),
    pytest.param(
        "/ImagingStudy", json.dumps(imaging_study("1.2.3")), "text/plain", 415, "not-supported", None, id="text"
    ),
    pytest.param(
        "/ImagingStudy", json.dumps(imaging_study("1.2.3")), "application/xml", 415, "not-supported", None, id="xml"
    ),
    pytest.param(
        "/ImagingStudy",
        json.dumps(imaging_study("1.2.3")),
        "application/fhir+json; charset=latin-1",
        415,
        "not-supported",
        None,
        id="latin1",
    ),
    pytest.param(
        "/",
        json.dumps({"resourceType": "Bundle", "type": "batch", "entry": []}),
        FHIR_JSON,
        422,
        "not-supported",
        "Bundle.type",
        id="batch",
    ),
    pytest.param(
        "/ServiceRequest",
        json.dumps({**service_request("1.2.3"), "priority": "whenever"}),
        FHIR_JSON,
        400,
        "invalid",
        "ServiceRequest.priority",
        id="bad-priority",
    ),
]


@pytest.mark.parametrize(("path", "body", "content_type", "status", "issue_code", "expression"), BAD_INPUT)
def test_bad_input_is_an_operation_outcome_and_changes_nothing(
    client: FlaskClient,
    components: Components,
    studies: Studies,
    fhir_schema_path: Path,
    path: str,
    body: str | bytes,
    content_type: str,
    status: int,
    issue_code: str,
    expression: str | None,
) -> None:
    submit(client, "/ImagingStudy", imaging_study(studies.chest, study_id="already-here"), fhir_schema_path)
    components.queue.wait_idle(60)
    before = snapshot(client, components, fhir_schema_path)

    response = client.post(f"/fhir{path}", data=body, content_type=content_type)
    outcome = fhir_json(response, status, fhir_schema_path)
    [issue] = outcome["issue"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert issue["code"] == issue_code
    assert issue.get("expression") == ([expression] if expression else None)
    assert "Traceback" not in response.get_data(as_text=True)

    assert snapshot(client, components, fhir_schema_path) == before


def test_error_bodies_carry_no_submitted_values(client: FlaskClient, fhir_schema_path: Path) -> None:
    study = imaging_study("1.2.3", patient="Patient/secret-patient-42")
    study["series"] = [{"uid": "1.2.3.4", "modality": {"code": "CR"}, "patientName": "Jane Doe"}]
    text = post(client, "/ImagingStudy", study).get_data(as_text=True)
    assert "ImagingStudy.series[0].patientName" in text
    assert "Jane Doe" not in text and "secret-patient-42" not in text


def test_unknown_ids_are_404_outcomes(client: FlaskClient, fhir_schema_path: Path) -> None:
    for path in (
        "Task/0123abc",
        "DiagnosticReport/0123abc",
        "Observation/0123abc-1",
        "Observation/no-number",
        "Task/bad$id",
    ):
        outcome = get(client, f"/fhir/{path}", fhir_schema_path, status=404)
        assert outcome["issue"][0]["code"] == "not-found"


def test_unknown_routes_and_methods_are_outcomes_under_the_prefix_only(
    client: FlaskClient, fhir_schema_path: Path
) -> None:
    assert get(client, "/fhir/Patient", fhir_schema_path, status=404)["issue"][0]["code"] == "not-found"
    response = client.delete("/fhir/Task/abc")
    outcome = fhir_json(response, 405, fhir_schema_path)
    assert outcome["issue"][0]["code"] == "not-supported"
    assert "GET" in response.headers["Allow"]
    outside = client.get("/not-fhir")
    assert outside.status_code == 404 and outside.mimetype != FHIR_JSON  # other parts of the app keep their errors


def test_content_negotiation(client: FlaskClient, studies: Studies, fhir_schema_path: Path) -> None:
    created = post(client, "/ImagingStudy", imaging_study(studies.chest), content_type="application/json")
    task = fhir_json(created, 201, fhir_schema_path)
    get(client, f"/fhir/Task/{task['id']}", fhir_schema_path, headers={"Accept": "application/json"})
    get(client, f"/fhir/Task/{task['id']}?_format=json", fhir_schema_path)
    get(client, f"/fhir/Task/{task['id']}", fhir_schema_path, status=406, headers={"Accept": "application/fhir+xml"})
    get(client, f"/fhir/Task/{task['id']}?_format=xml", fhir_schema_path, status=406)


# ---------------------------------------------------------------------------------- search


@dataclass(frozen=True)
class SearchServer:
    client: FlaskClient
    task_ids: list[str]


@pytest.fixture(scope="module")
def search_server(
    tmp_path_factory: pytest.TempPathFactory, studies: Studies, fhir_scorer: Any, fhir_schema_path: Path
) -> Iterator[SearchServer]:
    """One server for all search tests (read-only): three scored orders, each for its own copy of the chest
    study (one live order per study), two for Patient/p1 and one for Patient/p2."""
    with running_components(tmp_path_factory.mktemp("search"), studies, fhir_scorer) as components:
        client = create_app(components=components).test_client()
        uids = [copy_as_new_study(studies.root / "RG1_J2KI.dcm", studies.root) for _ in range(3)]
        ids = [
            submit(client, "/ImagingStudy", imaging_study(uid, study_id=f"is-{n}", patient=p), fhir_schema_path)["id"]
            for n, (uid, p) in enumerate(zip(uids, ("Patient/p1", "Patient/p1", "Patient/p2"), strict=True))
        ]
        assert components.queue.wait_idle(120)
        yield SearchServer(client, ids)


def test_task_search_pages_with_working_links(search_server: SearchServer, fhir_schema_path: Path) -> None:
    client = search_server.client
    page = get(client, "/fhir/Task?_count=2", fhir_schema_path)
    assert page["total"] == 3 and len(page["entry"]) == 2
    links = {link["relation"]: link["url"] for link in page["link"]}
    assert "previous" not in links
    second = get(client, links["next"], fhir_schema_path)
    assert len(second["entry"]) == 1
    second_links = {link["relation"]: link["url"] for link in second["link"]}
    assert "next" not in second_links and "previous" in second_links
    seen = [e["resource"]["id"] for e in page["entry"] + second["entry"]]
    assert sorted(seen) == sorted(search_server.task_ids)
    back = get(client, second_links["previous"], fhir_schema_path)
    assert [e["resource"]["id"] for e in back["entry"]] == seen[:2]


@pytest.mark.parametrize(
    ("query", "total"),
    [
        ("status=completed", 3),
        ("status=failed", 0),
        ("status=draft", 0),  # a valid Task status no job has: matches nothing (not everything)
        ("status=failed,completed", 3),
        ("status=completed&status=failed", 0),  # repeated parameters AND
        ("priority=routine", 3),
        ("priority=stat", 0),
        ("status=http://hl7.org/fhir/task-status|completed", 3),
        ("_count=0", 3),
    ],
)
def test_task_search_filters(search_server: SearchServer, fhir_schema_path: Path, query: str, total: int) -> None:
    bundle = get(search_server.client, f"/fhir/Task?{query}", fhir_schema_path)
    assert bundle["total"] == total
    expected_entries = 0 if "_count=0" in query else total
    assert len(bundle.get("entry", [])) == expected_entries


@pytest.mark.parametrize(
    ("query", "total"),
    [
        ("", 3),
        ("subject=Patient/p1", 2),
        ("subject=p2", 1),
        ("subject=Patient/nobody", 0),
        ("status=preliminary", 3),
        ("status=final", 0),
        ("based-on=ServiceRequest/none", 0),
        ("subject=Patient/p1&_count=1", 2),
    ],
)
def test_report_search_filters(search_server: SearchServer, fhir_schema_path: Path, query: str, total: int) -> None:
    bundle = get(search_server.client, f"/fhir/DiagnosticReport?{query}", fhir_schema_path)
    assert bundle["total"] == total
    for entry in bundle.get("entry", []):
        assert entry["resource"]["resourceType"] == "DiagnosticReport"
        assert entry["fullUrl"].endswith(f"/fhir/DiagnosticReport/{entry['resource']['id']}")


@pytest.mark.parametrize(
    "query",
    [
        "Task?colour=blue",
        "Task?status=done",
        "Task?priority=high",
        "Task?_count=many",
        "Task?_offset=-1",
        "DiagnosticReport?status=maybe",
        "DiagnosticReport?based-on=a,b",
        "DiagnosticReport?patient=p1",
    ],
)
def test_bad_searches_are_400(client: FlaskClient, fhir_schema_path: Path, query: str) -> None:
    outcome = get(client, f"/fhir/{query}", fhir_schema_path, status=400)
    assert outcome["issue"][0]["code"] == "invalid"


def test_lenient_search_ignores_unknown_parameters(search_server: SearchServer, fhir_schema_path: Path) -> None:
    bundle = get(
        search_server.client,
        "/fhir/Task?colour=blue&_count=500",
        fhir_schema_path,
        headers={"Prefer": "handling=lenient"},
    )
    assert bundle["total"] == 3
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert "colour" not in self_link
    assert "_count=100" in self_link  # capped


# ---------------------------------------------------------------------------------- CapabilityStatement


def test_metadata_lists_exactly_the_routes_that_exist(app: Flask, client: FlaskClient, fhir_schema_path: Path) -> None:
    statement = get(client, "/fhir/metadata", fhir_schema_path)
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["kind"] == "instance"
    [rest] = statement["rest"]
    declared = {(r["type"], i["code"]) for r in rest["resource"] for i in r["interaction"]}
    declared |= {("*", i["code"]) for i in rest.get("interaction", [])}
    declared |= {("*", f"${o['name']}") for o in rest.get("operation", [])}

    # Independently of capability.py: what Flask actually routes under /fhir.
    routed = set()
    not_interactions = ("/fhir/metadata", "/fhir/.well-known/smart-configuration")
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/fhir") or rule.rule in not_interactions:
            continue
        parts = [p for p in rule.rule.removeprefix("/fhir").split("/") if p]
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            if not parts:
                routed.add(("*", {"POST": "transaction"}[method]))
            elif parts[0].startswith("$"):
                routed.add(("*", parts[0]))
            elif len(parts) == 1:
                routed.add((parts[0], {"POST": "create", "GET": "search-type"}[method]))
            else:
                routed.add((parts[0], {"GET": "read"}[method]))
    assert declared == routed
    assert ("Observation", "search-type") not in declared  # not served, so not claimed
    assert {("Device", "read"), ("Provenance", "read"), ("Provenance", "search-type")} <= declared
    assert {("AuditEvent", "read"), ("AuditEvent", "search-type"), ("*", "$audit-export")} <= declared
    [operation] = rest["operation"]
    assert operation["definition"] == f"{terminology.RADTRIAGE_FHIR_BASE}/OperationDefinition/audit-export"

    search_params = {r["type"]: {p["name"] for p in r.get("searchParam", [])} for r in rest["resource"]}
    assert search_params["Task"] == {"based-on", "status", "priority"}
    assert search_params["ServiceRequest"] == {"identifier", "patient", "subject"}
    assert search_params["DiagnosticReport"] == {"based-on", "subject", "status"}
    assert search_params["Provenance"] == {"target"}
    assert search_params["AuditEvent"] == {"date", "patient", "action", "subtype", "agent", "outcome"}
    # What the statement declares, the server accepts (strictly: an undeclared one would be a 400).
    get(client, "/fhir/Task?status=ready&priority=stat", fhir_schema_path)
    get(client, "/fhir/DiagnosticReport?based-on=ServiceRequest/x&subject=Patient/x&status=final", fhir_schema_path)
    get(client, "/fhir/Provenance?target=DiagnosticReport/x", fhir_schema_path)
    get(
        client,
        "/fhir/AuditEvent?date=ge2025-01-01&patient=x&action=R&subtype=result-read&agent=ehr-1&outcome=0",
        fhir_schema_path,
    )
    # With access control off the statement says so, and claims no SMART security.
    assert "OFF" in rest["security"]["description"] and "service" not in rest["security"]


# ---------------------------------------------------------------------------------- failures inside the server


def test_an_internal_failure_is_a_500_outcome_and_logs_no_patient_data(
    client: FlaskClient, components: Components, fhir_schema_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with components.engine.begin() as connection:  # a real database failure: the table is gone
        connection.exec_driver_sql("DROP TABLE results")
    with caplog.at_level(logging.INFO):
        response = client.get("/fhir/DiagnosticReport?subject=Patient/secret-patient-42")
    outcome = fhir_json(response, 500, fhir_schema_path)
    assert outcome["issue"][0]["code"] == "exception"
    body = response.get_data(as_text=True)
    assert "results" not in body and "secret-patient-42" not in body and "Traceback" not in body
    assert "OperationalError" in caplog.text  # the log names what went wrong...
    assert "secret-patient-42" not in caplog.text  # ...but not the SQL parameters it quoted


def test_an_oversized_body_is_refused_unread(client: FlaskClient, fhir_schema_path: Path) -> None:
    body = b'{"resourceType": "ImagingStudy", "note": "' + b"x" * MAX_BODY_BYTES + b'"}'
    outcome = fhir_json(client.post("/fhir/ImagingStudy", data=body, content_type=FHIR_JSON), 413, fhir_schema_path)
    assert outcome["issue"][0]["code"] == "too-costly"
