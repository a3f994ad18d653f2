"""Automatic retries of jobs that failed for a reason that may go away (the PACS down, the model not loaded).

A job that fails with a retryable code (`radtriage.app.core.errors.RETRYABLE_CODES`) is not given up at once:

* `RetryPlanner`, called by the order store in the transaction that records the failure, writes when the job
  is tried next (``jobs.next_attempt_at``: exponential backoff with a little jitter) and, the first time, the
  end of its retry window (``jobs.retry_until``: `RetryPolicy.retry_for` after the first failure). A failure at
  or after the end of the window gives up: ``next_attempt_at`` stays empty and the job is failed for good. Both
  times are in the database, so a restarted service carries on where the previous one stopped.
* `RetryScheduler`, a background thread, queues the jobs whose time has come through
  `TriageService.retry_job`, and plans failed jobs that have no plan (they failed before an upgrade to this
  version, or while automatic retries were off). It runs in every process that runs workers; two schedulers on
  one database are harmless: the service moves a job only from the state it read (the second gets CONFLICT).

While a job waits, it is FAILED in the pipeline's terms with a `Job.next_attempt_at`: the FHIR door shows the
Task as in progress ("waiting for PACS"), the worklist as waiting. A retry someone asks for (an operator with
``radtriage jobs retry``, or the ordering system sending the order again) opens a new window.
Every plan, give-up and retry is audited (``job-retry``).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, select, update

from .core.domain import JobEvent, JobState
from .core.errors import ErrorCode, TriageError, waiting_text
from .storage.database import as_utc
from .storage.tables import jobs, orders

if TYPE_CHECKING:
    from ..compliance.audit_store import AuditLog
    from .core.ports import Clock
    from .core.service import TriageService

log = logging.getLogger(__name__)

__all__ = ["AUTOMATIC", "RetryPlanner", "RetryPolicy", "RetryScheduler", "waiting_text"]

#: The detail of the pipeline event of an automatic retry; any other retry opens a new retry window.
AUTOMATIC = "automatic retry"
#: How many due jobs one scheduler pass queues at most (the rest go in the next pass).
BATCH = 200


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff: `base_delay` seconds after the first failure, doubling, at most `max_delay`; each delay is spread
    by up to `jitter` (a fraction) so that jobs that failed together do not all return together. Retries stop
    `retry_for` seconds after the first failure of a window (0 turns automatic retries off)."""

    base_delay: float = 30.0
    max_delay: float = 900.0
    retry_for: float = 24 * 3600.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.base_delay <= 0 or self.max_delay < self.base_delay:
            raise ValueError("retry delays must be positive, with max_delay >= base_delay")
        if self.retry_for < 0 or not 0 <= self.jitter < 1:
            raise ValueError("retry_for must be >= 0 and jitter in [0, 1)")

    def delay(self, failures: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds before the next try after `failures` failed tries (1 for the first)."""
        exponent = min(max(failures, 1) - 1, 30)
        plain = min(self.max_delay, self.base_delay * 2**exponent)
        return float(plain * (1 - self.jitter * rng()))


class RetryPlanner:
    """Plans the next try of a job that just failed, and closes the plan of a job that leaves the failed state.

    The order store calls it inside the transaction of each transition (`SqlOrderStore` ``hooks``), so a job is
    never seen failed without its plan, and a crash cannot separate the two."""

    def __init__(self, engine: Engine, policy: RetryPolicy, clock: Clock, audit: AuditLog | None = None) -> None:
        self.engine = engine
        self.policy = policy
        self.clock = clock
        self.audit = audit

    def __call__(self, conn: Connection, event: JobEvent) -> None:
        if event.to_state is JobState.FAILED and event.data.get("retryable") == "true":
            self._plan(conn, event.job_id, event.at)
        elif event.from_state is JobState.FAILED:  # queued again, or cancelled while waiting
            self._left_failed(conn, event)

    def plan(self, job_id: str) -> datetime | None:
        """Write when a failed, retryable job is tried next; None when it is not (any more) to be retried."""
        with self.engine.begin() as conn:
            return self._plan(conn, job_id, self.clock.now())

    def _plan(self, conn: Connection, job_id: str, now: datetime) -> datetime | None:
        if self.policy.retry_for <= 0:
            return None
        row = conn.execute(
            select(jobs.c.state, jobs.c.retryable, jobs.c.attempts, jobs.c.retry_until, jobs.c.failure_code,
                   orders.c.patient_ref)
            .join(orders, orders.c.id == jobs.c.order_id)
            .where(jobs.c.id == job_id)
        ).first()  # fmt: skip
        if row is None or row.state != JobState.FAILED.value or not row.retryable:
            return None
        until = as_utc(row.retry_until) or now + timedelta(seconds=self.policy.retry_for)
        if now >= until:
            self._set(conn, job_id, next_attempt_at=None, retry_until=until)
            self._audit(conn, job_id, row.patient_ref, "given-up", row.failure_code, until=until)
            log.warning("job %s: no more automatic retries (%s since %s)", job_id, row.failure_code, until)
            return None
        at = min(now + timedelta(seconds=self.policy.delay(row.attempts)), until)
        self._set(conn, job_id, next_attempt_at=at, retry_until=until)
        self._audit(conn, job_id, row.patient_ref, "planned", row.failure_code, at=at, until=until)
        log.info("job %s failed (%s); next try at %s", job_id, row.failure_code, at.isoformat(timespec="seconds"))
        return at

    def plan_missing(self) -> int:
        """Plan failed, retryable jobs with no plan and no closed window (a process died before planning them)."""
        with self.engine.connect() as conn:
            ids = conn.execute(
                select(jobs.c.id)
                .where(jobs.c.state == JobState.FAILED.value, jobs.c.retryable.is_(True))
                .where(jobs.c.next_attempt_at.is_(None), jobs.c.retry_until.is_(None))
                .limit(BATCH)
            ).scalars().all()  # fmt: skip
        return sum(1 for job_id in ids if self.plan(job_id) is not None)

    def request_retry(self, job_id: str, *, by: str) -> bool:
        """Ask for a failed job (retryable or not) to be tried at the next scheduler pass, with a new retry window.

        This goes through the database, not a queue, so it works from any process (``radtriage jobs retry``) and
        the service that runs the workers picks it up. False when the job is not failed."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            updated = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == JobState.FAILED.value)
                .values(next_attempt_at=now, retry_until=None)
            )
            if updated.rowcount != 1:
                return False
            row = conn.execute(
                select(orders.c.patient_ref, jobs.c.failure_code).join(jobs, jobs.c.order_id == orders.c.id)
                .where(jobs.c.id == job_id)
            ).first()  # fmt: skip
            assert row is not None
            self._audit(conn, job_id, row.patient_ref, "requested", row.failure_code, at=now, why=by)
        return True

    def _left_failed(self, conn: Connection, event: JobEvent) -> None:
        values: dict[str, object] = {"next_attempt_at": None}
        if event.to_state is JobState.QUEUED and not (event.detail or "").startswith(AUTOMATIC):
            values["retry_until"] = None  # someone asked for this retry: a new window if it fails again
        conn.execute(update(jobs).where(jobs.c.id == event.job_id).values(values))
        row = conn.execute(
            select(orders.c.patient_ref).join(jobs, jobs.c.order_id == orders.c.id).where(jobs.c.id == event.job_id)
        ).first()
        action = "requeued" if event.to_state is JobState.QUEUED else "stopped"
        self._audit(conn, event.job_id, row.patient_ref if row else None, action, None, why=event.detail)

    @staticmethod
    def _set(conn: Connection, job_id: str, **values: object) -> None:
        # Only while the job is still failed: if it was retried or cancelled meanwhile, the plan is void.
        conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.state == JobState.FAILED.value).values(values))

    def _audit(
        self,
        conn: Connection,
        job_id: str,
        patient_ref: str | None,
        action: str,
        code: str | None,
        *,
        at: datetime | None = None,
        until: datetime | None = None,
        why: str | None = None,
    ) -> None:
        if self.audit is None:
            return
        from ..compliance.audit import JOB_RETRY, AuditOutcome, AuditRecord

        details = {"job": job_id, "action": action}
        if at is not None:
            details["next-attempt"] = at.isoformat(timespec="seconds")
        if until is not None:
            details["retry-until"] = until.isoformat(timespec="seconds")
        if why:
            details["why"] = why[:200]
        outcome = AuditOutcome.SERIOUS_FAILURE if action == "given-up" else AuditOutcome.SUCCESS
        record = AuditRecord(
            JOB_RETRY,
            outcome=outcome,
            outcome_description=code,
            patient_ref=patient_ref,
            entities=(f"Task/{job_id}",),  # the FHIR door's Task id is the job id
            details=details,
        )
        self.audit.append(conn, record)


