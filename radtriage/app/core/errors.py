"""One error model for the whole service.

Every failure that can reach a client is a `TriageError` with a stable `code`. The doors translate the code
into their protocol (FHIR OperationOutcome + HTTP status, HL7 ACK with an ERR segment) and a failed job
records it as the Task's coded `statusReason`. Messages must never contain patient data.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable, machine-readable reasons. Add new ones at the end; clients may depend on the values."""

    # The request itself is wrong (client must change it; do not retry).
    INVALID_INPUT = "invalid-input"
    UNSUPPORTED = "unsupported"
    NOT_FOUND = "not-found"
    CONFLICT = "conflict"
    # The study cannot be analysed (the clinical answer is "not analysed", never a guess).
    STUDY_NOT_FOUND = "study-not-found"
    NOT_A_RADIOGRAPH = "not-a-radiograph"
    NOT_A_CHEST = "not-a-chest"
    LATERAL_ONLY = "lateral-only"
    UNREADABLE_IMAGE = "unreadable-image"
    # The service or a system it depends on is not able to work now (retry later).
    PACS_UNAVAILABLE = "pacs-unavailable"
    MODEL_UNAVAILABLE = "model-unavailable"
    INTERNAL = "internal"
    # Quality gates before scoring (added after the first release: codes are appended, never renumbered).
    OUTSIDE_INTENDED_USE = "outside-intended-use"
    IMAGE_QUALITY = "image-quality"
    OUT_OF_DISTRIBUTION = "out-of-distribution"

    @property
    def display(self) -> str:
        return _DISPLAY[self]


_DISPLAY = {
    ErrorCode.INVALID_INPUT: "The request is not valid",
    ErrorCode.UNSUPPORTED: "The request is not supported",
    ErrorCode.NOT_FOUND: "The resource does not exist",
    ErrorCode.CONFLICT: "The request conflicts with the current state",
    ErrorCode.STUDY_NOT_FOUND: "The imaging study was not found in the image archive",
    ErrorCode.NOT_A_RADIOGRAPH: "The study holds no radiograph (CR/DX); not analysed",
    ErrorCode.NOT_A_CHEST: "The study is not a chest radiograph; not analysed",
    ErrorCode.LATERAL_ONLY: "The study has no frontal (PA/AP) chest view; not analysed",
    ErrorCode.UNREADABLE_IMAGE: "The image pixels could not be read; not analysed",
    ErrorCode.PACS_UNAVAILABLE: "The image archive could not be reached",
    ErrorCode.MODEL_UNAVAILABLE: "The scoring model is not available",
    ErrorCode.INTERNAL: "Internal error",
    ErrorCode.OUTSIDE_INTENDED_USE: "The study is outside the model's intended use (e.g. a child); not analysed",
    ErrorCode.IMAGE_QUALITY: "The image is too small, too shallow or too flat to score reliably; not analysed",
    ErrorCode.OUT_OF_DISTRIBUTION: "The image does not look like the chest radiographs the model knows; not analysed",
}

#: Codes for which trying again later may succeed without anyone changing the input.
RETRYABLE_CODES = frozenset({ErrorCode.PACS_UNAVAILABLE, ErrorCode.MODEL_UNAVAILABLE, ErrorCode.INTERNAL})


def waiting_text(failure_code: str | None) -> str:
    """What a job waiting for an automatic retry waits for, in words (FHIR Task.businessStatus, the worklist)."""
    return {
        ErrorCode.PACS_UNAVAILABLE.value: "waiting for PACS",
        ErrorCode.MODEL_UNAVAILABLE.value: "waiting for the model",
    }.get(failure_code or "", "waiting to retry")


class TriageError(Exception):
    """A failure with a stable code. `detail` is for people and must not contain patient data.

    `location` names the offending element where there is one (a FHIRPath such as
    ``ImagingStudy.identifier`` or an HL7 location such as ``OBR-4``) so doors can point at it.
    """

    def __init__(
        self,
        code: ErrorCode,
        detail: str | None = None,
        *,
        retryable: bool | None = None,
        location: str | None = None,
    ) -> None:
        self.code = code
        self.detail = detail or code.display
        self.retryable = code in RETRYABLE_CODES if retryable is None else retryable
        self.location = location
        super().__init__(f"{code.value}: {self.detail}")
