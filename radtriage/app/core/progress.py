"""Grouped state moves: one commit for several consecutive stages of one job, each still its own event.

A study used to cost one commit (and one hash-chained audit append under the chain-head lock) per stage: nine
per study. The worker now notes the moves it makes while it works and commits them together at the points that
matter: when it claims the job (so no other worker takes it), when the score is stored (so the priority can go
out), and at the end. Every event keeps its own time, data and audit record, so nothing audited is lost; a
failure commits the moves made so far together with the failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from .domain import Job, JobEvent, JobState
from .pipeline import advance


class StagedMoves:
    """The moves of one job not committed yet. `job` is the job as last committed."""

    def __init__(self, job: Job, now: Callable[[], datetime]) -> None:
        self.job = job
        self._now = now
        self.pending: list[JobEvent] = []

    @property
    def state(self) -> JobState:
        """Where the job will be once the pending moves are committed."""
        return self.pending[-1].to_state if self.pending else self.job.state

    def add(
        self,
        to_state: JobState,
        *,
        detail: str | None = None,
        data: dict[str, str] | None = None,
        reason_code: str | None = None,
    ) -> JobEvent:
        """Note a move (checked against the transition table now, with the time it happens)."""
        event = advance(
            replace(self.job, state=self.state),
            to_state,
            self._now(),
            reason_code=reason_code,
            detail=detail,
            data=data,
        )
        self.pending.append(event)
        return event

    def take(self) -> list[JobEvent]:
        """The pending moves, handed to whoever commits them."""
        taken, self.pending = self.pending, []
        return taken
