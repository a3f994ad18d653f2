"""Read-only queries the pages need, in one round trip each: the worklist rows and the operational figures.

The order store answers the doors' questions one job at a time; a worklist needs orders, jobs and results
together, filtered and searched, so it reads the same tables directly (never writes them).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, case, func, or_, select

from ..app.core.domain import FindingScore, JobState, Priority
from ..app.storage.database import as_utc as _utc
from ..app.storage.order_store import worklist_order
from ..app.storage.tables import job_events, jobs, orders, results
from ..app.storage.web_tables import study_reading


class Status(StrEnum):
    """What a radiologist needs to know about a job's state."""

    QUEUED = "queued"
    SCORING = "scoring"
    DONE = "done"
    NOT_ANALYSED = "not-analysed"
    CANCELLED = "cancelled"

    @classmethod
    def of(cls, state: JobState) -> Status:
        if state in (JobState.RECEIVED, JobState.QUEUED):
            return cls.QUEUED
        if state in (JobState.FETCHING, JobState.SELECTED, JobState.PREPROCESSED, JobState.SCORING):
            return cls.SCORING
        if state in (JobState.SCORED, JobState.PUBLISHING, JobState.COMPLETED):
            return cls.DONE
        if state is JobState.FAILED:
            return cls.NOT_ANALYSED
        return cls.CANCELLED

    @property
    def states(self) -> tuple[JobState, ...]:
        return tuple(s for s in JobState if Status.of(s) is self)

    @property
    def label(self) -> str:
        return {"not-analysed": "not analysed"}.get(self.value, self.value)


#: Why a study was not analysed, in words a radiologist reads (keys: `radtriage.app.core.errors.ErrorCode`).
FAILURE_TEXT: dict[str, str] = {
    "study-not-found": "the image archive does not have the study",
    "not-a-radiograph": "not a radiograph (CR/DX)",
    "not-a-chest": "not a chest examination",
    "lateral-only": "no frontal (PA/AP) view",
    "unreadable-image": "the image could not be read",
    "pacs-unavailable": "the image archive did not answer",
    "model-unavailable": "the model is unavailable",
    "invalid-input": "the order is incomplete",
    "internal": "an internal error (see the service log)",
}


def failure_text(code: str | None) -> str:
    if not code:
        return "reason not recorded"
    return FAILURE_TEXT.get(code, code)


@dataclass(frozen=True)
class WorklistRow:
    job_id: str
    priority: Priority
    requested_priority: Priority
    state: JobState
    status: Status
    received_at: datetime
    finished_at: datetime | None
    patient_ref: str
    accession_number: str | None
    failure_code: str | None
    findings: tuple[FindingScore, ...]
    model_version: str | None
    placeholder_model: bool
    severity: float | None = None
    not_assessed: tuple[str, ...] = ()
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    read_by: str | None = None
    read_at: datetime | None = None
    study_instance_uid: str = ""
    #: When an automatic retry is planned (radtriage.app.retry): the study is waiting, not given up.
    next_attempt_at: datetime | None = None
    #: In shadow mode (issue 10), the priority the model would have set when it is above the one in force.
    shadow_priority: Priority | None = None

    @property
    def positive_findings(self) -> tuple[FindingScore, ...]:
        """Flagged findings, highest score first."""
        return tuple(sorted((f for f in self.findings if f.positive), key=lambda f: -f.probability))

    @property
    def other_findings(self) -> tuple[FindingScore, ...]:
        """Findings below their threshold, highest score first."""
        return tuple(sorted((f for f in self.findings if not f.positive), key=lambda f: -f.probability))

    @property
    def is_read(self) -> bool:
        return self.read_at is not None

    @property
    def waiting_ended_at(self) -> datetime | None:
        times = [t for t in (self.claimed_at, self.read_at) if t is not None]
        return min(times) if times else None

    def waiting_seconds(self, now: datetime) -> int:
        """From arrival until a radiologist claimed or read the study (until `now` while nobody has)."""
        end = self.waiting_ended_at or now
        return max(0, int((end - self.received_at).total_seconds()))


#: Columns the worklist can be sorted by (``sort=`` in the page's address); the default is `PRIORITY`.
SORTS = ("priority", "waiting", "arrived", "accession", "severity", "status")


@dataclass(frozen=True)
class WorklistQuery:
    """Filters: `status` (a `Status`), `priority` (a code), `search` (accession, or the start of the job id),
    `flagged_only` (only studies with a positive finding), `include_read` (read studies too, shown greyed).
    `sort` is one of `SORTS`; `descending` flips it."""

    status: Status | None = None
    priority: Priority | None = None
    search: str = ""
    flagged_only: bool = False
    include_read: bool = False
    sort: str = "priority"
    descending: bool = False
    limit: int = 200


def _findings(raw: Any) -> tuple[FindingScore, ...]:
    if not raw:
        return ()
    return tuple(FindingScore(f["label"], float(f["probability"]), float(f["threshold"])) for f in raw)


def _ordering(query: WorklistQuery) -> tuple[Any, ...]:
    """ORDER BY for the chosen column. The default is the reading order: priority, then severity, then waiting
    time (`worklist_order`); `descending` reverses the chosen column only, and ties keep the reading order."""
    if query.sort not in SORTS[1:]:  # "priority": descending puts the least urgent first
        return (jobs.c.priority.asc(), *worklist_order()[1:]) if query.descending else worklist_order()

    def direction(column: Any, natural_descending: bool = False) -> Any:
        return column.desc() if query.descending != natural_descending else column.asc()

    still_waiting = case((func.coalesce(study_reading.c.claimed_at, study_reading.c.read_at).is_(None), 0), else_=1)
    no_severity = case((results.c.severity.is_(None), 1), else_=0)
    chosen: tuple[Any, ...] = {
        # Longest waiting first: studies nobody has taken before taken ones, then the earliest arrival.
        "waiting": (direction(still_waiting), direction(orders.c.received_at)),
        "arrived": (direction(orders.c.received_at, natural_descending=True),),
        "accession": (direction(orders.c.accession_number),),
        "severity": (no_severity, direction(results.c.severity, natural_descending=True)),
        "status": (direction(jobs.c.state),),
    }[query.sort]
    return (*chosen, *worklist_order())


