"""AI transparency: the AIAST label, the model as a Device, and the Provenance of AI-generated resources."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from radtriage.app.core.domain import ModelIdentity
from radtriage.compliance.provenance import (
    ai_security_label,
    device_id,
    device_resource,
    label_ai_asserted,
    provenance_resource,
)
from tests.support.fhir_validation import assert_valid_fhir

MODEL = ModelIdentity("radtriage-densenet121", "1.2.0", "ab" * 32)


def test_the_label_is_hl7_aiast() -> None:
    label = ai_security_label()
    assert (label.system, label.code) == ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "AIAST")
    assert label.display == "Artificial Intelligence asserted"


def test_labelling_adds_aiast_once_to_dicts_and_models(fhir_schema_path: Path) -> None:
    resource = {"resourceType": "Observation", "status": "preliminary", "code": {"text": "finding"}}
    label_ai_asserted(resource)
    label_ai_asserted(resource)
    assert [s["code"] for s in resource["meta"]["security"]] == ["AIAST"]  # type: ignore[index]
    assert_valid_fhir(resource, fhir_schema_path)
    report = DiagnosticReport.model_validate(
        {
            "resourceType": "DiagnosticReport",
            "status": "preliminary",
            "code": {"text": "triage"},
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]},
        }
    )
    label_ai_asserted(label_ai_asserted(report))
    assert report.meta is not None and [s.code for s in report.meta.security or []] == ["N", "AIAST"]


def test_the_model_device_names_version_and_weights_hash(fhir_schema_path: Path) -> None:
    device = device_resource(MODEL).model_dump(mode="json", exclude_none=True)
    assert device["id"] == device_id(MODEL) == "model-" + "ab" * 16
    assert device["identifier"] == [
        {"system": "https://radtriage.example/fhir/NamingSystem/model-sha256", "value": "ab" * 32}
    ]
    assert device["deviceName"] == [{"name": "radtriage-densenet121", "type": "model-name"}]
    assert device["version"] == [{"value": "1.2.0"}]
    assert "meta" not in device
    assert_valid_fhir(device, fhir_schema_path)
    placeholder = device_resource(ModelIdentity("placeholder", "0", "cd" * 32, placeholder=True))
    dumped = placeholder.model_dump(mode="json", exclude_none=True)
    assert dumped["meta"]["tag"][0]["code"] == "untrained-placeholder" and "placeholder" in dumped["note"][0]["text"]
    assert_valid_fhir(dumped, fhir_schema_path)


def test_the_provenance_ties_outputs_to_the_model_and_inputs(fhir_schema_path: Path) -> None:
    recorded = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    provenance = provenance_resource(
        ["DiagnosticReport/r1", "Observation/o1", "Task/t1"],
        f"Device/{device_id(MODEL)}",
        study_ref="urn:dicom:uid|urn:oid:1.2.840.1",
        order_ref="ServiceRequest/sr1",
        recorded=recorded,
        resource_id="p1",
    ).model_dump(mode="json", exclude_none=True)
    assert [t["reference"] for t in provenance["target"]] == ["DiagnosticReport/r1", "Observation/o1", "Task/t1"]
    assert provenance["recorded"].startswith("2025-03-01T09:00:00")
    (agent,) = provenance["agent"]
    assert (
        agent["who"] == {"reference": f"Device/{device_id(MODEL)}"} and agent["type"]["coding"][0]["code"] == "author"
    )
    assert provenance["entity"] == [
        {
            "role": "source",
            "what": {"identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.840.1"}, "type": "ImagingStudy"},
        },
        {"role": "source", "what": {"reference": "ServiceRequest/sr1"}},
    ]
    assert provenance["reason"][0]["coding"][0]["code"] == "AIAST"
    assert_valid_fhir(provenance, fhir_schema_path)
    with pytest.raises(ValueError):
        provenance_resource([], "Device/x")
