"""Ports: what the core needs from the outside world, as `typing.Protocol`s.

Each port has a production adapter and a real lightweight one for development and tests:

=================  ==========================================  =======================================
port               production                                  embedded default / tests
=================  ==========================================  =======================================
OrderStore         SQLAlchemy on PostgreSQL                    SQLAlchemy on SQLite (WAL)
StudySource        DICOMweb (QIDO-RS / WADO-RS)                a local folder of DICOM files
ImageScorer        torchxrayvision-based model from a registry  same, with the placeholder model
JobQueue           Celery with a Redis broker                  in-process priority queue and threads
ResultPublisher    HL7 outbox to the RIS, ...                  none (FHIR results are read, not pushed)
=================  ==========================================  =======================================
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from .domain import (
    FindingScore,
    Heatmap,
    ImagingOrder,
    InstanceInfo,
    Job,
    JobEvent,
    JobState,
    ModelIdentity,
    Priority,
    TriageResult,
)


class Clock(Protocol):
    def now(self) -> datetime: ...


class OrderStore(Protocol):
    """The source of truth for orders, jobs and results. Every method is one transaction."""

    def add_order(
        self, order: ImagingOrder, job: Job, event: JobEvent, *later: JobEvent
    ) -> tuple[ImagingOrder, Job, bool]:
        """Store a new order with its job; if (source, source_key) exists, return the stored one and False.

        `later` are the job's next moves (received → queued), stored in the same transaction."""
        ...

    def get_order(self, order_id: str) -> ImagingOrder | None: ...

    def update_order(self, order: ImagingOrder, *, job_states: Sequence[JobState]) -> tuple[ImagingOrder, Job]:
        """Replace a stored order's fields (found by `order.id`) and raise its job's priority to the order's.

        Only while the job is in one of `job_states` (checked in the same transaction); else CONFLICT.
        """
        ...

    def find_order(self, source: str, source_key: str) -> ImagingOrder | None: ...

    def get_job(self, job_id: str) -> Job | None: ...

    def job_for_order(self, order_id: str) -> Job | None: ...

    def record_transition(
        self, event: JobEvent, *, priority: Priority | None = None, result: TriageResult | None = None
    ) -> Job:
        """Move a job from `event.from_state` to `event.to_state`, store the event (and result) atomically.

        Raises `TriageError(CONFLICT)` when the job is no longer in `event.from_state` (another worker moved it).
        A `priority` lower than the job's current one is ignored: the store never lowers a job's priority.
        """
        ...

    def record_transitions(
        self, path: Sequence[JobEvent], *, priority: Priority | None = None, result: TriageResult | None = None
    ) -> Job:
        """`record_transition` for consecutive moves of one job, in one transaction; each event is stored and
        audited as its own. The compare-and-set is on the first event's from-state."""
        ...

    def get_result(self, job_id: str) -> TriageResult | None: ...

    def events(self, job_id: str) -> list[JobEvent]: ...

    def list_jobs(
        self,
        *,
        states: Sequence[JobState] | None = None,
        priorities: Sequence[Priority] | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[Job], int]:
        """Jobs in worklist order (most urgent first, then most severe, then oldest) and the total count matching."""
        ...

    def list_results(
        self,
        *,
        service_request_ref: str | None = None,
        patient_ref: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[TriageResult], int]: ...

    def unfinished_job_ids(self) -> list[str]: ...

    def add_heatmaps(self, job_id: str, heatmaps: Sequence[Heatmap]) -> None:
        """Store the heatmaps of a stored result (replacing any it had)."""
        ...

    def heatmap_png(self, job_id: str, label: str) -> bytes | None:
        """The stored heatmap overlay of one finding of a result, or None."""
        ...

    def heatmap_labels(self, job_id: str) -> list[str]:
        """The findings of a result that have a stored heatmap, in the result's label order."""
        ...

    def find_model(self, sha256_prefix: str) -> ModelIdentity | None:
        """A model that produced a stored result, by the start of its weights' sha256 (models outlive reloads)."""
        ...


class StudySource(Protocol):
    """Where the pixels come from: a PACS over DICOMweb, or a folder."""

    def find_instances(self, study_instance_uid: str) -> list[InstanceInfo]:
        """Metadata of every instance in the study (QIDO-RS). Raises STUDY_NOT_FOUND / PACS_UNAVAILABLE."""
        ...

    def retrieve_instance(self, instance: InstanceInfo) -> bytes:
        """The DICOM Part 10 bytes of one instance (WADO-RS)."""
        ...


class PreparedImage(Protocol):
    """An image decoded and preprocessed for the model; opaque to the core."""


class ImageScorer(Protocol):
    """The model behind a port, so the web and MLLP processes need no torch."""

    @property
    def identity(self) -> ModelIdentity: ...

    @property
    def labels(self) -> tuple[str, ...]:
        """The findings this model assesses; a finding the policy names but this lacks is "not assessed"."""
        ...

    def prepare(self, dicom_bytes: bytes) -> PreparedImage:
        """Decode and preprocess; raise UNREADABLE_IMAGE / NOT_A_RADIOGRAPH / NOT_A_CHEST when it cannot."""
        ...

    def score(self, image: PreparedImage) -> list[FindingScore]: ...

    def severity(self, image: PreparedImage) -> float | None:
        """Predicted radiographic severity on the geographic-extent scale 0-8 (Cohen et al. 2020), or None when
        the model has no severity output. Used to order studies within one priority, never to set a priority."""
        ...

    def explain(self, image: PreparedImage, labels: Sequence[str]) -> list[Heatmap]:
        """A heatmap overlay (PNG) per label, for the findings the score called positive."""
        ...


class InstanceSelector(Protocol):
    def __call__(self, instances: Sequence[InstanceInfo]) -> InstanceInfo:
        """The instance to score, or raise NOT_A_RADIOGRAPH / NOT_A_CHEST / LATERAL_ONLY."""
        ...


class TriagePolicy(Protocol):
    def decide(self, findings: Sequence[FindingScore], requested: Priority) -> tuple[Priority, str]:
        """The priority for a scored study and a short reason. Must never return less than `requested`."""
        ...

    def labels_named(self) -> frozenset[str]:
        """Every finding a rule names; those the model lacks are reported as "not assessed"."""
        ...


class ShadowGate(Protocol):
    """Whether results of a model are only recorded (shadow mode) rather than acted on.

    Returns None when the model may set priorities, else the reason it may not (no site validation recorded
    for it, an operator's override, the site's score distribution drifting from its validation)."""

    def __call__(self, model: ModelIdentity) -> str | None: ...


class JobQueue(Protocol):
    """Carries job ids only; the database holds the state, so every stage can be re-run.

    Jobs are served by priority (stat first) with ageing; see `radtriage.app.jobs`. A second delivery of the same
    id is harmless: the service's compare-and-set claim lets only one worker run a job.
    """

    def enqueue(self, job_id: str, priority: Priority = Priority.ROUTINE) -> None:
        """Queue a scoring job; enqueuing a waiting job again at a higher priority moves it up."""
        ...

    def enqueue_explanation(self, job_id: str) -> None:
        """Queue the heatmaps of a scored job: served after every scoring job, so they never delay a priority."""
        ...


class EventListener(Protocol):
    """Receives each job event after it is committed (audit, metrics, notifications)."""

    def __call__(self, event: JobEvent) -> None: ...


class ResultPublisher(Protocol):
    """Pushes a finished result somewhere (the RIS over HL7, a FHIR server, ...)."""

    def publish(self, order: ImagingOrder, result: TriageResult) -> None: ...
