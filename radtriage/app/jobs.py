"""Job queue adapters. A message is a job id and nothing else: the database holds the state.

Both adapters (this in-process one and `radtriage.app.celery_queue`) serve the same order:

* scoring jobs by priority, stat → asap → urgent → routine, first come first served within a level;
* **ageing**: a job that has waited `max_wait_s` is served as if it were one level higher, two levels after twice
  that, and so on up to stat, so a steady stream of urgent work never starves routine studies;
* a priority raised while a job waits (HL7 XO, FHIR update) moves the queued job up, keeping the time it waited;
* explanation jobs (heatmaps) come after every scoring job and never age: nothing about a heatmap may delay a
  priority. They run on their own thread here, and only while no scoring job is waiting or running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .core.domain import Priority

log = logging.getLogger(__name__)

#: Levels in serving order (highest first).
LEVELS: tuple[Priority, ...] = tuple(sorted(Priority, reverse=True))


def aged_level(priority: Priority, waited_s: float, max_wait_s: float) -> Priority:
    """The level a job of `priority` is served at after waiting `waited_s` (one level up per `max_wait_s`)."""
    if max_wait_s <= 0:
        return priority
    return Priority(min(int(Priority.STAT), int(priority) + int(waited_s // max_wait_s)))


@dataclass
class _Entry:
    job_id: str
    level: Priority
    enqueued_at: float
    live: bool = field(default=True)


class PriorityJobQueue:
    """The waiting room of the in-process queue: four FIFO levels with ageing (no threads; see `InlineJobQueue`).

    Thread-safe. `take()` returns the job to serve next, or None when nothing waits.
    """

    def __init__(self, max_wait_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._levels: dict[Priority, deque[_Entry]] = {level: deque() for level in LEVELS}
        self._waiting: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def put(self, job_id: str, priority: Priority) -> bool:
        """Queue `job_id`, or move it up if it already waits at a lower level. True if anything changed."""
        with self._lock:
            now = self._clock()
            existing = self._waiting.get(job_id)
            if existing is not None:
                if priority <= existing.level:
                    return False
                existing.live = False  # left in its deque, skipped when it reaches the front
                entry = _Entry(job_id, priority, existing.enqueued_at)
                # Keep each level in waiting-time order: the raised job goes in among the jobs that waited as long.
                level = self._levels[priority]
                position = next((n for n, e in enumerate(level) if e.enqueued_at > entry.enqueued_at), len(level))
                level.insert(position, entry)
            else:
                entry = _Entry(job_id, priority, now)
                self._levels[priority].append(entry)
            self._waiting[job_id] = entry
            return True

    def take(self) -> str | None:
        with self._lock:
            now = self._clock()
            best: tuple[int, float] | None = None
            best_level: deque[_Entry] | None = None
            for level in LEVELS:
                queue = self._levels[level]
                while queue and not queue[0].live:
                    queue.popleft()
                if not queue:
                    continue
                head = queue[0]
                # Highest served level first; among equals, whoever waited longest.
                rank = (int(aged_level(level, now - head.enqueued_at, self.max_wait_s)), -head.enqueued_at)
                if best is None or rank > best:
                    best, best_level = rank, queue
            if best_level is None:
                return None
            entry = best_level.popleft()
            del self._waiting[entry.job_id]
            return entry.job_id

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)


class InlineJobQueue:
    """In-process worker threads: the embedded default (one machine, no broker).

    `workers` threads score; one more thread makes explanations when no scoring job waits. Jobs survive a restart
    because `TriageService.resume_unfinished` re-queues every job the database says is unfinished.
    """

    def __init__(self, workers: int = 1, *, max_wait_s: float = 300.0) -> None:
        self._scoring = PriorityJobQueue(max_wait_s)
        self._explaining: deque[str] = deque()
        self._workers = max(1, workers)
        self._threads: list[threading.Thread] = []
        self._handler: Callable[[str], object] | None = None
        self._explainer: Callable[[str], object] | None = None
        self._changed = threading.Condition()
        self._busy = 0  # jobs taken and not finished yet (scoring and explaining)
        self._scoring_busy = 0
        self._stopping = False

    def bind(self, handler: Callable[[str], object], explainer: Callable[[str], object] | None = None) -> None:
        self._handler = handler
        self._explainer = explainer

    def enqueue(self, job_id: str, priority: Priority = Priority.ROUTINE) -> None:
        with self._changed:
            if self._scoring.put(job_id, priority):
                self._changed.notify_all()

    def enqueue_explanation(self, job_id: str) -> None:
        with self._changed:
            self._explaining.append(job_id)
            self._changed.notify_all()

    def start(self) -> None:
        if self._handler is None:
            raise RuntimeError("bind a handler before starting the workers")
        if self._threads:
            return
        self._stopping = False
        for n in range(self._workers):
            self._spawn(self._run_scoring, f"radtriage-worker-{n}")
        self._spawn(self._run_explaining, "radtriage-explainer")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued job (explanations included) has been handled; False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._busy and not len(self._scoring) and not self._explaining, timeout
            )

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()

    @property
    def pending(self) -> int:
        return len(self._scoring) + len(self._explaining)

    def _next(self, explaining: bool) -> str | None:
        """The next job for this kind of thread; None when stopping."""
        with self._changed:
            while not self._stopping:
                if explaining:
                    scoring_idle = not self._scoring_busy and not len(self._scoring)
                    job_id = self._explaining.popleft() if self._explaining and scoring_idle else None
                else:
                    job_id = self._scoring.take()
                if job_id is not None:
                    self._busy += 1
                    self._scoring_busy += 0 if explaining else 1
                    return job_id
                self._changed.wait()
            return None

    def _done(self, explaining: bool) -> None:
        with self._changed:
            self._busy -= 1
            self._scoring_busy -= 0 if explaining else 1
            self._changed.notify_all()

    def _run_scoring(self) -> None:
        assert self._handler is not None
        self._serve(self._handler, explaining=False)

    def _run_explaining(self) -> None:
        self._serve(self._explainer, explaining=True)

    def _serve(self, handler: Callable[[str], object] | None, *, explaining: bool) -> None:
        while (job_id := self._next(explaining)) is not None:
            try:
                if handler is not None:
                    handler(job_id)
            except Exception:  # the service records failures itself; this only keeps the worker alive
                log.exception("worker crashed on job %s", job_id)
            finally:
                self._done(explaining)
