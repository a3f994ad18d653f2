"""The broker sweeper: hands the broker again the jobs it does not hold, so that the database stays the truth.

With Celery the broker is only a doorbell; the database says which jobs are unfinished. The sweeper runs in each
`radtriage worker` process (a thread) and, every `interval_s`, compares the two:

* **not enqueued**: an order accepted while the broker was down (the API stored it, answered, and noted that the
  broker did not take it) is enqueued as soon as the broker is back;
* **ageing**: a job still queued after `max_wait_s` gets a doorbell one level up (two levels after twice that, up
  to stat), the Celery side of the in-process queue's ageing; the same rule re-rings a doorbell the broker lost;
* **orphaned**: a job left in a running state longer than the lease by a worker that died (kill -9, lost machine)
  gets a doorbell; the worker that takes it (`TriageService.run_job`) puts it back to queued and runs it.

A second doorbell for the same job is harmless: the service's compare-and-set claim lets one worker run a job.
The sweeper is about jobs the broker does not hold. Retrying *failed* jobs with backoff (a PACS that was down) is
a separate module (issue 15), which calls `TriageService.retry_job`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from .core.domain import JobState, Priority
from .jobs import aged_level
from .storage.order_store import SweepCandidate

log = logging.getLogger(__name__)


class SweptStore(Protocol):
    def sweep_candidates(self, limit: int = 5000) -> list[SweepCandidate]: ...

    def mark_enqueued(self, job_id: str, priority: Priority | None, at: datetime) -> None: ...


class Doorbell(Protocol):
    def publish(self, job_id: str, priority: Priority) -> bool:
        """Hand the id to the broker; False when the broker cannot take it now."""
        ...


@dataclass(frozen=True)
class SweepReport:
    enqueued: int = 0
    aged: int = 0
    orphaned: int = 0
    broker_down: bool = False


class QueueSweeper:
    def __init__(
        self,
        store: SweptStore,
        doorbell: Doorbell,
        *,
        max_wait_s: float,
        lease_s: float,
        interval_s: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.doorbell = doorbell
        self.max_wait = timedelta(seconds=max_wait_s) if max_wait_s > 0 else None
        self.lease = timedelta(seconds=lease_s)
        self.interval_s = interval_s
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep_once(self) -> SweepReport:
        now = self.clock()
        counts = {"enqueued": 0, "aged": 0, "orphaned": 0}
        for job in self.store.sweep_candidates():
            decision = self._decide(job, now)
            if decision is None:
                continue
            why, level = decision
            if not self.doorbell.publish(job.job_id, level):
                log.warning("the broker is unavailable; queued jobs wait in the database until it is back")
                return SweepReport(counts["enqueued"], counts["aged"], counts["orphaned"], broker_down=True)
            self.store.mark_enqueued(job.job_id, level, now)
            counts[why] += 1
        if any(counts.values()):
            log.info("sweeper re-queued jobs: %s", counts)
        return SweepReport(counts["enqueued"], counts["aged"], counts["orphaned"])

    def _decide(self, job: SweepCandidate, now: datetime) -> tuple[str, Priority] | None:
        """Why and at which level this job needs a doorbell now, or None."""
        if job.state in (JobState.RECEIVED, JobState.QUEUED):
            waited = (now - job.updated_at).total_seconds()
            level = aged_level(job.priority, waited, self.max_wait.total_seconds()) if self.max_wait else job.priority
            if job.enqueued_at is None:
                return "enqueued", level
            higher = job.enqueued_priority is None or level > job.enqueued_priority
            stale = self.max_wait is not None and now - job.enqueued_at >= self.max_wait
            return ("aged", level) if higher or stale else None
        # A running state: orphaned when its worker made no move within the lease (and no doorbell since).
        if now - job.updated_at < self.lease:
            return None
        if job.enqueued_at is not None and now - job.enqueued_at < self.lease:
            return None
        return "orphaned", job.priority

    # ------------------------------------------------------------------ as a thread

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="radtriage-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep_once()
            except Exception:  # the database may be away for a moment; try again next round
                log.exception("sweep failed")