def worklist(engine: Engine, query: WorklistQuery) -> tuple[list[WorklistRow], int]:
    """Rows in reading order (or the chosen `sort`), and how many match in all."""
    statement = (
        select(
            jobs.c.id,
            jobs.c.priority,
            jobs.c.state,
            jobs.c.failure_code,
            jobs.c.updated_at,
            jobs.c.next_attempt_at,
            orders.c.requested_priority,
            orders.c.received_at,
            orders.c.patient_ref,
            orders.c.accession_number,
            orders.c.study_instance_uid,
            results.c.findings,
            results.c.model_version,
            results.c.model_placeholder,
            results.c.severity,
            results.c.not_assessed,
            results.c.shadow,
            results.c.model_priority,
            study_reading.c.claimed_by,
            study_reading.c.claimed_at,
            study_reading.c.read_by,
            study_reading.c.read_at,
        )
        .join(orders, orders.c.id == jobs.c.order_id)
        .outerjoin(results, results.c.job_id == jobs.c.id)
        .outerjoin(study_reading, study_reading.c.job_id == jobs.c.id)
    )
    if query.status is not None:
        statement = statement.where(jobs.c.state.in_([s.value for s in query.status.states]))
    if query.priority is not None:
        statement = statement.where(jobs.c.priority == int(query.priority))
    if not query.include_read:
        statement = statement.where(study_reading.c.read_at.is_(None))
    term = query.search.strip()
    if term:
        statement = statement.where(
            or_(
                orders.c.accession_number.ilike(f"%{_escape_like(term)}%", escape="\\"),
                jobs.c.id.startswith(term, autoescape=True),
            )
        )
    with engine.connect() as connection:
        total = connection.execute(select(func.count()).select_from(statement.subquery())).scalar_one()
        rows = connection.execute(statement.order_by(*_ordering(query)).limit(max(1, query.limit))).all()
    out = [_row(row) for row in rows]
    if query.flagged_only:
        out = [row for row in out if row.positive_findings]
    return out, total if not query.flagged_only else len(out)


def _row(row: Any) -> WorklistRow:
    state = JobState(row.state)
    return WorklistRow(
        job_id=row.id,
        priority=Priority(row.priority),
        requested_priority=Priority(row.requested_priority),
        state=state,
        status=Status.of(state),
        received_at=_utc(row.received_at) or datetime.now(UTC),
        finished_at=_utc(row.updated_at) if state.is_terminal and row.next_attempt_at is None else None,
        patient_ref=row.patient_ref,
        accession_number=row.accession_number,
        failure_code=row.failure_code,
        findings=_findings(row.findings),
        model_version=row.model_version,
        placeholder_model=bool(row.model_placeholder),
        severity=None if row.severity is None else float(row.severity),
        not_assessed=tuple(row.not_assessed or ()),
        claimed_by=row.claimed_by,
        claimed_at=_utc(row.claimed_at),
        read_by=row.read_by,
        read_at=_utc(row.read_at),
        study_instance_uid=row.study_instance_uid,
        next_attempt_at=_utc(row.next_attempt_at) if state is JobState.FAILED else None,
        shadow_priority=(
            Priority(row.model_priority)
            if row.shadow and row.model_priority is not None and row.model_priority > row.priority
            else None
        ),
    )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class Operations:
    """Figures for the operations page, from the job tables (the source of truth)."""

    queue_by_state: dict[str, int]
    done: int
    failures_by_reason: list[tuple[str, int]]
    #: Seconds from an order's arrival to its result being published (the RIS/EHR can be told), recent jobs.
    notification_seconds: Sequence[float]

    @property
    def queue_length(self) -> int:
        return sum(self.queue_by_state.values())

    def notification_percentile(self, fraction: float) -> float | None:
        values = sorted(self.notification_seconds)
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(fraction * 100) - 1))]


def operations(engine: Engine, *, recent: int = 500) -> Operations:
    terminal = [s.value for s in JobState if s.is_terminal]
    with engine.connect() as connection:
        by_state: dict[str, int] = dict(
            connection.execute(
                select(jobs.c.state, func.count()).where(jobs.c.state.not_in(terminal)).group_by(jobs.c.state)
            ).all()
        )
        done = connection.execute(
            select(func.count()).select_from(jobs).where(jobs.c.state == JobState.COMPLETED.value)
        ).scalar_one()
        failures = connection.execute(
            select(jobs.c.failure_code, func.count())
            .where(jobs.c.state == JobState.FAILED.value)
            .group_by(jobs.c.failure_code)
            .order_by(func.count().desc())
        ).all()
        completed = connection.execute(
            select(orders.c.received_at, job_events.c.at)
            .join(jobs, jobs.c.order_id == orders.c.id)
            .join(job_events, job_events.c.job_id == jobs.c.id)
            .where(job_events.c.to_state == JobState.COMPLETED.value)
            .order_by(job_events.c.at.desc())
            .limit(recent)
        ).all()
    seconds = [
        max(0.0, ((_utc(at) or at) - (_utc(received) or received)).total_seconds()) for received, at in completed
    ]
    ordered_states: dict[str, int] = {s.value: by_state[s.value] for s in JobState if s.value in by_state}
    return Operations(ordered_states, int(done), [(code or "unknown", int(n)) for code, n in failures], seconds)
