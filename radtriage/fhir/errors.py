"""Errors on the FHIR wire: every failure is an OperationOutcome (FHIR R4 http 3.1.0.1.4 and 3.1.0.4.1).

`operation_outcome` maps the core's `TriageError` to an OperationOutcome and an HTTP status;
`http_outcome` does the same for HTTP-level problems that have no `ErrorCode` (unknown route, wrong method,
wrong media type). Both put only the error's code, its person-readable detail (which the core promises holds no
patient data) and the FHIRPath location in the body: never a stack trace, never a value from the request.

=================  ===========  ==============  ===================================================
ErrorCode          HTTP status  issue.code      why
=================  ===========  ==============  ===================================================
invalid-input      400          invalid         content cannot be parsed or breaks FHIR rules
unsupported        422          not-supported   valid FHIR that this service does not act on
not-found          404          not-found       no resource with that id
conflict           409          conflict        the job is not in a state that allows the request
study-not-found    422          not-found       the order names a study the archive does not hold
not-a-radiograph,  422          business-rule   the study cannot be analysed; not a guess
not-a-chest, ...
pacs-unavailable,  503          transient       retry later (a ``Retry-After`` header is added)
model-unavailable
internal           500          exception       a bug; details are in the server log only
=================  ===========  ==============  ===================================================

``issue.details`` carries the ErrorCode in radtriage's ``triage-error`` CodeSystem (see `terminology`), the
same code a failed Task has in ``statusReason``.
"""

from __future__ import annotations

from typing import Any, Final

from fhir.resources.R4B.operationoutcome import OperationOutcome

from ..app.core.errors import ErrorCode, TriageError
from .terminology import TRIAGE_ERROR_SYSTEM

JsonObject = dict[str, Any]

#: ErrorCode → (HTTP status, OperationOutcome issue.code from the R4 issue-type value set).
ERROR_HTTP: Final[dict[ErrorCode, tuple[int, str]]] = {
    ErrorCode.INVALID_INPUT: (400, "invalid"),
    ErrorCode.UNSUPPORTED: (422, "not-supported"),
    ErrorCode.NOT_FOUND: (404, "not-found"),
    ErrorCode.CONFLICT: (409, "conflict"),
    ErrorCode.STUDY_NOT_FOUND: (422, "not-found"),
    ErrorCode.NOT_A_RADIOGRAPH: (422, "business-rule"),
    ErrorCode.NOT_A_CHEST: (422, "business-rule"),
    ErrorCode.LATERAL_ONLY: (422, "business-rule"),
    ErrorCode.UNREADABLE_IMAGE: (422, "business-rule"),
    ErrorCode.PACS_UNAVAILABLE: (503, "transient"),
    ErrorCode.MODEL_UNAVAILABLE: (503, "transient"),
    ErrorCode.INTERNAL: (500, "exception"),
    ErrorCode.OUTSIDE_INTENDED_USE: (422, "business-rule"),
    ErrorCode.IMAGE_QUALITY: (422, "business-rule"),
    ErrorCode.OUT_OF_DISTRIBUTION: (422, "business-rule"),
}

#: HTTP statuses raised below the service (routing, content negotiation) → issue.code.
_HTTP_ISSUE: Final[dict[int, str]] = {
    400: "invalid",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    500: "exception",
    503: "transient",
}

#: Seconds a client should wait before retrying a transient failure.
RETRY_AFTER_SECONDS: Final = 30


def operation_outcome(error: TriageError) -> tuple[JsonObject, int]:
    """The OperationOutcome for `error` and the HTTP status to send it with."""
    status, issue_code = ERROR_HTTP.get(error.code, (500, "exception"))
    detail = ErrorCode.INTERNAL.display if error.code is ErrorCode.INTERNAL else error.detail
    issue: JsonObject = {
        "severity": "fatal" if status == 500 else "error",
        "code": issue_code,
        "details": {
            "coding": [{"system": TRIAGE_ERROR_SYSTEM, "code": error.code.value, "display": error.code.display}]
        },
        "diagnostics": detail,
    }
    if error.location:
        issue["expression"] = [error.location]
    return _build([issue]), status


def http_outcome(status: int, diagnostics: str) -> tuple[JsonObject, int]:
    """An OperationOutcome for an HTTP-level failure (`diagnostics` must be a fixed text, not request data)."""
    issue = {
        "severity": "fatal" if status >= 500 else "error",
        "code": _HTTP_ISSUE.get(status, "exception" if status >= 500 else "invalid"),
        "diagnostics": diagnostics,
    }
    return _build([issue]), status


def _build(issues: list[JsonObject]) -> JsonObject:
    built: JsonObject = OperationOutcome.model_validate(
        {"resourceType": "OperationOutcome", "issue": issues}
    ).model_dump(mode="json", exclude_none=True)
    return built
