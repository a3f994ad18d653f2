"""Audit records: validation, and their rendering as FHIR R4 AuditEvents after IHE BALP."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from radtriage.compliance import codes
from radtriage.compliance.audit import (
    EVENT_KINDS,
    LOGIN,
    ORDER_RECEIVED,
    RESULT_READ,
    STUDY_RETRIEVED,
    AuditAction,
    AuditContext,
    AuditOutcome,
    AuditRecord,
    audit_context,
    audit_event_json,
    balp_profile,
    build_audit_event,
    current_audit_context,
    record_for_job_transition,
)
from tests.support.fhir_validation import assert_valid_fhir

from .conftest import SOURCE

WHEN = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)


def agents_by_type(resource: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["type"]["coding"][0]["code"]: a for a in resource["agent"]}


def entity_with_role(resource: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [e for e in resource.get("entity", []) if e.get("role", {}).get("code") == role]


def test_a_patient_create_follows_balp_patient_create() -> None:
    record = AuditRecord(
        ORDER_RECEIVED,
        recorded=WHEN,
        client_id="ehr-main",
        role="ehr",
        token_id="jti-1",
        peer_address="192.0.2.10",
        interaction="create",
        entities=("ServiceRequest/sr1", "Task/t1"),
        patient_ref="Patient/p1",
        purpose_of_use="TREAT",
        request_id="req-42",
    )
    resource = audit_event_json(record, resource_id="7", source=SOURCE)
    assert resource["meta"]["profile"] == [f"{codes.BALP_PROFILE_BASE}/IHE.BasicAudit.PatientCreate"]
    assert resource["type"] == codes.REST_OPERATION.as_fhir()
    assert resource["subtype"][0] == {"system": codes.RESTFUL_INTERACTION_SYSTEM, "code": "create", "display": "create"}
    assert resource["action"] == "C" and resource["outcome"] == "0"
    assert resource["recorded"] == "2025-03-01T08:30:00.000000Z"
    agents = agents_by_type(resource)
    client, server, oauth = agents["110153"], agents["110152"], agents["UserOauthAgent"]
    assert client["who"]["identifier"]["value"] == "ehr-main" and client["network"] == {
        "address": "192.0.2.10",
        "type": "2",
    }
    assert server["who"]["identifier"]["value"] == "radtriage" and server["network"]["address"] == "radtriage.test"
    assert oauth["requestor"] is True and oauth["policy"] == ["urn:ietf:params:oauth:jti:jti-1"]
    assert oauth["purposeOfUse"][0]["coding"][0]["code"] == "TREAT" and oauth["role"][0]["coding"][0]["code"] == "ehr"
    patient = entity_with_role(resource, "1")
    assert patient == [
        {
            "what": {"reference": "Patient/p1"},
            "type": codes.ENTITY_PERSON.as_fhir(),
            "role": codes.ROLE_PATIENT.as_fhir(),
        }
    ]
    assert [e["what"]["reference"] for e in entity_with_role(resource, "4")] == ["ServiceRequest/sr1"]
    assert [e["what"]["reference"] for e in entity_with_role(resource, "20")] == ["Task/t1"]
    assert resource["entity"][0]["what"]["identifier"]["value"] == "req-42"
    assert resource["source"]["observer"]["display"] == "radtriage"


def test_a_read_reverses_client_and_server_roles_as_balp_read_does() -> None:
    record = AuditRecord(
        RESULT_READ,
        recorded=WHEN,
        client_id="ehr-main",
        peer_address="192.0.2.10",
        interaction="read",
        entities=("DiagnosticReport/r1",),
    )
    resource = audit_event_json(record, source=SOURCE)
    agents = agents_by_type(resource)
    assert agents["110152"]["who"]["identifier"]["value"] == "ehr-main"  # client = Destination Role ID
    assert agents["110153"]["who"]["identifier"]["value"] == "radtriage"
    assert agents["110152"]["requestor"] is True
    assert resource["meta"]["profile"] == [f"{codes.BALP_PROFILE_BASE}/IHE.BasicAudit.Read"]
    assert entity_with_role(resource, "3")[0]["what"]["reference"] == "DiagnosticReport/r1"


def test_a_search_records_the_raw_query_base64_as_balp_query() -> None:
    query = "subject=Patient/p1&status=final"
    record = AuditRecord(
        RESULT_READ,
        recorded=WHEN,
        client_id="ehr-main",
        peer_address="192.0.2.10",
        interaction="search-type",
        patient_ref="Patient/p1",
        query=query,
    )
    resource = audit_event_json(record, source=SOURCE)
    assert resource["action"] == "E"
    assert resource["meta"]["profile"] == [f"{codes.BALP_PROFILE_BASE}/IHE.BasicAudit.PatientQuery"]
    (query_entity,) = entity_with_role(resource, "24")
    assert base64.b64decode(query_entity["query"]).decode() == query and "what" not in query_entity


def test_failures_and_non_rest_events_claim_no_balp_profile() -> None:
    failed = AuditRecord(
        ORDER_RECEIVED,
        client_id="ehr",
        peer_address="192.0.2.1",
        interaction="create",
        entities=("ServiceRequest/1",),
        outcome=AuditOutcome.MINOR_FAILURE,
        outcome_description="invalid-input",
    )
    assert balp_profile(failed) is None
    resource = audit_event_json(failed, source=SOURCE)
    assert resource["outcome"] == "4" and resource["outcomeDesc"] == "invalid-input"
    hl7 = AuditRecord(ORDER_RECEIVED, client_id="RIS^HOSP", peer_address="192.0.2.5", entities=("ServiceRequest/1",))
    assert balp_profile(hl7) is None
    assert audit_event_json(hl7, source=SOURCE)["type"] == codes.DCM_IMPORT.as_fhir()


def test_an_outbound_retrieval_makes_the_pacs_the_source() -> None:
    record = AuditRecord(STUDY_RETRIEVED, peer_address="pacs.hospital.test", entities=("urn:dicom:uid|urn:oid:1.2.3",))
    resource = audit_event_json(record, source=SOURCE)
    agents = agents_by_type(resource)
    assert agents["110153"]["who"]["display"] == "pacs.hospital.test"
    assert agents["110153"]["network"] == {"address": "pacs.hospital.test", "type": "1"}
    assert agents["110152"]["requestor"] is True  # the service asked
    study = entity_with_role(resource, "4")[0]["what"]
    assert study == {"identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}}


def test_login_carries_the_dicom_login_subtype_and_the_catalogue_code() -> None:
    resource = audit_event_json(AuditRecord(LOGIN, client_id="ris", peer_address="::1", token_id="t"), source=SOURCE)
    assert resource["type"] == codes.DCM_USER_AUTHENTICATION.as_fhir()
    assert [s["code"] for s in resource["subtype"]] == ["110122", "login"]
    assert agents_by_type(resource)["110153"]["network"] == {"address": "::1", "type": "2"}


def all_kinds_records() -> list[AuditRecord]:
    records = []
    for kind in EVENT_KINDS.values():
        records.append(AuditRecord(kind, recorded=WHEN))
        records.append(
            AuditRecord(
                kind,
                recorded=WHEN,
                client_id="client-1",
                role="admin",
                token_id="jti",
                user_id="os:alice",
                peer_address="2001:db8::1",
                entities=("DiagnosticReport/r1", "HOSP|12345"),
                patient_ref="urn:oid:1.2.36.146.595.217.0.1|MRN-1",
                query="a=b",
                purpose_of_use="HOPERAT",
                outcome=AuditOutcome.SERIOUS_FAILURE,
                outcome_description="pacs-unavailable",
                details={"job": "abc", "priority": "stat"},
            )
        )
    for interaction in ("create", "read", "vread", "update", "patch", "delete", "search-type", "search-system"):
        records.append(
            AuditRecord(
                RESULT_READ,
                recorded=WHEN,
                client_id="c",
                peer_address="127.0.0.1",
                interaction=interaction,
                entities=("Observation/o1",),
                patient_ref="Patient/p",
                query="x=1",
            )
        )
    return records


@pytest.mark.parametrize("record", all_kinds_records(), ids=lambda r: f"{r.kind.code}-{r.interaction or r.outcome}")
def test_every_rendering_is_valid_fhir_r4(record: AuditRecord, fhir_schema_path: Path) -> None:
    resource = audit_event_json(record, resource_id="12", source=SOURCE)
    assert_valid_fhir(resource, fhir_schema_path)
    model = build_audit_event(record, resource_id="12", source=SOURCE)
    assert model.model_dump(mode="json", exclude_none=True)["action"] == record.action


def test_a_record_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="purpose of use"):
        AuditRecord(LOGIN, purpose_of_use="BECAUSE")
    with pytest.raises(ValueError, match="interaction"):
        AuditRecord(LOGIN, interaction="transaction-ish")
    with pytest.raises(ValueError, match="time zone"):
        AuditRecord(LOGIN, recorded=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="client_id"):
        AuditRecord(LOGIN, client_id="x" * 300)
    with pytest.raises(ValueError, match="details"):
        AuditRecord(LOGIN, details={"n": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        AuditRecord("login")  # type: ignore[arg-type]
    assert AuditRecord(LOGIN).action is AuditAction.EXECUTE
    assert AuditRecord(RESULT_READ, interaction="search-type").action is AuditAction.EXECUTE
    assert AuditRecord(LOGIN, action=AuditAction.READ).action is AuditAction.READ


def test_the_patient_reference_stays_out_of_repr() -> None:
    record = AuditRecord(ORDER_RECEIVED, patient_ref="Patient/SECRET-MRN", query="name=Doe")
    assert "SECRET-MRN" not in repr(record) and "Doe" not in repr(record)


def test_the_audit_context_is_per_block_and_fills_records() -> None:
    context = AuditContext(client_id="ris", role="ris", peer_address="192.0.2.9", purpose_of_use="TREAT")
    assert current_audit_context() is None
    with audit_context(context):
        record = AuditRecord.in_context(ORDER_RECEIVED, entities=("ServiceRequest/1",))
        assert current_audit_context() is context
    assert current_audit_context() is None
    assert (record.client_id, record.role, record.peer_address, record.purpose_of_use) == (
        "ris",
        "ris",
        "192.0.2.9",
        "TREAT",
    )


@pytest.mark.parametrize(
    ("state", "kind", "outcome"),
    [
        ("received", "order-received", 0),
        ("preprocessed", "study-retrieved", 0),
        ("scored", "study-scored", 0),
        ("completed", "result-created", 0),
        ("failed", "job-failed", 4),
        ("cancelled", "order-cancelled", 0),
        ("queued", None, None),
        ("scoring", None, None),
    ],
)
def test_job_transitions_map_to_audit_records(state: str, kind: str | None, outcome: int | None) -> None:
    record = record_for_job_transition(
        job_id="j1", to_state=state, reason_code="not-a-chest" if state == "failed" else None, study_instance_uid="1.2"
    )
    if kind is None:
        assert record is None
        return
    assert record is not None and record.kind.code == kind and record.outcome == outcome
    assert record.details["job"] == "j1" and "urn:dicom:uid|urn:oid:1.2" in record.entities
    retry = record_for_job_transition(job_id="j1", to_state="failed", retryable=True)
    assert retry is not None and retry.outcome is AuditOutcome.SERIOUS_FAILURE


def test_a_workers_transition_is_not_attributed_to_a_requests_client() -> None:
    with audit_context(AuditContext(client_id="ehr", peer_address="192.0.2.1")):
        received = record_for_job_transition(job_id="j", to_state="received")
        scored = record_for_job_transition(job_id="j", to_state="scored")
    assert received is not None and received.client_id == "ehr"
    assert scored is not None and scored.client_id is None


def test_codes_share_the_fhir_doors_base() -> None:
    terminology = pytest.importorskip("radtriage.fhir.terminology")
    assert codes.RADTRIAGE_FHIR_BASE == terminology.RADTRIAGE_FHIR_BASE
    assert codes.MODEL_SHA256_SYSTEM == terminology.MODEL_SHA256_SYSTEM
    assert codes.TRIAGE_SYSTEM == terminology.TRIAGE_SYSTEM