class RetryScheduler:
    """The thread half: every `interval` seconds, queue the failed jobs whose next try is due."""

    def __init__(self, planner: RetryPlanner, service: TriageService, *, interval: float = 5.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.planner = planner
        self.service = service
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_due(self) -> int:
        """One pass: plan what was missed, queue what is due; returns how many jobs were queued."""
        self.planner.plan_missing()  # nothing when automatic retries are off; operators' requests still run
        now = self.planner.clock.now()
        with self.planner.engine.connect() as conn:
            due = conn.execute(
                select(jobs.c.id, jobs.c.attempts)
                .where(jobs.c.state == JobState.FAILED.value, jobs.c.next_attempt_at <= now)
                .order_by(jobs.c.priority.desc(), jobs.c.next_attempt_at)
                .limit(BATCH)
            ).all()
        queued = 0
        for job_id, attempts in due:
            try:
                self.service.retry_job(job_id, detail=f"{AUTOMATIC} (after {attempts} attempt(s))")
                queued += 1
            except TriageError as err:
                if err.code is not ErrorCode.CONFLICT:
                    raise
                log.info("job %s was moved by someone else before its retry", job_id)
        if queued:
            log.info("queued %d job(s) for an automatic retry", queued)
        return queued

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="radtriage-retry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_due()
            except Exception:  # the database may be down for a while: keep trying, never die
                log.exception("automatic retries could not run this time")
            self._stop.wait(self.interval)
