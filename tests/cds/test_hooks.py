"""CDS Hooks 2.0 over real HTTP (waitress on loopback), called by `client.CdsHooksClient`, a client written from
the specification, with access control on: every call carries the EHR's signed JWT, checked against the
registry the service reads (setting ``cds_clients``).

The results behind the cards come from the real service, the real pipeline and store, a folder archive of
pydicom-data chest CRs (MIT) and the untrained placeholder network whose scores are replaced by fixed ones
(`UrgentScorer`): these tests are about the cards, not the model.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from pydicom import dcmread
from pydicom.uid import generate_uid

from radtriage.app.config import Settings
from radtriage.app.core.domain import FindingScore, ImagingOrder, JobState
from radtriage.app.core.ports import PreparedImage
from radtriage.app.factory import Components, build_components, create_app
from radtriage.app.storage.cds_store import SqlCdsRecords
from radtriage.compliance.audit_store import AuditFilter
from radtriage.imaging.folder_source import FolderStudySource
from radtriage.model.placeholder import ensure_placeholder
from radtriage.model.scorer import XrvScorer
from tests.support.data import pydicom_data_dir

from .client import CdsHooksClient

PATIENT_VIEW = "radtriage-cxr-triage"
ORDER_SIGN = "radtriage-cxr-order-sign"
MRN = {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "MRN-4242"}
EHR_TOKEN = "ehr-fhir-token-123"


class UrgentScorer(XrvScorer):
    """The placeholder network with fixed outputs: Effusion well above its operating point (the built-in policy
    makes that urgent), everything else well below, and a severity of 3.5."""

    def score(self, image: PreparedImage) -> list[FindingScore]:
        return [FindingScore(label, 0.97 if label == "Effusion" else 0.02, 0.5) for label in self.labels]

    def severity(self, image: PreparedImage) -> float | None:
        return 3.5


class EhrFhirServer:
    """The EHR's FHIR server, for calls without prefetch: serves one Patient to a request with the right bearer
    token and refuses anything else (it checks what it receives). Records each request's path and token."""

    def __init__(self) -> None:
        seen: list[tuple[str, str | None]] = []
        self.seen = seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                seen.append((self.path, self.headers.get("Authorization")))
                ok = self.path == "/fhir/Patient/ehr-77" and self.headers.get("Authorization") == f"Bearer {EHR_TOKEN}"
                body = json.dumps({"resourceType": "Patient", "id": "ehr-77", "identifier": [MRN]}).encode()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/fhir+json")
                self.end_headers()
                if ok:
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Site:
    components: Components
    ehr: CdsHooksClient
    fhir_server: EhrFhirServer
    base: str
    jobs: dict[str, str]


def chest_copy(source: Path, target: Path) -> str:
    """The chest CR again as another study (new UIDs), so that one patient can have two."""
    dataset = dcmread(source)
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID = (generate_uid() for _ in range(3))
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(target)
    return str(dataset.StudyInstanceUID)


def wait_scored(components: Components, job_id: str) -> None:
    deadline = time.monotonic() + 120
    while components.service.job(job_id).state is not JobState.COMPLETED:
        assert not components.service.job(job_id).state.is_terminal, components.service.job(job_id)
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    from waitress.server import create_server

    home = tmp_path_factory.mktemp("cds")
    archive = home / "archive"
    archive.mkdir()
    shutil.copy(pydicom_data_dir() / "RG1_J2KI.dcm", archive / "a.dcm")
    first = str(dcmread(archive / "a.dcm", stop_before_pixels=True).StudyInstanceUID)
    second = chest_copy(pydicom_data_dir() / "RG1_J2KI.dcm", archive / "b.dcm")
    fhir_server = EhrFhirServer()
    ehr = CdsHooksClient("", jku="https://ehr.example.org/.well-known/jwks.json")
    registry = home / "cds-clients.json"
    registry.write_text(json.dumps({"clients": [ehr.registration(fhir_servers=[fhir_server.url])]}), encoding="utf-8")
    settings = Settings(
        home=str(home),
        database_url=f"sqlite:///{home / 'db.sqlite3'}",
        auth_required=True,
        cds_clients=str(registry),
        shadow_mode="off",
    )
    scorer = UrgentScorer.from_artefact(ensure_placeholder(home / "models"), max_threads=None)
    components = build_components(settings, scorer_factory=lambda: scorer, study_source=FolderStudySource(archive))
    components.start()
    server = create_server(create_app(components=components), host="127.0.0.1", port=0, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{server.effective_port}"
    ehr.services_url = f"{base}/cds-services"
    jobs = {}
    for name, uid, patient, source in (
        ("by-id", first, "Patient/ehr-77", "fhir"),
        ("by-mrn", second, f"{MRN['system']}|{MRN['value']}", "hl7"),
    ):
        order = ImagingOrder(
            study_instance_uid=uid, patient_ref=patient, source=source, source_key=name, accession_number=f"ACC-{name}"
        )
        _, job, _ = components.service.submit_order(order)
        jobs[name] = job.id
    for job_id in jobs.values():
        wait_scored(components, job_id)
    try:
        yield Site(components, ehr, fhir_server, base, jobs)
    finally:
        server.task_dispatcher.shutdown()
        server.close()
        components.close()
        fhir_server.stop()


def patient_view_context(patient: str = "ehr-77") -> dict[str, Any]:
    return {"userId": "Practitioner/dr-1", "patientId": patient}


def draft_orders(*requests_: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in requests_]}


