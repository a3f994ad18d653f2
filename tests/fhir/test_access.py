"""The FHIR door with access control ON, as production runs it: the real service, the real token endpoint.

Each client has its own key pair, generated here, whose public JWKS is in the client registry the service
reads (settings ``auth_clients``); tokens come from ``POST /auth/token`` with a signed client assertion.

Refusals tried: no token, a token that is not a JWT, a valid token without the scope (per route and per
transaction entry type), an EHR token on the audit trail, an over-long ``X-Request-Id``, export requests with
a reversed range, an unknown format and an unknown parameter. Token-level attacks (forged, expired, replayed
assertions and tokens) are in tests/compliance/test_auth.py.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from radtriage.app.factory import Components, create_app
from radtriage.compliance.audit_store import AuditFilter, StoredAuditEvent
from radtriage.compliance.export import verify_export
from radtriage.model.scorer import XrvScorer
from tests.support.fhir_validation import assert_valid_fhir

from .conftest import Studies, running_components
from .smart import TOKEN_URL, SmartClient, access_settings, write_registry
from .test_api import FHIR_JSON, TERMINAL, imaging_study, service_request

EHR = SmartClient("ehr-1", "ehr")
NARROW = SmartClient("ehr-narrow", "ehr")
RIS = SmartClient("ris-1", "ris")
COMPLIANCE = SmartClient("compliance-1", "compliance")

EHR_SCOPES = (
    "system/ImagingStudy.c system/Task.rs system/DiagnosticReport.rs system/Observation.rs "
    "system/Provenance.rs system/Device.rs"
)
PEER = "192.0.2.10"
AIAST = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}


@dataclass
class Secured:
    http: FlaskClient
    components: Components
    schema: Path

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> TestResponse:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.open(path, method=method, headers=headers, environ_base={"REMOTE_ADDR": PEER}, **kwargs)

    def fhir(self, method: str, path: str, token: str | None, status: int = 200, **kwargs: Any) -> dict[str, Any]:
        response = self.call(method, path, token, **kwargs)
        assert response.status_code == status, response.get_data(as_text=True)
        assert response.mimetype == FHIR_JSON
        body: dict[str, Any] = json.loads(response.get_data(as_text=True))
        assert_valid_fhir(body, self.schema)
        return body

    def post(self, path: str, resource: dict[str, Any], token: str | None, status: int = 201) -> dict[str, Any]:
        return self.fhir("POST", path, token, status, data=json.dumps(resource), content_type=FHIR_JSON)

    def poll(self, task_id: str, token: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task = self.fhir("GET", f"/fhir/Task/{task_id}", token)
            if task["status"] in TERMINAL:
                return task
            assert time.monotonic() < deadline, f"Task still {task['status']} after {timeout} s"
            time.sleep(0.05)

    def records(self, **criteria: Any) -> list[StoredAuditEvent]:
        """Audit records, oldest first."""
        found, _ = self.components.audit.search(AuditFilter(**criteria), limit=10_000)
        return found[::-1]


@pytest.fixture
def secured(tmp_path: Path, studies: Studies, fhir_scorer: XrvScorer, fhir_schema_path: Path) -> Iterator[Secured]:
    registry = write_registry(tmp_path / "clients.json", EHR, NARROW, RIS, COMPLIANCE)
    with running_components(tmp_path, studies, fhir_scorer, **access_settings(registry)) as components:
        assert components.access is not None
        yield Secured(create_app(components=components).test_client(), components, fhir_schema_path)


def entities(record: StoredAuditEvent) -> set[str]:
    return {e["what"]["reference"] for e in record.resource().get("entity", []) if "reference" in e.get("what", {})}


def agent_addresses(record: StoredAuditEvent) -> set[str]:
    return {a["network"]["address"] for a in record.resource()["agent"] if "network" in a}


# ---------------------------------------------------------------------------------------------- the EHR's flow


def test_an_ehr_client_posts_an_order_and_reads_every_result(
    secured: Secured, studies: Studies, fhir_scorer: XrvScorer
) -> None:
    token = EHR.token(secured.http, EHR_SCOPES)
    task = secured.post("/fhir/ImagingStudy", imaging_study(studies.chest), token)
    task = secured.poll(task["id"], token)
    assert task["status"] == "completed"
    job_id = task["id"]

    report = secured.fhir("GET", f"/fhir/DiagnosticReport/{job_id}", token)
    observations = [secured.fhir("GET", f"/fhir/{r['reference']}", token) for r in report["result"]]
    provenance = secured.fhir("GET", f"/fhir/Provenance/{job_id}", token)
    by_target = secured.fhir("GET", f"/fhir/Provenance?target=Observation/{job_id}-1", token)
    device_ref = observations[0]["device"]["reference"]
    device = secured.fhir("GET", f"/fhir/{device_ref}", token)

    # AI transparency: every AI-generated resource is labelled and names the model, which resolves.
    for resource in (task, report, *observations):
        assert AIAST in resource["meta"]["security"], resource["resourceType"]
    assert {o["device"]["reference"] for o in observations} == {device_ref} == {task["owner"]["reference"]}
    assert device["identifier"][0]["value"] == fhir_scorer.identity.sha256
    assert provenance["agent"][0]["who"] == {"reference": device_ref}
    assert {"reference": "ImagingStudy/is-1"} in [e["what"] for e in provenance["entity"]]
    assert {t["reference"] for t in provenance["target"]} >= {f"DiagnosticReport/{job_id}", f"Task/{job_id}"}
    assert by_target["total"] == 1 and by_target["entry"][0]["resource"] == provenance

    # The order's audit record names the client that sent it, from where and why.
    [received] = secured.records(kind="order-received")
    assert received.client_id == "ehr-1" and received.patient_ref == "Patient/p1"
    assert PEER in agent_addresses(received)
    assert "TREAT" in json.dumps(received.resource()["agent"])
    # Every read left a record naming the client, its address and the patient.
    reads = secured.records(kind="result-read")
    assert reads and all(r.client_id == "ehr-1" and r.patient_ref == "Patient/p1" for r in reads)
    assert all(PEER in agent_addresses(r) for r in reads)
    read_refs = set().union(*(entities(r) for r in reads))
    expected = {f"DiagnosticReport/{job_id}", f"Task/{job_id}", f"Provenance/{job_id}"}
    expected |= {f"Observation/{o['id']}" for o in observations}
    assert expected <= read_refs
    profiles = {p for r in reads for p in r.resource().get("meta", {}).get("profile", [])}
    assert any(p.endswith("IHE.BasicAudit.PatientRead") for p in profiles)
    assert any(p.endswith("IHE.BasicAudit.PatientQuery") for p in profiles)  # the Provenance search
    # `radtriage audit verify` recomputes this chain.
    assert secured.components.audit.verify().ok


# ---------------------------------------------------------------------------------------------- refusals


def test_a_client_without_the_scope_gets_403_and_nothing_happens(secured: Secured, studies: Studies) -> None:
    token = NARROW.token(secured.http, "system/DiagnosticReport.rs")
    response = secured.call(
        "POST", "/fhir/ImagingStudy", token, data=json.dumps(imaging_study(studies.chest)), content_type=FHIR_JSON
    )
    assert response.status_code == 403
    outcome = json.loads(response.get_data(as_text=True))
    assert_valid_fhir(outcome, secured.schema)
    assert outcome["issue"][0]["code"] == "forbidden"
    challenge = response.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="system/ImagingStudy.c"' in challenge
    assert secured.components.store.list_jobs()[1] == 0
    [denied] = secured.records(kind="access-denied")
    assert denied.client_id == "ehr-narrow" and denied.outcome == 4
    assert secured.records(kind="order-received") == []
    # Its own scope works.
    assert secured.fhir("GET", "/fhir/DiagnosticReport", token)["total"] == 0


def test_every_route_but_discovery_needs_a_token(secured: Secured) -> None:
    app = secured.http.application
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/fhir") or rule.rule.endswith(("/metadata", "/smart-configuration")):
            continue
        path = re.sub(r"<[^>]+>", "abc", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            for token in (None, "not-a-jwt"):
                response = secured.call(method, path, token, data="{}", content_type=FHIR_JSON)
                assert response.status_code == 401, (method, path, response.get_data(as_text=True))
                assert response.headers["WWW-Authenticate"].startswith('Bearer realm="radtriage"')
                outcome = json.loads(response.get_data(as_text=True))
                assert_valid_fhir(outcome, secured.schema)
                assert outcome["issue"][0]["code"] == "login"
                checked += 1
    assert checked >= 2 * 14
    refused = secured.records(kind="authentication-failed")
    assert len(refused) == checked and all(PEER in agent_addresses(r) for r in refused)
    assert secured.components.store.list_jobs()[1] == 0
    # Discovery stays open.
    assert secured.call("GET", "/fhir/metadata").status_code == 200
    assert secured.call("GET", "/fhir/.well-known/smart-configuration").status_code == 200


def test_a_transaction_needs_the_create_scope_of_every_entry_type(secured: Secured, studies: Studies) -> None:
    token = RIS.token(secured.http, "system/ServiceRequest.c system/Task.rs")
    both = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:6a3c2b8e-0d3f-4f7e-9d35-0c7c1c3e2a11",
                "resource": service_request(None, request_id="sr-tx"),
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
            {
                "resource": imaging_study(
                    studies.chest,
                    study_id="is-tx",
                    basedOn=[{"reference": "urn:uuid:6a3c2b8e-0d3f-4f7e-9d35-0c7c1c3e2a11"}],
                ),
                "request": {"method": "POST", "url": "ImagingStudy"},
            },
        ],
    }
    response = secured.call("POST", "/fhir", token, data=json.dumps(both), content_type=FHIR_JSON)
    assert response.status_code == 403
    assert 'scope="system/ImagingStudy.c"' in response.headers["WWW-Authenticate"]
    assert secured.components.store.list_jobs()[1] == 0
    assert secured.call("POST", "/fhir", None, data=json.dumps(both), content_type=FHIR_JSON).status_code == 401

    requests_only = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": service_request(studies.chest), "request": {"method": "POST", "url": "ServiceRequest"}},
        ],
    }
    answered = secured.fhir("POST", "/fhir", token, data=json.dumps(requests_only), content_type=FHIR_JSON)
    assert answered["entry"][0]["response"]["status"] == "201 Created"
    [received] = secured.records(kind="order-received")
    assert received.client_id == "ris-1"


def test_metadata_declares_smart_security_and_discovery_is_served(secured: Secured) -> None:
    statement = secured.fhir("GET", "/fhir/metadata", None)
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    [oauth] = security["extension"]
    assert oauth["extension"] == [{"url": "token", "valueUri": TOKEN_URL}]
    response = secured.call("GET", "/fhir/.well-known/smart-configuration")
    assert response.mimetype == "application/json"
    configuration = response.get_json()
    assert configuration["token_endpoint"] == TOKEN_URL
    assert "client-confidential-asymmetric" in configuration["capabilities"]
    assert configuration == secured.call("GET", "/auth/.well-known/smart-configuration").get_json()


def test_a_request_id_is_recorded_when_sane_and_dropped_when_not(secured: Secured) -> None:
    token = EHR.token(secured.http, "system/Task.rs")
    secured.fhir("GET", "/fhir/Task", token, headers={"X-Request-Id": "req-42"})
    secured.fhir("GET", "/fhir/Task", token, headers={"X-Request-Id": "x" * 300})  # no 500 for a silly header
    first, second = secured.records(kind="result-read")
    assert "req-42" in json.dumps(first.resource()["entity"])
    assert "x" * 300 not in second.resource_text


# ---------------------------------------------------------------------------------------------- compliance role


@pytest.fixture
def audited_flow(secured: Secured, studies: Studies) -> str:
    """An EHR order, scored and read; returns the job id."""
    token = EHR.token(secured.http, EHR_SCOPES)
    task = secured.post("/fhir/ImagingStudy", imaging_study(studies.chest), token)
    assert secured.components.queue.wait_idle(60)
    secured.fhir("GET", f"/fhir/DiagnosticReport/{task['id']}", token)
    secured.fhir("GET", "/fhir/DiagnosticReport?subject=Patient/p1", token)
    job_id: str = task["id"]
    return job_id


def test_the_compliance_role_searches_and_reads_the_audit_trail(secured: Secured, audited_flow: str) -> None:
    token = COMPLIANCE.token(secured.http, "system/AuditEvent.rs")
    by_ehr = secured.records(client="ehr-1")
    page = secured.fhir("GET", "/fhir/AuditEvent?agent=ehr-1&_count=2", token)
    assert page["total"] == len(by_ehr) >= 3
    ids = [e["resource"]["id"] for e in page["entry"]]
    assert ids == [str(r.id) for r in by_ehr[::-1][:2]]  # newest first
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    second = secured.fhir("GET", next_url.removeprefix("http://localhost"), token)
    assert [e["resource"]["id"] for e in second["entry"]] == [str(r.id) for r in by_ehr[::-1][2:4]]

    reads = secured.fhir("GET", "/fhir/AuditEvent?patient=p1&subtype=result-read&action=R", token)
    assert reads["total"] >= 1
    for entry in reads["entry"]:
        assert entry["resource"]["action"] == "R"
        assert {"reference": "Patient/p1"} in [e["what"] for e in entry["resource"]["entity"] if "what" in e]
    assert secured.fhir("GET", "/fhir/AuditEvent?date=lt2000-01-01", token)["total"] == 0
    secured.fhir("GET", "/fhir/AuditEvent?date=2025-13-01", token, status=400)
    secured.fhir("GET", "/fhir/AuditEvent?colour=blue", token, status=400)
    secured.fhir("GET", "/fhir/AuditEvent?_sort=date", token, status=400)

    # Paging the whole trail: each page read is itself recorded, and still no page repeats a record.
    seen: list[str] = []
    url: str | None = "/fhir/AuditEvent?_count=3"
    while url:
        bundle = secured.fhir("GET", url, token)
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        url = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), "").removeprefix("http://localhost")
    assert len(seen) == len(set(seen)) == bundle["total"] > 6

    one = by_ehr[0]
    assert secured.fhir("GET", f"/fhir/AuditEvent/{one.id}", token) == one.resource()
    secured.fhir("GET", "/fhir/AuditEvent/999999", token, status=404)
    # Reading the trail is itself audited, by the compliance client.
    assert {r.client_id for r in secured.records(kind="audit-read")} == {"compliance-1"}
    # An EHR client may not.
    ehr = EHR.token(secured.http, EHR_SCOPES)
    assert secured.call("GET", "/fhir/AuditEvent", ehr).status_code == 403
    assert secured.call("GET", "/fhir/$audit-export", ehr).status_code == 403
    assert secured.components.audit.verify().ok


@pytest.mark.parametrize(
    ("fmt", "media_type"), [("ndjson", "application/fhir+ndjson"), ("bundle", FHIR_JSON), ("csv", "text/csv")]
)
def test_the_compliance_role_exports_with_the_chain_head(
    secured: Secured, audited_flow: str, fmt: str, media_type: str
) -> None:
    token = COMPLIANCE.token(secured.http, "system/AuditEvent.rs")
    head_before = secured.components.audit.head()
    response = secured.call("GET", f"/fhir/$audit-export?format={fmt}&client=ehr-1&start=2000-01-01", token)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == media_type
    body = response.get_data(as_text=True)
    head_id, head_hash = int(response.headers["X-Audit-Chain-Head-Id"]), response.headers["X-Audit-Chain-Head-Hash"]
    assert (head_id, head_hash) == (head_before.id, head_before.hash)
    verified = verify_export(io.StringIO(body), engine=secured.components.engine)
    assert verified.ok, verified.reason
    assert verified.records == len(secured.records(client="ehr-1")) and verified.head is not None
    assert verified.head.hash == head_hash
    if fmt == "bundle":
        assert_valid_fhir(json.loads(body), secured.schema)
    # The export is audited, with the head it was proven against.
    record = secured.components.audit.get(int(response.headers["X-Audit-Export-Record"]))
    assert record is not None and record.kind == "audit-exported" and record.client_id == "compliance-1"
    assert head_hash in record.resource_text
    assert secured.components.audit.verify().ok


@pytest.mark.parametrize(
    "query",
    ["start=2025-02-01&end=2025-01-01", "format=xml", "start=yesterday", "colour=blue", "client=a&client=b"],
)
def test_a_bad_export_request_is_400_and_audited(secured: Secured, query: str) -> None:
    token = COMPLIANCE.token(secured.http, "system/AuditEvent.rs")
    outcome = secured.fhir("GET", f"/fhir/$audit-export?{query}", token, status=400)
    assert outcome["issue"][0]["code"] == "invalid"
    [refused] = secured.records(kind="audit-exported")
    assert refused.outcome == 4 and refused.client_id == "compliance-1"
