"""The job state machine under random event sequences."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from radtriage.app.core.domain import Job, JobState, Priority
from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.app.core.pipeline import FORWARD, TRANSITIONS, advance, can_move

T0 = datetime(2026, 11, 30, tzinfo=UTC)
S = JobState


def job_in(state: JobState) -> Job:
    return Job(id="j", order_id="o", state=state, priority=Priority.ROUTINE)


def test_happy_path_reaches_completed_in_the_documented_order() -> None:
    state, path = S.RECEIVED, [S.RECEIVED]
    while state in FORWARD:
        state = FORWARD[state]
        path.append(state)
    assert path == [
        S.RECEIVED, S.QUEUED, S.FETCHING, S.SELECTED, S.PREPROCESSED,
        S.SCORING, S.SCORED, S.PUBLISHING, S.COMPLETED,
    ]  # fmt: skip


@pytest.mark.parametrize("state", [s for s in JobState if not s.is_terminal])
def test_every_running_state_can_fail_or_be_cancelled(state: JobState) -> None:
    assert can_move(state, S.FAILED) and can_move(state, S.CANCELLED)


@pytest.mark.parametrize("state", [S.COMPLETED, S.CANCELLED])
def test_completed_and_cancelled_are_final(state: JobState) -> None:
    assert TRANSITIONS[state] == frozenset()


def test_a_failure_needs_a_reason() -> None:
    with pytest.raises(ValueError):
        advance(job_in(S.FETCHING), S.FAILED, T0)
    event = advance(job_in(S.FETCHING), S.FAILED, T0, reason_code="not-a-chest")
    assert (event.from_state, event.to_state, event.reason_code) == (S.FETCHING, S.FAILED, "not-a-chest")


@given(st.lists(st.sampled_from(list(JobState)), max_size=40))
def test_random_event_sequences_follow_the_table(moves: list[JobState]) -> None:
    job = job_in(S.RECEIVED)
    events = []
    for target in moves:
        allowed = target in TRANSITIONS[job.state]
        try:
            event = advance(job, target, T0, reason_code="internal" if target is S.FAILED else None)
        except TriageError as err:
            assert not allowed and err.code is ErrorCode.CONFLICT
            continue
        assert allowed
        events.append(event)
        job = Job(id=job.id, order_id=job.order_id, state=event.to_state, priority=job.priority)
    # One event per transition, and the events chain: each starts where the previous one ended.
    for before, after in zip(events, events[1:], strict=False):
        assert before.to_state is after.from_state
    # Nothing ever leaves completed or cancelled.
    for n, event in enumerate(events):
        if event.to_state in (S.COMPLETED, S.CANCELLED):
            assert n == len(events) - 1