def chest_order(priority: str = "routine") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": "draft-1",
        "status": "draft",
        "intent": "order",
        "priority": priority,
        "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5", "display": "XR Chest 2 Views"}]},
        "subject": {"reference": "Patient/ehr-77"},
    }


def cards_of(response: requests.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    cards: list[dict[str, Any]] = response.json()["cards"]
    for card in cards:  # CDS Hooks 2.0, Card attributes
        uuid.UUID(card["uuid"])
        assert len(card["summary"]) < 140 and card["indicator"] in ("info", "warning", "critical")
        assert "AI-generated" in card["source"]["label"] and card["source"]["topic"]["code"] == "AIAST"
        if "suggestions" in card:
            assert card["selectionBehavior"] == "at-most-one"
    return cards


# ---------------------------------------------------------------------------------------------- discovery and hooks


def test_discovery_lists_both_services_with_prefetch(site: Site) -> None:
    response = site.ehr.discover()
    assert response.status_code == 200
    services = {s["id"]: s for s in response.json()["services"]}
    assert services[PATIENT_VIEW]["hook"] == "patient-view" and services[ORDER_SIGN]["hook"] == "order-sign"
    for service in services.values():
        assert service["description"] and service["prefetch"] == {"patient": "Patient/{{context.patientId}}"}
    statement = requests.get(f"{site.base}/fhir/metadata", timeout=30).json()  # the FHIR side says where they are
    assert "/cds-services" in statement["rest"][0]["documentation"]


def test_patient_view_shows_recent_results_with_prefetch(site: Site) -> None:
    prefetch = {"patient": {"resourceType": "Patient", "id": "ehr-77", "identifier": [MRN]}}
    cards = cards_of(site.ehr.call(PATIENT_VIEW, "patient-view", patient_view_context(), prefetch=prefetch))
    assert len(cards) == 2  # the order by FHIR id and the one by MRN (found through the prefetched identifiers)
    links = {card["links"][0]["url"] for card in cards}
    assert links == {f"{site.base}/studies/{job}" for job in site.jobs.values()}
    for card in cards:
        assert card["indicator"] == "warning" and card["summary"].startswith("AI chest X-ray triage: URGENT")
        assert "Effusion: 0.97" in card["detail"] and "severity" in card["detail"] and "3.5" in card["detail"]
        result = site.components.store.get_result(card["links"][0]["url"].rsplit("/", 1)[1])
        assert result is not None
        if result.not_assessed:
            assert "Not assessed by the model" in card["detail"]
            assert all(label in card["detail"] for label in result.not_assessed)
    reads, _ = site.components.audit.search(AuditFilter(kind="result-read", client="https://ehr.example.org"))
    assert reads and reads[0].patient_ref == "Patient/ehr-77"


def test_patient_view_without_prefetch_reads_the_patient_from_the_fhir_server(site: Site) -> None:
    authorization = {
        "access_token": EHR_TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/Patient.r",
        "subject": "radtriage",
    }
    before = len(site.fhir_server.seen)
    response = site.ehr.call(
        PATIENT_VIEW,
        "patient-view",
        patient_view_context(),
        fhir_server=site.fhir_server.url,
        fhir_authorization=authorization,
    )
    assert len(cards_of(response)) == 2
    assert site.fhir_server.seen[before:] == [("/fhir/Patient/ehr-77", f"Bearer {EHR_TOKEN}")]


def test_an_unregistered_fhir_server_is_not_called(site: Site) -> None:
    other = EhrFhirServer()
    try:
        response = site.ehr.call(PATIENT_VIEW, "patient-view", patient_view_context(), fhir_server=other.url)
        assert len(cards_of(response)) == 1  # Patient/ehr-77 only: the MRN could not be learnt
        assert other.seen == []
    finally:
        other.stop()


def test_a_patient_without_results_gets_no_cards(site: Site) -> None:
    assert cards_of(site.ehr.call(PATIENT_VIEW, "patient-view", patient_view_context("nobody-1"))) == []


def test_order_sign_informs_and_suggests_raising_a_routine_chest_order(site: Site) -> None:
    context = {**patient_view_context(), "draftOrders": draft_orders(chest_order("routine"))}
    cards = cards_of(site.ehr.call(ORDER_SIGN, "order-sign", context))
    info, suggestion_card = cards
    assert info["indicator"] == "info" and "triage" in info["summary"]
    assert suggestion_card["indicator"] == "warning" and "URGENT" in suggestion_card["summary"]
    [suggestion] = suggestion_card["suggestions"]
    [action] = suggestion["actions"]
    assert action["type"] == "update" and action["resource"]["priority"] == "urgent"
    assert action["resource"]["id"] == "draft-1" and action["resource"]["code"] == chest_order()["code"]


@pytest.mark.parametrize("priority", ["urgent", "asap", "stat"])
def test_order_sign_never_suggests_a_lower_or_equal_priority(site: Site, priority: str) -> None:
    context = {**patient_view_context(), "draftOrders": draft_orders(chest_order(priority))}
    cards = cards_of(site.ehr.call(ORDER_SIGN, "order-sign", context))
    assert [c["indicator"] for c in cards] == ["info"]


def test_order_sign_ignores_orders_that_are_not_chest_radiographs(site: Site) -> None:
    head_ct = {
        **chest_order(),
        "code": {"coding": [{"system": "http://loinc.org", "code": "24725-4", "display": "CT Head"}]},
    }
    context = {**patient_view_context(), "draftOrders": draft_orders(head_ct)}
    assert cards_of(site.ehr.call(ORDER_SIGN, "order-sign", context)) == []


def test_feedback_is_recorded_and_audited(site: Site) -> None:
    context = {**patient_view_context(), "draftOrders": draft_orders(chest_order("routine"))}
    _, card = cards_of(site.ehr.call(ORDER_SIGN, "order-sign", context))
    entry = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": "2026-12-06T08:00:00Z",
    }
    response = site.ehr.feedback(ORDER_SIGN, [entry])
    assert response.status_code == 200, response.text
    records = SqlCdsRecords(site.components.engine)
    issued = records.card(card["uuid"])
    assert issued is not None and issued.job_id in site.jobs.values() and issued.patient_ref == "Patient/ehr-77"
    [kept] = records.feedback(card["uuid"])
    assert kept.outcome == "accepted" and kept.accepted_suggestions == (card["suggestions"][0]["uuid"],)
    assert kept.issuer == "https://ehr.example.org"
    audited, _ = site.components.audit.search(AuditFilter(kind="cds-feedback"))
    assert audited and audited[0].patient_ref == "Patient/ehr-77"


