"""Job queue adapters. A message is a job id and nothing else: the database holds the state."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class InlineJobQueue:
    """In-process worker threads: the embedded default (one machine, no broker).

    Jobs still survive a restart, because `TriageService.resume_unfinished` re-queues every job the
    database says is unfinished.
    """

    def __init__(self, workers: int = 1) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._workers = max(1, workers)
        self._threads: list[threading.Thread] = []
        self._handler: Callable[[str], object] | None = None

    def bind(self, handler: Callable[[str], object]) -> None:
        self._handler = handler

    def enqueue(self, job_id: str) -> None:
        self._queue.put(job_id)

    def start(self) -> None:
        if self._handler is None:
            raise RuntimeError("bind a handler before starting the workers")
        if self._threads:
            return
        for n in range(self._workers):
            thread = threading.Thread(target=self._run, name=f"radtriage-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued job has been handled; False on timeout."""
        done = threading.Event()

        def waiter() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        assert self._handler is not None
        while True:
            job_id = self._queue.get()
            try:
                if job_id is None:
                    return
                self._handler(job_id)
            except Exception:  # the service records failures itself; this only keeps the worker alive
                log.exception("worker crashed on job %s", job_id)
            finally:
                self._queue.task_done()
