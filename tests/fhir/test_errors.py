"""ErrorCode → OperationOutcome + HTTP status."""

from __future__ import annotations

from pathlib import Path

import pytest

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.fhir import terminology
from radtriage.fhir.errors import ERROR_HTTP, http_outcome, operation_outcome
from tests.support.fhir_validation import assert_valid_fhir


@pytest.mark.parametrize(
    ("code", "status", "issue_code"),
    [
        (ErrorCode.INVALID_INPUT, 400, "invalid"),
        (ErrorCode.UNSUPPORTED, 422, "not-supported"),
        (ErrorCode.NOT_FOUND, 404, "not-found"),
        (ErrorCode.CONFLICT, 409, "conflict"),
        (ErrorCode.STUDY_NOT_FOUND, 422, "not-found"),
        (ErrorCode.NOT_A_CHEST, 422, "business-rule"),
        (ErrorCode.PACS_UNAVAILABLE, 503, "transient"),
        (ErrorCode.MODEL_UNAVAILABLE, 503, "transient"),
        (ErrorCode.INTERNAL, 500, "exception"),
    ],
)
def test_error_code_to_status_and_issue(code: ErrorCode, status: int, issue_code: str, fhir_schema_path: Path) -> None:
    outcome, http_status = operation_outcome(TriageError(code, "something specific"))
    [issue] = outcome["issue"]
    assert http_status == status
    assert issue["code"] == issue_code
    assert issue["details"]["coding"] == [
        {"system": terminology.TRIAGE_ERROR_SYSTEM, "code": code.value, "display": code.display}
    ]
    assert "expression" not in issue
    assert_valid_fhir(outcome, fhir_schema_path)


def test_every_error_code_has_a_mapping() -> None:
    assert set(ERROR_HTTP) == set(ErrorCode)


def test_location_becomes_the_expression() -> None:
    outcome, _ = operation_outcome(TriageError(ErrorCode.INVALID_INPUT, "bad", location="ImagingStudy.identifier"))
    assert outcome["issue"][0]["expression"] == ["ImagingStudy.identifier"]
    assert outcome["issue"][0]["diagnostics"] == "bad"


def test_internal_errors_say_nothing_specific() -> None:
    outcome, status = operation_outcome(TriageError(ErrorCode.INTERNAL, "psycopg: column patient_ref = 'P123'"))
    assert status == 500
    assert outcome["issue"][0]["diagnostics"] == ErrorCode.INTERNAL.display
    assert outcome["issue"][0]["severity"] == "fatal"


@pytest.mark.parametrize(("status", "issue_code"), [(404, "not-found"), (405, "not-supported"), (415, "not-supported")])
def test_http_outcomes(status: int, issue_code: str, fhir_schema_path: Path) -> None:
    outcome, http_status = http_outcome(status, "fixed text")
    assert http_status == status
    assert outcome["issue"][0]["code"] == issue_code
    assert_valid_fhir(outcome, fhir_schema_path)
