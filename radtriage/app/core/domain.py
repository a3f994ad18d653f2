"""Domain objects shared by every door and adapter.

These are plain frozen dataclasses: they carry no behaviour that depends on a framework, and the doors map
their protocols (FHIR resources, HL7 segments) onto them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Priority(enum.IntEnum):
    """Clinical urgency, ordered so that `max()` gives the more urgent one (FHIR request-priority order)."""

    ROUTINE = 0
    URGENT = 1
    ASAP = 2
    STAT = 3

    @property
    def code(self) -> str:
        """The FHIR `request-priority` code."""
        return self.name.lower()

    @classmethod
    def from_code(cls, code: str) -> Priority:
        try:
            return cls[code.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown priority code {code!r}") from None


class JobState(enum.StrEnum):
    """States of a triage job; the allowed moves are in `pipeline.TRANSITIONS`."""

    RECEIVED = "received"
    QUEUED = "queued"
    FETCHING = "fetching"
    SELECTED = "selected"
    PREPROCESSED = "preprocessed"
    SCORING = "scoring"
    SCORED = "scored"
    PUBLISHING = "publishing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class ImagingOrder:
    """One request to triage one imaging study, whichever door it came through.

    `patient_ref` is an opaque reference (FHIR ``Patient/123`` or an HL7 ``PID-3`` identifier written as
    ``system|value``). It is patient data: never log it.
    """

    study_instance_uid: str
    patient_ref: str
    source: str  # "fhir", "hl7", "demo", ...
    #: Key that makes re-submission idempotent within a source (FHIR resource id, HL7 placer order number).
    source_key: str
    requested_priority: Priority = Priority.ROUTINE
    accession_number: str | None = None
    placer_order_number: str | None = None
    filler_order_number: str | None = None
    procedure_code: str | None = None
    ordering_provider: str | None = None
    service_request_ref: str | None = None  # e.g. "ServiceRequest/abc"
    imaging_study_ref: str | None = None  # e.g. "ImagingStudy/xyz"
    id: str | None = None
    received_at: datetime | None = None


@dataclass(frozen=True)
class InstanceInfo:
    """What the image archive says about one DICOM instance, before any pixels are fetched (QIDO-RS)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    modality: str | None = None
    body_part_examined: str | None = None
    view_position: str | None = None
    series_description: str | None = None
    image_laterality: str | None = None
    sop_class_uid: str | None = None


@dataclass(frozen=True)
class FindingScore:
    """One finding's probability and the operating point at which it counts as positive."""

    label: str
    probability: float
    threshold: float

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold


@dataclass(frozen=True)
class ModelIdentity:
    """Which model produced a result; recorded with every result."""

    name: str
    version: str
    sha256: str
    placeholder: bool = False  # True for the untrained stand-in: every output must say so


@dataclass(frozen=True)
class Heatmap:
    """Where the model looked for one positive finding: a PNG of the heatmap laid over the scored image."""

    label: str
    png: bytes


@dataclass(frozen=True)
class TriageResult:
    """The outcome of scoring one study."""

    job_id: str
    findings: tuple[FindingScore, ...]
    priority: Priority
    model: ModelIdentity
    series_instance_uid: str
    sop_instance_uid: str
    priority_reason: str = ""
    created_at: datetime | None = None
    #: Predicted severity (geographic extent 0-8), None when the model has no severity output.
    severity: float | None = None
    #: Findings the triage policy names but the model cannot assess: reported as "not assessed" on every output.
    not_assessed: tuple[str, ...] = ()
    #: Shadow mode (issue 10): the model's priority was recorded but not acted on. `priority` is then the order's
    #: own priority and `model_priority` what the model and policy would have set.
    shadow: bool = False
    #: The priority the model and policy decided (equal to `priority` when not in shadow mode).
    model_priority: Priority | None = None
    #: Heatmaps of the positive findings, when a caller stores them with the result. The service itself adds them
    #: after publishing (`OrderStore.add_heatmaps`); the store keeps them apart (`heatmap_png`), so a result read
    #: back from the store has none here.
    heatmaps: tuple[Heatmap, ...] = field(default=(), compare=False, repr=False)

    @property
    def positive_findings(self) -> tuple[FindingScore, ...]:
        return tuple(f for f in self.findings if f.positive)


@dataclass(frozen=True)
class Job:
    """The database's view of where one order is in the pipeline."""

    id: str
    order_id: str
    state: JobState
    priority: Priority
    attempts: int = 0
    failure_code: str | None = None
    failure_detail: str | None = None
    retryable: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    #: When a job that failed for a retryable reason will be tried again (radtriage.app.retry); None when no
    #: automatic retry is planned (not failed, not retryable, or its retry window has ended).
    next_attempt_at: datetime | None = None

    @property
    def waiting_to_retry(self) -> bool:
        """Failed for now, but planned to run again: to clients it is still in progress."""
        return self.state is JobState.FAILED and self.next_attempt_at is not None


@dataclass(frozen=True)
class JobEvent:
    """One state transition. Audit, metrics and FHIR Task.status all derive from these."""

    job_id: str
    from_state: JobState
    to_state: JobState
    at: datetime
    reason_code: str | None = None
    detail: str | None = None
    data: dict[str, str] = field(default_factory=dict)
