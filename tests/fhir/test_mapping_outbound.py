"""Domain → FHIR: Task, DiagnosticReport, Observations and Bundles, each checked against the R4 JSON Schema."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from radtriage.app.core.domain import FindingScore, ImagingOrder, Job, JobState, ModelIdentity, Priority, TriageResult
from radtriage.fhir import mapping, terminology
from tests.support.fhir_validation import assert_valid_fhir

T0 = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
JOB_ID = "0123456789abcdef0123456789abcdef"
UID = "1.2.826.0.1.3680043.8.498.1"
PLACEHOLDER = ModelIdentity("xrv-densenet121-placeholder", "0.0.0", "ab" * 32, placeholder=True)
TRAINED = ModelIdentity("radtriage-cxr", "1.0.0", "cd" * 32, placeholder=False)

ORDER = ImagingOrder(
    study_instance_uid=UID,
    patient_ref="Patient/p1",
    source="fhir",
    source_key="ServiceRequest/sr-1",
    requested_priority=Priority.URGENT,
    service_request_ref="ServiceRequest/sr-1",
    imaging_study_ref="ImagingStudy/is-1",
    id="order-1",
    received_at=T0,
)
JOB = Job(JOB_ID, "order-1", JobState.COMPLETED, Priority.STAT, created_at=T0, updated_at=T0 + timedelta(seconds=3))
FINDINGS = (
    FindingScore("Effusion", 0.81234567, 0.5),
    FindingScore("Lung Opacity", 0.2, 0.5),
    FindingScore("Pneumothorax", 0.4, 0.4),  # exactly at the operating point: positive
)
#: HL7 AI Transparency's label for AI-asserted content (v3-ObservationValue AIAST).
AIAST = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
DEVICE_REF = "Device/model-" + "ab" * 16
RESULT = TriageResult(
    job_id=JOB_ID,
    findings=FINDINGS,
    priority=Priority.STAT,
    model=PLACEHOLDER,
    series_instance_uid=UID + ".1",
    sop_instance_uid=UID + ".1.1",
    priority_reason="Pneumothorax at or above 0.4",
    created_at=T0 + timedelta(seconds=2),
)


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (JobState.RECEIVED, "ready"),
        (JobState.QUEUED, "ready"),
        *[(s, "in-progress") for s in (JobState.FETCHING, JobState.SELECTED, JobState.PREPROCESSED)],
        *[(s, "in-progress") for s in (JobState.SCORING, JobState.SCORED, JobState.PUBLISHING)],
        (JobState.COMPLETED, "completed"),
        (JobState.FAILED, "failed"),
        (JobState.CANCELLED, "cancelled"),
    ],
)
def test_task_status_follows_the_job(state: JobState, status: str, fhir_schema_path: Path) -> None:
    job = replace(JOB, state=state, failure_code="internal" if state is JobState.FAILED else None)
    task = mapping.task_resource(job, ORDER, None)
    assert task["status"] == status
    assert task["businessStatus"]["coding"][0] == {"system": terminology.JOB_STATE_SYSTEM, "code": state.value}
    assert state in mapping.job_states_for_task_status(status)
    assert_valid_fhir(task, fhir_schema_path)


def test_completed_task_points_at_its_report(fhir_schema_path: Path) -> None:
    task = mapping.task_resource(JOB, ORDER, RESULT)
    assert task["id"] == JOB_ID
    assert task["intent"] == "order"
    assert task["priority"] == "stat"
    assert task["focus"] == {"reference": "ServiceRequest/sr-1"}
    assert task["basedOn"] == [{"reference": "ServiceRequest/sr-1"}]
    assert task["for"] == {"reference": "Patient/p1"}
    assert task["lastModified"] == "2025-03-01T08:30:03Z"
    assert task["executionPeriod"] == {"start": "2025-03-01T08:30:00Z", "end": "2025-03-01T08:30:03Z"}
    reports = [o["valueReference"] for o in task["output"] if "valueReference" in o]
    assert reports == [{"reference": f"DiagnosticReport/{JOB_ID}"}]
    assert "statusReason" not in task
    assert "UNTRAINED PLACEHOLDER" in task["note"][0]["text"]
    assert task["meta"]["security"] == [AIAST]  # its priority and output come from the model
    assert task["owner"] == {"reference": DEVICE_REF, "display": "xrv-densenet121-placeholder 0.0.0"}
    assert_valid_fhir(task, fhir_schema_path)


def test_a_task_without_a_result_claims_no_ai_content() -> None:
    task = mapping.task_resource(replace(JOB, state=JobState.QUEUED), ORDER, None)
    assert "security" not in task["meta"] and "owner" not in task


def test_failed_task_has_a_coded_reason_and_no_output(fhir_schema_path: Path) -> None:
    job = replace(JOB, state=JobState.FAILED, failure_code="not-a-chest", failure_detail="no chest radiograph")
    task = mapping.task_resource(job, ORDER, None)
    reason = task["statusReason"]
    assert reason["coding"] == [
        {
            "system": terminology.TRIAGE_ERROR_SYSTEM,
            "code": "not-a-chest",
            "display": "The study is not a chest radiograph; not analysed",
        }
    ]
    assert reason["text"] == "no chest radiograph"
    assert "output" not in task
    assert_valid_fhir(task, fhir_schema_path)


def test_retryable_failure_says_so() -> None:
    job = replace(JOB, state=JobState.FAILED, failure_code="pacs-unavailable", failure_detail=None, retryable=True)
    task = mapping.task_resource(job, ORDER, None)
    assert task["statusReason"]["coding"][0]["code"] == "pacs-unavailable"
    assert "retried" in task["statusReason"]["text"]


def test_task_for_a_study_only_order_focuses_on_the_study(fhir_schema_path: Path) -> None:
    order = replace(ORDER, service_request_ref=None, source_key="ImagingStudy/is-1")
    task = mapping.task_resource(replace(JOB, state=JobState.QUEUED), order, None)
    assert "basedOn" not in task
    assert task["focus"]["reference"] == "ImagingStudy/is-1"
    assert task["focus"]["identifier"] == {"system": "urn:dicom:uid", "value": f"urn:oid:{UID}"}
    assert_valid_fhir(task, fhir_schema_path)


def test_diagnostic_report(fhir_schema_path: Path) -> None:
    report = mapping.diagnostic_report(ORDER, JOB, RESULT)
    assert report["id"] == JOB_ID
    assert report["status"] == "preliminary"
    assert report["category"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
        "code": "RAD",
        "display": "Radiology",
    }
    assert {"system": "http://loinc.org", "code": "30745-4", "display": "XR Chest Views"} in report["code"]["coding"]
    assert report["basedOn"] == [{"reference": "ServiceRequest/sr-1"}]
    assert report["subject"] == {"reference": "Patient/p1"}
    assert report["imagingStudy"][0]["reference"] == "ImagingStudy/is-1"
    assert report["issued"] == "2025-03-01T08:30:02Z"
    assert [r["reference"] for r in report["result"]] == [f"Observation/{JOB_ID}-{n}" for n in (1, 2, 3)]
    conclusion = report["conclusion"]
    assert conclusion.startswith("UNTRAINED PLACEHOLDER MODEL")
    assert "STAT" in conclusion
    assert "Effusion 0.81" in conclusion and "Pneumothorax 0.40" in conclusion
    assert "Lung Opacity" not in conclusion  # negative findings are not listed
    assert report["meta"]["tag"][0]["code"] == "untrained-placeholder"
    model = {
        e["url"]: next(v for k, v in e.items() if k.startswith("value")) for e in report["extension"][0]["extension"]
    }
    assert model == {
        "name": PLACEHOLDER.name,
        "version": "0.0.0",
        "sha256": "ab" * 32,
        "placeholder": True,
        "device": {"reference": DEVICE_REF, "display": "xrv-densenet121-placeholder 0.0.0"},
    }
    assert AIAST in report["meta"]["security"]
    assert_valid_fhir(report, fhir_schema_path)


def test_report_from_a_trained_model_carries_no_placeholder_warning(fhir_schema_path: Path) -> None:
    result = replace(RESULT, model=TRAINED, findings=(FindingScore("Effusion", 0.1, 0.5),))
    report = mapping.diagnostic_report(ORDER, JOB, result)
    assert "PLACEHOLDER" not in report["conclusion"]
    assert "tag" not in report["meta"]
    assert "No finding reached" in report["conclusion"]
    for resource in mapping.observations(ORDER, JOB, result):
        assert "note" not in resource
    assert_valid_fhir(report, fhir_schema_path)


def test_one_observation_per_finding(fhir_schema_path: Path) -> None:
    resources = mapping.observations(ORDER, JOB, RESULT)
    assert [o["id"] for o in resources] == [f"{JOB_ID}-{n}" for n in (1, 2, 3)]
    effusion, opacity, pneumothorax = resources
    assert effusion["status"] == "preliminary"
    assert effusion["code"]["coding"] == [
        {"system": terminology.FINDING_SYSTEM, "code": "Effusion", "display": "Effusion"},
        {"system": "http://snomed.info/sct", "code": "60046008", "display": "Pleural effusion"},
    ]
    assert [c["system"] for c in opacity["code"]["coding"]] == [terminology.FINDING_SYSTEM]  # no SNOMED guess
    assert effusion["valueQuantity"] == {
        "value": 0.8123,
        "unit": "probability",
        "system": "http://unitsofmeasure.org",
        "code": "1",
    }
    interpretation = [o["interpretation"][0]["coding"][0]["code"] for o in resources]
    assert interpretation == ["POS", "NEG", "POS"]
    assert pneumothorax["referenceRange"][0]["high"]["value"] == 0.4
    assert effusion["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{UID}"
    assert effusion["basedOn"] == [{"reference": "ServiceRequest/sr-1"}]
    assert effusion["subject"] == {"reference": "Patient/p1"}
    assert effusion["device"]["identifier"]["value"] == "ab" * 32
    assert effusion["device"]["reference"] == DEVICE_REF
    assert "UNTRAINED PLACEHOLDER" in effusion["note"][0]["text"]
    for resource in resources:
        assert resource["meta"]["security"] == [AIAST]
        assert_valid_fhir(resource, fhir_schema_path)


def test_observation_lookup_by_number() -> None:
    assert mapping.observation(ORDER, JOB, RESULT, 2) == mapping.observations(ORDER, JOB, RESULT)[1]
    assert mapping.observation(ORDER, JOB, RESULT, 0) is None
    assert mapping.observation(ORDER, JOB, RESULT, 4) is None


@pytest.mark.parametrize(
    ("observation_id", "parsed"),
    [
        (f"{JOB_ID}-1", (JOB_ID, 1)),
        (f"{JOB_ID}-12", (JOB_ID, 12)),
        (JOB_ID, None),
        (f"{JOB_ID}-01", None),
        ("-1", None),
    ],
)
def test_parse_observation_id(observation_id: str, parsed: tuple[str, int] | None) -> None:
    assert mapping.parse_observation_id(observation_id) == parsed


def test_subject_given_by_identifier_goes_out_as_a_logical_reference(fhir_schema_path: Path) -> None:
    order = replace(ORDER, patient_ref="urn:example:mrn|MRN-1")
    report = mapping.diagnostic_report(order, JOB, RESULT)
    assert report["subject"] == {"type": "Patient", "identifier": {"system": "urn:example:mrn", "value": "MRN-1"}}
    assert_valid_fhir(report, fhir_schema_path)


def test_the_model_is_a_device_that_every_ai_resource_references(fhir_schema_path: Path) -> None:
    device = mapping.device(TRAINED)
    assert f"Device/{device['id']}" == mapping.device_reference(TRAINED)["reference"]
    assert device["identifier"] == [{"system": terminology.MODEL_SHA256_SYSTEM, "value": "cd" * 32}]
    assert device["deviceName"][0]["name"] == "radtriage-cxr" and device["version"] == [{"value": "1.0.0"}]
    assert_valid_fhir(device, fhir_schema_path)
    result = replace(RESULT, model=TRAINED)
    references = {
        mapping.task_resource(JOB, ORDER, result)["owner"]["reference"],
        *(o["device"]["reference"] for o in mapping.observations(ORDER, JOB, result)),
    }
    assert references == {f"Device/{device['id']}"}


def test_the_provenance_of_a_result(fhir_schema_path: Path) -> None:
    provenance = mapping.provenance(ORDER, JOB, RESULT)
    assert provenance["id"] == JOB_ID
    assert [t["reference"] for t in provenance["target"]] == [
        f"DiagnosticReport/{JOB_ID}",
        *(f"Observation/{JOB_ID}-{n}" for n in (1, 2, 3)),
        f"Task/{JOB_ID}",
    ]
    assert provenance["recorded"].startswith("2025-03-01T08:30:02")
    assert [a["who"] for a in provenance["agent"]] == [{"reference": DEVICE_REF}]
    assert [e["what"] for e in provenance["entity"]] == [
        {"reference": "ImagingStudy/is-1"},
        {"reference": "ServiceRequest/sr-1"},
    ]
    assert_valid_fhir(provenance, fhir_schema_path)
    # An order known only by its study UID (no FHIR ids): the study is named by identifier, no ServiceRequest.
    bare = replace(ORDER, imaging_study_ref=None, service_request_ref=None)
    [entity] = mapping.provenance(bare, JOB, RESULT)["entity"]
    assert entity["what"]["identifier"] == {"system": "urn:dicom:uid", "value": f"urn:oid:{UID}"}


def test_searchset_and_transaction_response_bundles(fhir_schema_path: Path) -> None:
    task = mapping.task_resource(JOB, ORDER, RESULT)
    searchset = mapping.searchset_bundle(
        [task], total=7, base_url="http://h/fhir", links={"self": "http://h/fhir/Task?_count=1&_offset=0"}
    )
    assert searchset["type"] == "searchset" and searchset["total"] == 7
    assert searchset["entry"][0]["fullUrl"] == f"http://h/fhir/Task/{JOB_ID}"
    assert searchset["entry"][0]["search"] == {"mode": "match"}
    assert_valid_fhir(searchset, fhir_schema_path)
    empty = mapping.searchset_bundle([], total=0, base_url="http://h/fhir", links={"self": "http://h/fhir/Task"})
    assert "entry" not in empty
    assert_valid_fhir(empty, fhir_schema_path)
    response = mapping.transaction_response(
        [mapping.EntryResponse("201 Created", f"Task/{JOB_ID}", task, T0)], base_url="http://h/fhir"
    )
    assert response["type"] == "transaction-response"
    assert response["entry"][0]["response"] == {
        "status": "201 Created",
        "location": f"Task/{JOB_ID}",
        "lastModified": "2025-03-01T08:30:00Z",
    }
    assert_valid_fhir(response, fhir_schema_path)


def test_the_schema_check_itself_can_fail(required_fhir_schema_path: Path) -> None:
    """The validator is only worth something if it rejects what R4 rejects (fhir.resources lets codes through)."""
    task = mapping.task_resource(JOB, ORDER, None)
    with pytest.raises(AssertionError, match="status"):
        assert_valid_fhir({**task, "status": "finished"}, required_fhir_schema_path)
    with pytest.raises(AssertionError, match="unexpected"):
        assert_valid_fhir({**task, "colour": "blue"}, required_fhir_schema_path)
