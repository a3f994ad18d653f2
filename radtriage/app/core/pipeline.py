"""The job state machine: one transition table and one function that advances a job.

    received → queued → fetching → selected → preprocessed → scoring → scored → publishing → completed
    any non-terminal state → failed(reason, retryable) | cancelled
    any non-terminal state → queued  (a restarted service re-queues unfinished work)
    failed → queued (a retry) | cancelled (an order cancelled while its job waits for a retry)

`advance` is the only way a job changes state: it checks the table and returns the single event that
describes the move; the store commits the event and the new state together.
"""

from __future__ import annotations

from datetime import datetime

from .domain import Job, JobEvent, JobState
from .errors import ErrorCode, TriageError

S = JobState

#: The happy path. Failure, cancellation and re-queueing are allowed from every non-terminal state.
FORWARD: dict[JobState, JobState] = {
    S.RECEIVED: S.QUEUED,
    S.QUEUED: S.FETCHING,
    S.FETCHING: S.SELECTED,
    S.SELECTED: S.PREPROCESSED,
    S.PREPROCESSED: S.SCORING,
    S.SCORING: S.SCORED,
    S.SCORED: S.PUBLISHING,
    S.PUBLISHING: S.COMPLETED,
}

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    state: frozenset({FORWARD[state], S.FAILED, S.CANCELLED, S.QUEUED} - {state}) if state in FORWARD else frozenset()
    for state in JobState
}
# A failed job that may succeed later (PACS down) can be queued again, and an order cancelled while its job waits
# for a retry (radtriage.app.retry) cancels the job; completed and cancelled are final.
TRANSITIONS[S.FAILED] = frozenset({S.QUEUED, S.CANCELLED})


def can_move(from_state: JobState, to_state: JobState) -> bool:
    return to_state in TRANSITIONS[from_state]


def advance(
    job: Job,
    to_state: JobState,
    at: datetime,
    *,
    reason_code: str | None = None,
    detail: str | None = None,
    data: dict[str, str] | None = None,
) -> JobEvent:
    """The event that moves `job` to `to_state`; raises CONFLICT if the table does not allow it."""
    if not can_move(job.state, to_state):
        raise TriageError(ErrorCode.CONFLICT, f"job cannot move from {job.state.value} to {to_state.value}")
    if to_state is S.FAILED and not reason_code:
        raise ValueError("a failed job needs a reason code")
    return JobEvent(
        job_id=job.id,
        from_state=job.state,
        to_state=to_state,
        at=at,
        reason_code=reason_code,
        detail=detail,
        data=dict(data or {}),
    )
