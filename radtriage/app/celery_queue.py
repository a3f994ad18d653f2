"""The `JobQueue` port on Celery with a Redis broker: for more than one worker process or machine.

The database stays the source of truth and the broker only a doorbell:

* a message is a job id (JSON, one string argument) and nothing else;
* one Redis queue per priority, ``radtriage.stat`` … ``radtriage.routine``, consumed in that order
  (``queue_order_strategy: priority``), and ``radtriage.explain`` for heatmaps after all of them; a worker takes
  one message at a time (prefetch 1), so a STAT order never waits behind routine messages it holds;
* tasks are acknowledged late and rejected when their worker is lost (``acks_late``, ``reject_on_worker_lost``):
  a worker killed mid-study leaves the message to another worker; the service's compare-and-set claim and lease
  keep a second delivery from running a job twice, and the HL7 outbox keeps one update per job;
* when the broker is down, `enqueue` logs, notes in the database that the broker does not hold the job, and
  returns: the order stays accepted and stored, and the sweeper (`radtriage.app.sweeper`) in each worker hands it
  to the broker when it is back. Ageing (a job waiting longer than ``queue_max_wait`` is rung one level up) is the
  sweeper's too.

Nothing here imports torch: the API and MLLP processes publish with it; only ``radtriage worker`` scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from .core.domain import Priority

if TYPE_CHECKING:
    from celery import Celery

    from .config import Settings
    from .core.service import TriageService

log = logging.getLogger(__name__)

#: Scoring queues in the order a worker serves them, then explanations.
PRIORITY_QUEUES: dict[Priority, str] = {p: f"radtriage.{p.code}" for p in sorted(Priority, reverse=True)}
EXPLAIN_QUEUE = "radtriage.explain"
ALL_QUEUES: tuple[str, ...] = (*PRIORITY_QUEUES.values(), EXPLAIN_QUEUE)
SCORE_TASK = "radtriage.score"
EXPLAIN_TASK = "radtriage.explain"


def celery_app(settings: Settings, service: Callable[[], TriageService] | None = None) -> Celery:
    """The Celery application. `service` builds the worker's service on first use (in each worker process, after
    the fork): given only in ``radtriage worker``; publishers need none."""
    from celery import Celery

    app = Celery("radtriage", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_create_missing_queues=True,  # the queues are the names in ALL_QUEUES
        task_default_queue=PRIORITY_QUEUES[Priority.ROUTINE],
        broker_transport_options={
            "queue_order_strategy": "priority",
            # A message whose worker vanished without a word comes back after this; the lease and the sweeper
            # usually recover the job sooner.
            "visibility_timeout": settings.broker_visibility_timeout,
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_publish_retry=False,
    )

    if service is not None:

        def score(job_id: str) -> None:
            service().run_job(job_id)

        def explain(job_id: str) -> None:
            service().explain_job(job_id)

        register = cast(Callable[..., Callable[[Callable[[str], None]], object]], app.task)
        register(name=SCORE_TASK, acks_late=True, reject_on_worker_lost=True)(score)
        register(name=EXPLAIN_TASK, acks_late=True, reject_on_worker_lost=True)(explain)
    return app


class CeleryJobQueue:
    """Publishes job ids to the priority queues. `on_unqueued(job_id)` is told when the broker refused one."""

    def __init__(self, app: Celery, on_unqueued: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.on_unqueued = on_unqueued

    def publish(self, job_id: str, priority: Priority) -> bool:
        """Hand a scoring job to the broker; False (and a log line, without patient data) when it is down."""
        return self._send(SCORE_TASK, job_id, PRIORITY_QUEUES[priority])

    def enqueue(self, job_id: str, priority: Priority = Priority.ROUTINE) -> None:
        if not self.publish(job_id, priority) and self.on_unqueued is not None:
            try:
                self.on_unqueued(job_id)
            except Exception:  # the sweeper still finds it: the job is queued and its doorbell is old
                log.exception("could not note that job %s is not in the broker", job_id)

    def enqueue_explanation(self, job_id: str) -> None:
        self._send(EXPLAIN_TASK, job_id, EXPLAIN_QUEUE)  # lost heatmaps cost no triage; nothing to sweep

    def _send(self, task: str, job_id: str, queue: str) -> bool:
        try:
            self.app.send_task(task, args=[job_id], queue=queue, routing_key=queue, retry=False)
        except Exception as exc:  # kombu OperationalError, redis ConnectionError, OSError: the broker is away
            log.warning("broker unavailable (%s); job %s stays queued in the database", type(exc).__name__, job_id)
            return False
        return True

    # The in-process queue's lifecycle, as no-ops: workers are separate processes here.
    def bind(self, *_handlers: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def wait_idle(self, timeout: float | None = None) -> bool:
        raise NotImplementedError("Celery workers are other processes: wait on the database instead")


def unqueued_marker(store: Any) -> Callable[[str], None]:
    """`on_unqueued` for `CeleryJobQueue`: notes in the store that the broker does not hold the job."""

    def mark(job_id: str) -> None:
        store.mark_enqueued(job_id, None, datetime.now(UTC))

    return mark
