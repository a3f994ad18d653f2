"""The triage service: the one place where an order becomes a job and a job becomes a result.

Doors (FHIR, HL7, the CLI demo) turn their protocol into an `ImagingOrder` and call `submit_order`; workers
call `run_job` with a job id taken from the queue. Neither door nor worker holds business logic.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from .domain import FindingScore, ImagingOrder, InstanceInfo, Job, JobEvent, JobState, Priority, TriageResult
from .errors import ErrorCode, TriageError
from .pipeline import advance
from .ports import (
    Clock,
    EventListener,
    ImageScorer,
    InstanceSelector,
    JobQueue,
    OrderStore,
    PreparedImage,
    ResultPublisher,
    ShadowGate,
    StudySource,
    TriagePolicy,
)
from .progress import StagedMoves

log = logging.getLogger(__name__)

S = JobState


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class TriageService:
    def __init__(
        self,
        *,
        store: OrderStore,
        queue: JobQueue,
        source: StudySource,
        selector: InstanceSelector,
        policy: TriagePolicy,
        scorer: Callable[[], ImageScorer],
        clock: Clock | None = None,
        listeners: Sequence[EventListener] = (),
        publishers: Sequence[ResultPublisher] = (),
        shadow: ShadowGate | None = None,
        lease_s: float = 300.0,
    ) -> None:
        """`scorer` is a factory so that processes that never score (web, MLLP) never load the model.

        `shadow` says, per model, whether its priorities are only recorded (shadow mode); None acts on them.
        `lease_s`: a job left in a running state for longer than this is taken as orphaned (its worker died) and
        another delivery of it may take it over; a younger one belongs to the worker running it."""
        self.store = store
        self.queue = queue
        self.source = source
        self.selector = selector
        self.policy = policy
        self._scorer_factory = scorer
        self._scorer: ImageScorer | None = None
        self.clock: Clock = clock or SystemClock()
        self.listeners = list(listeners)
        self.publishers = list(publishers)
        self.shadow = shadow
        self.lease = timedelta(seconds=lease_s)
        # Prepared images of recently scored studies, so the explanation job need not fetch them again.
        self._prepared: OrderedDict[str, PreparedImage] = OrderedDict()
        self._prepared_lock = threading.Lock()

    # ------------------------------------------------------------------ orders in

    def submit_order(self, order: ImagingOrder) -> tuple[ImagingOrder, Job, bool]:
        """Store the order and queue its job. Re-submitting the same (source, source_key) changes nothing.

        Returns the stored order, its job and whether it was new. When this returns, the order is committed:
        a door may acknowledge it.
        """
        if not order.study_instance_uid.strip():
            raise TriageError(ErrorCode.INVALID_INPUT, "the order has no Study Instance UID")
        now = self._now()
        order_id = order.id or new_id()
        order = replace(order, id=order_id, received_at=order.received_at or now)
        job = Job(id=new_id(), order_id=order_id, state=S.RECEIVED, priority=order.requested_priority)
        created_event = JobEvent(job.id, S.RECEIVED, S.RECEIVED, now, detail=f"order received via {order.source}")
        queued_event = advance(job, S.QUEUED, now)
        # One commit for both: the order is stored and queued together.
        stored_order, stored_job, created = self.store.add_order(order, job, created_event, queued_event)
        if created:
            self._emit(created_event)
            self._emit(queued_event)
            self.queue.enqueue(stored_job.id, stored_job.priority)
        elif stored_job.state is S.FAILED and stored_job.retryable:
            # The sender tries again, so do we: what failed (the PACS, the model) may be back.
            stored_job = self._retry_if_still_failed(stored_job.id, "retry: the order was sent again")
        return stored_order, stored_job, created

    def update_order(self, order: ImagingOrder) -> tuple[ImagingOrder, Job]:
        """Apply a change the ordering system made to an order it already sent (HL7 XO, FHIR update).

        The priority can only go up (the higher of old and new); the study can change only before the job has
        started fetching it. Returns the stored order and its job.
        """
        stored = self.store.find_order(order.source, order.source_key)
        job = self.store.job_for_order(stored.id) if stored and stored.id else None
        if stored is None or job is None:
            raise TriageError(ErrorCode.NOT_FOUND, "no such order")
        if job.state.is_terminal:
            raise TriageError(ErrorCode.CONFLICT, f"the job is already {job.state.value}")
        merged = replace(
            order,
            id=stored.id,
            received_at=stored.received_at,
            requested_priority=max(order.requested_priority, stored.requested_priority),
        )
        study_changed = merged.study_instance_uid != stored.study_instance_uid
        states = (S.RECEIVED, S.QUEUED) if study_changed else tuple(s for s in JobState if not s.is_terminal)
        stored_order, updated = self.store.update_order(merged, job_states=states)
        if updated.state is S.QUEUED and updated.priority > job.priority:
            self.queue.enqueue(updated.id, updated.priority)  # moves the waiting job up
        return stored_order, updated

    def cancel_order(self, source: str, source_key: str, reason: str = "cancelled by the ordering system") -> Job:
        order = self.store.find_order(source, source_key)
        job = self.store.job_for_order(order.id) if order and order.id else None
        if job is None:
            raise TriageError(ErrorCode.NOT_FOUND, "no such order")
        if job.state is S.CANCELLED:
            return job
        if job.state.is_terminal and not job.waiting_to_retry:
            raise TriageError(ErrorCode.CONFLICT, f"the job is already {job.state.value}")
        return self._move(job, S.CANCELLED, detail=reason)

    def retry_job(self, job_id: str, detail: str = "retry") -> Job:
        """Queue a failed job again (e.g. after the PACS came back). `detail` says who asked (radtriage.app.retry
        for automatic retries, an operator, a re-sent order); raises CONFLICT unless the job is failed."""
        job = self._job(job_id)
        job = self._move(job, S.QUEUED, detail=detail)
        self.queue.enqueue(job.id, job.priority)
        return job

    def _retry_if_still_failed(self, job_id: str, detail: str) -> Job:
        try:
            return self.retry_job(job_id, detail)
        except TriageError as err:  # another process retried or cancelled it meanwhile: theirs wins
            if err.code is not ErrorCode.CONFLICT:
                raise
            return self._job(job_id)

    def resume_unfinished(self) -> int:
        """Re-queue every job a previous process left unfinished; returns how many.

        For the embedded default, at start: this process is the only worker, so a job found running was left by a
        process that is gone; it goes back to queued at once. (With several workers the lease decides that.)
        """
        ids = self.store.unfinished_job_ids()
        for job_id in ids:
            job = self._job(job_id)
            if not job.state.is_terminal and job.state not in (S.RECEIVED, S.QUEUED):
                try:
                    job = self._move(job, S.QUEUED, detail="resumed")
                except TriageError:
                    continue  # moved meanwhile
            self.queue.enqueue(job.id, job.priority)
        return len(ids)

    # ------------------------------------------------------------------ the worker side

    def run_job(self, job_id: str) -> Job:
        """Run one job through every stage. Safe to call again for the same id (a second delivery): it does
        nothing to a job that is finished or that another worker is running, and takes over an orphaned one."""
        job = self._job(job_id)
        if job.state.is_terminal:
            return job
        order = self.store.get_order(job.order_id)
        if order is None:  # cannot happen with a consistent store
            raise TriageError(ErrorCode.INTERNAL, "job without an order")
        moves = StagedMoves(job, self._now)
        try:
            claimed = self._claim(job)
            if claimed is None:
                log.info("job %s is being run by another worker", job_id)
                return job
            moves = StagedMoves(claimed, self._now)
            instances = self.source.find_instances(order.study_instance_uid)
            chosen = self.selector(instances)
            moves.add(S.SELECTED, data={"series": chosen.series_instance_uid, "instance": chosen.sop_instance_uid})
            scorer = self.scorer
            image = scorer.prepare(self.source.retrieve_instance(chosen))
            moves.add(S.PREPROCESSED)
            moves.add(S.SCORING)
            findings = scorer.score(image)
            result = self._triage(job.id, order, chosen, scorer, image, findings)
            moves.add(S.SCORED)
            moves.add(S.PUBLISHING)
            # selected ... publishing: one commit
            job = self._commit(moves, priority=result.priority, result=result)
            for publisher in self.publishers:
                publisher.publish(order, result)
            job = self._move(job, S.COMPLETED)
            # Heatmaps are a separate, lower-priority job: the priority never waits for pictures.
            if result.positive_findings:
                self._remember_prepared(job.id, image)
                self.queue.enqueue_explanation(job.id)
            return job
        except TriageError as err:
            if err.code is ErrorCode.CONFLICT:
                # Someone else moved the job (cancelled, or another worker): their state wins.
                log.info("job %s changed under the worker: %s", job_id, err.detail)
                return self._job(job_id)
            log.warning("job %s failed: %s", job_id, err.code.value)
            return self._fail(job_id, err, moves)
        except Exception:
            log.exception("job %s failed with an unexpected error", job_id)
            return self._fail(job_id, TriageError(ErrorCode.INTERNAL, "unexpected error while processing"), moves)

    def _claim(self, job: Job) -> Job | None:
        """Move the job to fetching (compare-and-set, one commit), or None when another worker holds it.

        A job in a running state whose last move is older than the lease was left by a worker that died (kill -9,
        lost machine): it is put back to queued and claimed in the same commit."""
        moves = StagedMoves(job, self._now)
        if job.state is S.RECEIVED:
            moves.add(S.QUEUED)
        elif job.state is not S.QUEUED:
            last_move = job.updated_at or job.created_at
            if last_move is not None and self._now() - last_move < self.lease:
                return None
            moves.add(S.QUEUED, detail="resumed")
        moves.add(S.FETCHING)
        return self._commit(moves)

    def explain_job(self, job_id: str) -> None:
        """Make and store heatmaps for the positive findings of a scored study (the explanation job).

        Runs after the Task completed and the priority went out; the DiagnosticReport links the heatmaps once they
        are stored. A failure here is logged and costs the study nothing else."""
        try:
            result = self.store.get_result(job_id)
            positives = [f.label for f in result.findings if f.positive] if result else []
            if result is None or not positives:
                return
            scorer = self.scorer
            image = self._take_prepared(job_id) or self._prepare_again(job_id, result)
            self.store.add_heatmaps(job_id, scorer.explain(image, positives))
        except Exception:
            log.exception("heatmaps for job %s could not be made; the result is kept without them", job_id)

    def _prepare_again(self, job_id: str, result: TriageResult) -> PreparedImage:
        """Fetch and prepare the scored instance again (the explanation runs on another worker, or later)."""
        order = self.order(self._job(job_id).order_id)
        instances = self.source.find_instances(order.study_instance_uid)
        chosen = next((i for i in instances if i.sop_instance_uid == result.sop_instance_uid), None)
        if chosen is None:
            raise TriageError(ErrorCode.STUDY_NOT_FOUND, "the scored instance is no longer in the archive")
        return self.scorer.prepare(self.source.retrieve_instance(chosen))

    def _remember_prepared(self, job_id: str, image: PreparedImage, keep: int = 8) -> None:
        with self._prepared_lock:
            self._prepared[job_id] = image
            while len(self._prepared) > keep:
                self._prepared.popitem(last=False)

    def _take_prepared(self, job_id: str) -> PreparedImage | None:
        with self._prepared_lock:
            return self._prepared.pop(job_id, None)

    def _triage(
        self,
        job_id: str,
        order: ImagingOrder,
        chosen: InstanceInfo,
        scorer: ImageScorer,
        image: PreparedImage,
        findings: Sequence[FindingScore],
    ) -> TriageResult:
        """The result of one scored study: the policy's priority (acted on unless in shadow mode), the severity
        and the findings the policy names that this model cannot assess."""
        decided, why = self.policy.decide(findings, order.requested_priority)
        # The policy promises this already; the core enforces it too because it is a safety rule.
        decided = max(decided, order.requested_priority)
        shadow_reason = self.shadow(scorer.identity) if self.shadow is not None else None
        priority = decided
        if shadow_reason is not None:
            # Shadow mode: record what the model would have done, act on nothing (the order keeps its priority).
            priority = order.requested_priority
            why = f"SHADOW MODE ({shadow_reason}): the model would have set {decided.code.upper()}; {why}"
        return TriageResult(
            job_id=job_id,
            findings=tuple(findings),
            priority=priority,
            model=scorer.identity,
            series_instance_uid=chosen.series_instance_uid,
            sop_instance_uid=chosen.sop_instance_uid,
            priority_reason=why,
            created_at=self._now(),
            severity=self._severity(job_id, scorer, image),
            not_assessed=self.not_assessed(scorer),
            shadow=shadow_reason is not None,
            model_priority=decided,
        )

    def not_assessed(self, scorer: ImageScorer | None = None) -> tuple[str, ...]:
        """Findings the triage policy names that the model has no output for, sorted: "not assessed"."""
        scorer = scorer or self.scorer
        return tuple(sorted(self.policy.labels_named() - frozenset(scorer.labels)))

    @staticmethod
    def _severity(job_id: str, scorer: ImageScorer, image: PreparedImage) -> float | None:
        """Severity orders studies within a priority; a severity that fails must not cost the study its triage."""
        try:
            return scorer.severity(image)
        except Exception:
            log.exception("severity for job %s could not be computed; the result is kept without it", job_id)
            return None

    @property
    def scorer(self) -> ImageScorer:
        if self._scorer is None:
            try:
                self._scorer = self._scorer_factory()
            except TriageError:
                raise
            except Exception as exc:
                log.exception("the model could not be loaded")
                raise TriageError(ErrorCode.MODEL_UNAVAILABLE) from exc
        return self._scorer

    # ------------------------------------------------------------------ reads for the doors

    def job(self, job_id: str) -> Job:
        return self._job(job_id)

    def order(self, order_id: str) -> ImagingOrder:
        order = self.store.get_order(order_id)
        if order is None:
            raise TriageError(ErrorCode.NOT_FOUND, "no such order")
        return order

    def result(self, job_id: str) -> TriageResult | None:
        return self.store.get_result(job_id)

    # ------------------------------------------------------------------ internals

    def _now(self) -> datetime:
        return self.clock.now()

    def _job(self, job_id: str) -> Job:
        job = self.store.get_job(job_id)
        if job is None:
            raise TriageError(ErrorCode.NOT_FOUND, "no such job")
        return job

    def _move(
        self,
        job: Job,
        to_state: JobState,
        *,
        detail: str | None = None,
        data: dict[str, str] | None = None,
        priority: Priority | None = None,
        result: TriageResult | None = None,
        error: TriageError | None = None,
    ) -> Job:
        if error is not None:
            data = {**(data or {}), "retryable": "true" if error.retryable else "false"}
        event = advance(
            job,
            to_state,
            self._now(),
            reason_code=error.code.value if error else None,
            detail=detail or (error.detail if error else None),
            data=data,
        )
        stored = self.store.record_transition(event, priority=priority, result=result)
        self._emit(event)
        return stored

    def _commit(
        self, moves: StagedMoves, *, priority: Priority | None = None, result: TriageResult | None = None
    ) -> Job:
        """Commit the staged moves in one transaction, then emit their events in order."""
        events = moves.take()
        stored = self.store.record_transitions(events, priority=priority, result=result)
        moves.job = stored
        for event in events:
            self._emit(event)
        return stored

    def _fail(self, job_id: str, err: TriageError, moves: StagedMoves | None = None) -> Job:
        """Mark the job failed; moves made before the failure are committed with it, so none goes unrecorded."""
        if moves is not None and moves.pending and not moves.job.state.is_terminal:
            moves.add(
                S.FAILED,
                reason_code=err.code.value,
                detail=err.detail,
                data={"retryable": "true" if err.retryable else "false"},
            )
            try:
                return self._commit(moves)
            except TriageError as conflict:
                log.info("job %s not marked failed: %s", job_id, conflict.detail)
                return self._job(job_id)
        job = self._job(job_id)
        if job.state.is_terminal:
            return job
        try:
            return self._move(job, S.FAILED, error=err)
        except TriageError as conflict:  # cancelled meanwhile
            log.info("job %s not marked failed: %s", job_id, conflict.detail)
            return self._job(job_id)

    def _emit(self, event: JobEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener must never break the pipeline
                log.exception("event listener failed for job %s", event.job_id)
