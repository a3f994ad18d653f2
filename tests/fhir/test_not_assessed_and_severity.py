"""Issue 10 outbound: "not assessed" Observations (dataAbsentReason) and the severity Observation, linked from the
DiagnosticReport, each checked against the R4 JSON Schema; and read back through the REST API."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from radtriage.app.factory import create_app
from radtriage.fhir import mapping, terminology
from radtriage.model.scorer import XrvScorer
from tests.fhir.conftest import Studies, running_components
from tests.fhir.test_api import fhir_json, get, imaging_study, poll_task, post
from tests.fhir.test_mapping_outbound import JOB, JOB_ID, ORDER, RESULT, TRAINED
from tests.support.fhir_validation import assert_valid_fhir

SCORED = replace(RESULT, model=TRAINED, not_assessed=("Consolidation", "Pneumothorax"), severity=3.456)
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"


def test_each_not_assessed_finding_is_an_observation_without_a_value(fhir_schema_path: Path) -> None:
    found = mapping.observations(ORDER, JOB, SCORED)
    assert len(found) == len(SCORED.findings) + 2 + 1
    absent = [o for o in found if "dataAbsentReason" in o]
    assert [o["code"]["coding"][0]["code"] for o in absent] == ["Consolidation", "Pneumothorax"]
    for observation in absent:
        assert not any(key.startswith("value") for key in observation)  # R4 obs-6: no value with a reason
        assert "interpretation" not in observation  # neither positive nor negative
        reason = observation["dataAbsentReason"]
        assert reason["coding"] == [{"system": DATA_ABSENT, "code": "not-performed", "display": "Not Performed"}]
        assert "does not assess" in reason["text"] and "radtriage-cxr 1.0.0" in reason["text"]
        assert observation["device"]["identifier"]["value"] == TRAINED.sha256
        assert_valid_fhir(observation, fhir_schema_path)
    # Pneumothorax has a SNOMED CT code: the not-assessed Observation carries it like an assessed one would.
    pneumothorax = absent[1]["code"]["coding"]
    assert {c["system"] for c in pneumothorax} == {terminology.FINDING_SYSTEM, terminology.SNOMED_SYSTEM}


def test_severity_is_an_observation_with_a_quantity_on_the_0_to_8_scale(fhir_schema_path: Path) -> None:
    severity = mapping.observations(ORDER, JOB, SCORED)[-1]
    assert severity["code"]["coding"][0]["code"] == "severity-geographic-extent"
    assert severity["valueQuantity"] == {
        "value": 3.46, "unit": "score", "system": "http://unitsofmeasure.org", "code": "{score}",
    }  # fmt: skip
    assert severity["referenceRange"][0]["low"]["value"] == 0 and severity["referenceRange"][0]["high"]["value"] == 8
    assert_valid_fhir(severity, fhir_schema_path)


def test_the_report_links_every_observation_and_says_both_in_its_conclusion(fhir_schema_path: Path) -> None:
    report = mapping.diagnostic_report(ORDER, JOB, SCORED)
    linked = [r["reference"] for r in report["result"]]
    assert linked == [f"Observation/{o['id']}" for o in mapping.observations(ORDER, JOB, SCORED)]
    assert [r["display"] for r in report["result"]][-3:] == [
        "Consolidation (not assessed)", "Pneumothorax (not assessed)", terminology.SEVERITY_CODE[1],
    ]  # fmt: skip
    assert "Not assessed (this model has no output for them): Consolidation, Pneumothorax." in report["conclusion"]
    assert "Radiographic severity (geographic extent 0-8): 3.5." in report["conclusion"]
    assert_valid_fhir(report, fhir_schema_path)
    # Provenance covers them too: the model authored every one.
    assert set(linked) <= set(mapping.provenance_targets(JOB, SCORED))


def test_without_not_assessed_or_severity_nothing_is_added() -> None:
    plain = replace(SCORED, not_assessed=(), severity=None)
    assert len(mapping.observations(ORDER, JOB, plain)) == len(plain.findings)
    assert mapping.observation(ORDER, JOB, plain, len(plain.findings) + 1) is None
    assert "Not assessed" not in mapping.diagnostic_report(ORDER, JOB, plain)["conclusion"]


def test_observation_numbers_past_the_last_one_are_not_found() -> None:
    count = len(SCORED.findings) + 3
    assert mapping.observation(ORDER, JOB, SCORED, count) is not None
    assert mapping.observation(ORDER, JOB, SCORED, count + 1) is None
    assert mapping.observation(ORDER, JOB, SCORED, 0) is None
    assert mapping.parse_observation_id(f"{JOB_ID}-{count}") == (JOB_ID, count)


def test_the_api_serves_the_not_assessed_observation(
    tmp_path: Path, studies: Studies, fhir_scorer: XrvScorer, fhir_schema_path: Path
) -> None:
    """The placeholder model has no "Tuberculosis" output: a site policy naming it makes it "not assessed"."""
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rules]]\nfindings = ["Tuberculosis"]\npriority = "urgent"\n', encoding="utf-8")
    with running_components(tmp_path, studies, fhir_scorer, policy=str(policy), shadow_mode="off") as built:
        client = create_app(components=built).test_client()
        task = fhir_json(post(client, "/ImagingStudy", imaging_study(studies.chest)), 201, fhir_schema_path)
        task = poll_task(client, task["id"], fhir_schema_path)
        assert task["status"] == "completed", task.get("statusReason")
        report = get(client, f"/fhir/DiagnosticReport/{task['id']}", fhir_schema_path)
        assert len(report["result"]) == len(fhir_scorer.labels) + 1  # the placeholder has no severity output
        absent_ref = report["result"][-1]
        assert absent_ref["display"] == "Tuberculosis (not assessed)"
        observation = get(client, f"/fhir/{absent_ref['reference']}", fhir_schema_path)
        assert observation["dataAbsentReason"]["coding"][0]["code"] == "not-performed"
        assert "Not assessed" in report["conclusion"] and "Tuberculosis" in report["conclusion"]