# ---------------------------------------------------------------------------------------------- refusals


def forged(ehr: CdsHooksClient, service_id: str) -> str:
    return CdsHooksClient(ehr.services_url, issuer=ehr.issuer, jku=ehr.jku).token(service_id)


def wrong_algorithm(ehr: CdsHooksClient, service_id: str) -> str:
    claims = jwt.decode(ehr.token(service_id), options={"verify_signature": False})
    return jwt.encode(claims, "a-shared-secret-of-enough-length-for-hs256", algorithm="HS256")


def foreign_jku(ehr: CdsHooksClient, service_id: str) -> str:
    return CdsHooksClient(
        ehr.services_url, issuer=ehr.issuer, jku="https://evil.example/jwks", private_key=ehr.private_key
    ).token(service_id)


BAD_TOKENS = {
    "expired": lambda ehr, s: ehr.token(s, exp=int(time.time()) - 120, iat=int(time.time()) - 400),
    "too-long-lived": lambda ehr, s: ehr.token(s, exp=int(time.time()) + 3600),
    "other-audience": lambda ehr, s: ehr.token(s, aud="https://elsewhere.example/cds-services/x"),
    "other-service": lambda ehr, s: ehr.token(ORDER_SIGN if s == PATIENT_VIEW else PATIENT_VIEW),
    "unknown-issuer": lambda ehr, s: ehr.token(s, iss="https://unknown-ehr.example"),
    "no-jti": lambda ehr, s: ehr.token(s, jti=None),
    "forged-signature": forged,
    "hs256": wrong_algorithm,
    "unregistered-jku": foreign_jku,
    "not-a-jwt": lambda ehr, s: "not.a.jwt",
}


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
def test_bad_jwts_are_401_and_audited(site: Site, name: str) -> None:
    token = BAD_TOKENS[name](site.ehr, PATIENT_VIEW)
    before, _ = site.components.audit.search(AuditFilter(kind="authentication-failed"))
    response = site.ehr.call(PATIENT_VIEW, "patient-view", patient_view_context(), token=token)
    assert response.status_code == 401 and response.json() == {
        "error": "the CDS client's JWT is missing or not acceptable"
    }
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    after, _ = site.components.audit.search(AuditFilter(kind="authentication-failed"))
    assert len(after) == len(before) + 1


def test_no_jwt_and_a_replayed_jwt_are_refused(site: Site) -> None:
    assert (
        CdsHooksClient.post(f"{site.ehr.services_url}/{PATIENT_VIEW}", {"hook": "patient-view"}, None).status_code
        == 401
    )
    token = site.ehr.token(PATIENT_VIEW)
    assert site.ehr.call(PATIENT_VIEW, "patient-view", patient_view_context(), token=token).status_code == 200
    assert site.ehr.call(PATIENT_VIEW, "patient-view", patient_view_context(), token=token).status_code == 401
    feedback = site.ehr.feedback(
        PATIENT_VIEW, [], token=site.ehr.token(PATIENT_VIEW, iss="https://unknown-ehr.example")
    )
    assert feedback.status_code == 401


MALFORMED: dict[str, Any] = {
    "not-json": b"{not json",
    "deeply-nested": b"[" * 50_000 + b"]" * 50_000,
    "not-an-object": [],
    "wrong-hook": {"hook": "order-select", "hookInstance": "x", "context": patient_view_context()},
    "no-hook-instance": {"hook": "patient-view", "context": patient_view_context()},
    "no-patient": {"hook": "patient-view", "hookInstance": "x", "context": {"userId": "Practitioner/1"}},
    "bad-patient-id": {"hook": "patient-view", "hookInstance": "x", "context": patient_view_context("a b/../c")},
    "relative-fhir-server": {
        "hook": "patient-view",
        "hookInstance": "x",
        "context": patient_view_context(),
        "fhirServer": "/fhir",
    },
    "authorization-without-server": {
        "hook": "patient-view",
        "hookInstance": "x",
        "context": patient_view_context(),
        "fhirAuthorization": {"access_token": "t", "token_type": "Bearer"},
    },
    "prefetch-not-object": {
        "hook": "patient-view",
        "hookInstance": "x",
        "context": patient_view_context(),
        "prefetch": [],
    },
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_calls_are_400(site: Site, name: str) -> None:
    response = CdsHooksClient.post(
        f"{site.ehr.services_url}/{PATIENT_VIEW}", MALFORMED[name], site.ehr.token(PATIENT_VIEW)
    )
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}


def test_other_malformed_requests(site: Site) -> None:
    order_sign = {"hook": "order-sign", "hookInstance": "x", "context": patient_view_context()}
    assert (
        CdsHooksClient.post(f"{site.ehr.services_url}/{ORDER_SIGN}", order_sign, site.ehr.token(ORDER_SIGN)).status_code
        == 400
    )
    unknown = CdsHooksClient.post(f"{site.ehr.services_url}/no-such-service", {}, site.ehr.token("no-such-service"))
    assert unknown.status_code == 404
    plain = requests.post(
        f"{site.ehr.services_url}/{PATIENT_VIEW}",
        data="hello",
        headers={"Content-Type": "text/plain", "Authorization": f"Bearer {site.ehr.token(PATIENT_VIEW)}"},
        timeout=30,
    )
    assert plain.status_code == 415
    huge = {"hook": "patient-view", "hookInstance": "x", "context": patient_view_context(), "pad": "x" * 2_000_000}
    too_big = CdsHooksClient.post(f"{site.ehr.services_url}/{PATIENT_VIEW}", huge, site.ehr.token(PATIENT_VIEW))
    assert too_big.status_code == 413 and set(too_big.json()) == {"error"}
    assert requests.get(f"{site.ehr.services_url}/{PATIENT_VIEW}", timeout=30).status_code == 405
    for entry in ({"card": "not-a-uuid", "outcome": "accepted", "outcomeTimestamp": "2026-12-06T08:00:00Z"},
                  {"card": str(uuid.uuid4()), "outcome": "ignored", "outcomeTimestamp": "2026-12-06T08:00:00Z"},
                  {"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": "yesterday"}):  # fmt: skip
        assert site.ehr.feedback(PATIENT_VIEW, [entry]).status_code == 400
