"""`OrderStore` on SQLAlchemy Core. The same code runs on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Row, case, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..core.domain import (
    FindingScore,
    Heatmap,
    ImagingOrder,
    Job,
    JobEvent,
    JobState,
    ModelIdentity,
    Priority,
    TriageResult,
)
from ..core.errors import ErrorCode, TriageError
from .database import as_utc as _utc
from .tables import heatmaps, job_events, jobs, orders, results

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from ...compliance.audit import AuditRecord
    from ...compliance.audit_store import AuditLog

_ORDER_FIELDS = (
    "id",
    "source",
    "source_key",
    "study_instance_uid",
    "patient_ref",
    "accession_number",
    "placer_order_number",
    "filler_order_number",
    "procedure_code",
    "ordering_provider",
    "service_request_ref",
    "imaging_study_ref",
    "received_at",
)


@dataclass(frozen=True)
class SweepCandidate:
    """An unfinished job as the broker sweeper sees it (`radtriage.app.sweeper`)."""

    job_id: str
    state: JobState
    priority: Priority
    #: The job's last move (for a queued job: when it was queued; for a running one: its worker's last commit).
    updated_at: datetime
    enqueued_at: datetime | None
    enqueued_priority: Priority | None


def worklist_order() -> tuple[Any, ...]:
    """ORDER BY for a worklist of `jobs` outer-joined with `results`: priority (most urgent first), then severity
    (most severe first; studies without a severity after those with one), then waiting time (oldest first).

    Severity only orders studies within one priority, never across: it does not change any priority. SQL's NULL
    ordering differs between SQLite and PostgreSQL, so "no severity last" is written out."""
    return (
        jobs.c.priority.desc(),
        case((results.c.severity.is_(None), 1), else_=0),
        results.c.severity.desc(),
        jobs.c.created_at,
        jobs.c.id,
    )


def _order_from_row(row: Row[Any]) -> ImagingOrder:
    m = row._mapping
    values = {name: m[name] for name in _ORDER_FIELDS}
    values["received_at"] = _utc(values["received_at"])
    return ImagingOrder(requested_priority=Priority(m["requested_priority"]), **values)


def _job_from_row(row: Row[Any]) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        order_id=m["order_id"],
        state=JobState(m["state"]),
        priority=Priority(m["priority"]),
        attempts=m["attempts"],
        failure_code=m["failure_code"],
        failure_detail=m["failure_detail"],
        retryable=m["retryable"],
        created_at=_utc(m["created_at"]),
        updated_at=_utc(m["updated_at"]),
        next_attempt_at=_utc(m.get("next_attempt_at")),
    )


def _result_from_row(row: Row[Any]) -> TriageResult:
    m = row._mapping
    return TriageResult(
        job_id=m["job_id"],
        findings=tuple(FindingScore(f["label"], float(f["probability"]), float(f["threshold"])) for f in m["findings"]),
        priority=Priority(m["priority"]),
        model=ModelIdentity(m["model_name"], m["model_version"], m["model_sha256"], m["model_placeholder"]),
        series_instance_uid=m["series_instance_uid"],
        sop_instance_uid=m["sop_instance_uid"],
        priority_reason=m["priority_reason"],
        created_at=_utc(m["created_at"]),
        severity=None if m["severity"] is None else float(m["severity"]),
        not_assessed=tuple(m["not_assessed"] or ()),
        shadow=bool(m["shadow"]),
        model_priority=None if m["model_priority"] is None else Priority(m["model_priority"]),
    )


def _event_values(event: JobEvent) -> dict[str, Any]:
    return {
        "job_id": event.job_id,
        "from_state": event.from_state.value,
        "to_state": event.to_state.value,
        "at": event.at,
        "reason_code": event.reason_code,
        "detail": event.detail,
        "data": dict(event.data),
    }


#: Called inside the transaction of every job transition, after the job row and its event are written (e.g. the
#: retry planner of radtriage.app.retry), so that what it writes commits or fails with the transition.
TransitionHook = Callable[["Connection", JobEvent], None]


class SqlOrderStore:
    """With an `audit` log, every audited change writes its audit record in the same transaction as the change."""

    def __init__(self, engine: Engine, *, audit: AuditLog | None = None, hooks: Sequence[TransitionHook] = ()) -> None:
        self.engine = engine
        self.audit = audit
        self.hooks = tuple(hooks)

    # ------------------------------------------------------------------ orders

    def add_order(
        self, order: ImagingOrder, job: Job, event: JobEvent, *later: JobEvent
    ) -> tuple[ImagingOrder, Job, bool]:
        """`later` events (e.g. received → queued) are stored in the same transaction: one commit per order."""
        assert order.id and order.received_at, "the service assigns id and received_at"
        state = later[-1].to_state if later else job.state
        order_values = {name: getattr(order, name) for name in _ORDER_FIELDS}
        order_values["requested_priority"] = int(order.requested_priority)
        try:
            with self.engine.begin() as conn:
                self._lock_study(conn, order.study_instance_uid)
                conn.execute(insert(orders).values(order_values))
                # After the insert: on SQLite this transaction now holds the write lock, so a concurrent order
                # for the same study either sees this one or is seen by it (PostgreSQL: the advisory lock).
                if self._other_orders_for_study(conn, order):
                    raise TriageError(
                        ErrorCode.CONFLICT,
                        "the Study Instance UID already belongs to another order",
                        location="study_instance_uid",
                    )
                conn.execute(
                    insert(jobs).values(
                        id=job.id,
                        order_id=order.id,
                        state=state.value,
                        priority=int(job.priority),
                        attempts=0,
                        retryable=False,
                        created_at=event.at,
                        updated_at=event.at,
                        # Optimistic: the service hands the id to the queue right after this commit; a queue that
                        # cannot take it says so (`mark_enqueued(..., None)`), and the sweeper does it later.
                        enqueued_at=event.at,
                        enqueued_priority=int(job.priority),
                    )
                )
                conn.execute(insert(job_events), [_event_values(e) for e in (event, *later)])
                self._audit_received(conn, order, job)
        except IntegrityError:
            existing = self.find_order(order.source, order.source_key)
            if existing is None or existing.id is None:
                raise
            existing_job = self.job_for_order(existing.id)
            assert existing_job is not None
            return existing, existing_job, False
        stored_job = self.get_job(job.id)
        assert stored_job is not None
        return order, stored_job, True

    # One live order per study (the core's rule, for every door): while an order's job is unfinished, another
    # order for the same study from any door is refused; once it is completed, failed or cancelled, the study may
    # be ordered again. Re-sending the same (source, source_key) is not "another" (it is idempotent).

    @staticmethod
    def _lock_study(conn: Connection, study_instance_uid: str) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(study_instance_uid))))

    @staticmethod
    def _other_orders_for_study(conn: Connection, order: ImagingOrder) -> bool:
        query = (
            select(orders.c.id)
            .join(jobs, jobs.c.order_id == orders.c.id)
            .where(
                orders.c.study_instance_uid == order.study_instance_uid,
                orders.c.id != order.id,
                jobs.c.state.not_in([state.value for state in JobState if state.is_terminal]),
                ~((orders.c.source == order.source) & (orders.c.source_key == order.source_key)),
            )
            .limit(1)
        )
        return conn.execute(query).first() is not None

    def get_order(self, order_id: str) -> ImagingOrder | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(orders).where(orders.c.id == order_id)).first()
        return _order_from_row(row) if row else None

    def find_order(self, source: str, source_key: str) -> ImagingOrder | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(orders).where(orders.c.source == source, orders.c.source_key == source_key)
            ).first()
        return _order_from_row(row) if row else None

    def update_order(self, order: ImagingOrder, *, job_states: Sequence[JobState]) -> tuple[ImagingOrder, Job]:
        assert order.id, "update_order needs the stored order's id"
        changed = {
            name: getattr(order, name)
            for name in _ORDER_FIELDS
            if name not in ("id", "source", "source_key", "received_at")
        }
        changed["requested_priority"] = int(order.requested_priority)
        with self.engine.begin() as conn:
            before = conn.execute(
                select(jobs.c.id, jobs.c.priority, orders.c.patient_ref)
                .join(orders, orders.c.id == jobs.c.order_id)
                .where(orders.c.id == order.id)
            ).first()
            if before is None:
                raise TriageError(ErrorCode.NOT_FOUND, "no such order")
            new_priority = max(int(order.requested_priority), before.priority)
            # The state check and both updates are one transaction, so a worker cannot start in between.
            moved = conn.execute(
                update(jobs)
                .where(jobs.c.id == before.id, jobs.c.state.in_([s.value for s in job_states]))
                .values(priority=new_priority)
            )
            if moved.rowcount != 1:
                raise TriageError(ErrorCode.CONFLICT, "the order can no longer be changed at this stage")
            conn.execute(update(orders).where(orders.c.id == order.id).values(changed))
            if self.audit is not None and new_priority != before.priority:
                from ...compliance.audit import PRIORITY_CHANGED, AuditRecord

                self.audit.append(
                    conn,
                    AuditRecord(
                        PRIORITY_CHANGED,
                        patient_ref=before.patient_ref,
                        entities=(f"Task/{before.id}",),
                        details={
                            "job": before.id,
                            "from": Priority(before.priority).code,
                            "to": Priority(new_priority).code,
                            "by": "order update",
                        },
                    ),
                )
        stored_order, job = self.get_order(order.id), self.get_job(before.id)
        assert stored_order is not None and job is not None
        return stored_order, job

    # ------------------------------------------------------------------ jobs

    def get_job(self, job_id: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return _job_from_row(row) if row else None

    def job_for_order(self, order_id: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.order_id == order_id)).first()
        return _job_from_row(row) if row else None

    def record_transition(
        self, event: JobEvent, *, priority: Priority | None = None, result: TriageResult | None = None
    ) -> Job:
        return self.record_transitions((event,), priority=priority, result=result)

    def record_transitions(
        self, path: Sequence[JobEvent], *, priority: Priority | None = None, result: TriageResult | None = None
    ) -> Job:
        """Several consecutive moves of one job in one transaction (one commit), each stored and audited as its
        own event. The compare-and-set is on the first move's from-state."""
        assert path, "record_transitions needs at least one event"
        first, event = path[0], path[-1]
        for before_event, after_event in zip(path, path[1:], strict=False):
            assert before_event.job_id == after_event.job_id and before_event.to_state is after_event.from_state
        values: dict[str, Any] = {"state": event.to_state.value, "updated_at": event.at}
        if priority is not None:
            # Never lower: an update (HL7 XO) may have raised the job's priority while it was being scored.
            values["priority"] = case((jobs.c.priority > int(priority), jobs.c.priority), else_=int(priority))
        if any(e.to_state is JobState.FETCHING for e in path):
            values["attempts"] = jobs.c.attempts + 1
        if event.to_state is JobState.FAILED:
            values.update(
                failure_code=event.reason_code,
                failure_detail=event.detail,
                retryable=event.data.get("retryable") == "true",
            )
        elif any(e.to_state is JobState.QUEUED for e in path):
            values.update(failure_code=None, failure_detail=None, retryable=False)
        with self.engine.begin() as conn:
            before = conn.execute(
                select(jobs.c.priority, orders.c.patient_ref, orders.c.study_instance_uid)
                .join(orders, orders.c.id == jobs.c.order_id)
                .where(jobs.c.id == event.job_id)
            ).first()
            # Compare-and-set: the move only happens if nobody else moved the job since it was read.
            updated = conn.execute(
                update(jobs).where(jobs.c.id == event.job_id, jobs.c.state == first.from_state.value).values(values)
            )
            if updated.rowcount != 1:
                raise TriageError(ErrorCode.CONFLICT, f"job is no longer {first.from_state.value}")
            conn.execute(insert(job_events), [_event_values(e) for e in path])
            for moved in path:
                for hook in self.hooks:
                    hook(conn, moved)
            if result is not None:
                conn.execute(heatmaps.delete().where(heatmaps.c.job_id == result.job_id))
                conn.execute(results.delete().where(results.c.job_id == result.job_id))
                conn.execute(insert(results).values(self._result_values(result)))
                self._insert_heatmaps(conn, result.job_id, result.heatmaps)
            if before is not None:
                # The result and a raised priority belong to the move that produced them (scored, if in the path).
                carrier = next((e for e in path if e.to_state is JobState.SCORED), event)
                records = []
                for audited in path:
                    mine = audited is carrier
                    records += self._audit_records(
                        audited, before, priority if mine else None, result if mine else None
                    )
                if self.audit is not None:
                    self.audit.append_many(conn, records)
        job = self.get_job(event.job_id)
        assert job is not None
        return job

    # ------------------------------------------------------------------ audit, inside the caller's transaction

    def _audit_received(self, conn: Connection, order: ImagingOrder, job: Job) -> None:
        if self.audit is None:
            return
        from ...compliance.audit import record_for_job_transition

        record = record_for_job_transition(
            job_id=job.id,
            to_state=JobState.RECEIVED.value,
            patient_ref=order.patient_ref,
            study_instance_uid=order.study_instance_uid,
            entities=tuple(r for r in (order.service_request_ref, order.imaging_study_ref) if r),
            details={"order": order.id or "", "source": order.source},
        )
        if record is not None:
            self.audit.append(conn, record)

    def _audit_records(
        self,
        event: JobEvent,
        before: Row[Any, Any, Any],
        priority: Priority | None,
        result: TriageResult | None,
    ) -> list[AuditRecord]:
        if self.audit is None:
            return []
        from ...compliance.audit import PRIORITY_CHANGED, AuditRecord, record_for_job_transition

        details = (
            {
                "model": f"{result.model.name} {result.model.version}",
                "model-sha256": result.model.sha256,
                "priority": result.priority.code,
                # Shadow mode (issue 10): what the model would have set, kept for the compliance officer.
                **({"shadow": "true", "model-priority": result.model_priority.code}
                   if result.shadow and result.model_priority is not None else {}),
            }
            if result is not None
            else {}
        )
        records = []
        record = record_for_job_transition(
            job_id=event.job_id,
            to_state=event.to_state.value,
            reason_code=event.reason_code,
            retryable=event.data.get("retryable") == "true",
            patient_ref=before.patient_ref,
            study_instance_uid=before.study_instance_uid,
            details=details,
        )
        if record is not None:
            records.append(record)
        if priority is not None and int(priority) > before.priority:
            records.append(
                AuditRecord(
                    PRIORITY_CHANGED,
                    patient_ref=before.patient_ref,
                    entities=(f"Task/{event.job_id}",),  # the FHIR door's Task id is the job id
                    details={"job": event.job_id, "from": Priority(before.priority).code, "to": priority.code},
                )
            )
        return records

    @staticmethod
    def _result_values(result: TriageResult) -> dict[str, Any]:
        return {
            "job_id": result.job_id,
            "priority": int(result.priority),
            "priority_reason": result.priority_reason,
            "model_name": result.model.name,
            "model_version": result.model.version,
            "model_sha256": result.model.sha256,
            "model_placeholder": result.model.placeholder,
            "series_instance_uid": result.series_instance_uid,
            "sop_instance_uid": result.sop_instance_uid,
            "findings": [
                {"label": f.label, "probability": f.probability, "threshold": f.threshold} for f in result.findings
            ],
            "created_at": result.created_at,
            "severity": result.severity,
            "not_assessed": list(result.not_assessed),
            "shadow": result.shadow,
            "model_priority": None if result.model_priority is None else int(result.model_priority),
        }

    def get_result(self, job_id: str) -> TriageResult | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(results).where(results.c.job_id == job_id)).first()
        return _result_from_row(row) if row else None

    def events(self, job_id: str) -> list[JobEvent]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(job_events).where(job_events.c.job_id == job_id).order_by(job_events.c.id)).all()
        return [
            JobEvent(
                job_id=r.job_id,
                from_state=JobState(r.from_state),
                to_state=JobState(r.to_state),
                at=_utc(r.at) or r.at,
                reason_code=r.reason_code,
                detail=r.detail,
                data=dict(r.data or {}),
            )
            for r in rows
        ]

    def list_jobs(
        self,
        *,
        states: Sequence[JobState] | None = None,
        priorities: Sequence[Priority] | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[Job], int]:
        """The worklist order: priority, then severity (most severe first; unscored last), then waiting time."""
        query = select(jobs)
        if states:
            query = query.where(jobs.c.state.in_([s.value for s in states]))
        if priorities:
            query = query.where(jobs.c.priority.in_([int(p) for p in priorities]))
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            ordered = query.outerjoin(results, results.c.job_id == jobs.c.id).order_by(*worklist_order())
            rows = conn.execute(ordered.offset(offset).limit(limit)).all()
        return [_job_from_row(r) for r in rows], total

    def list_results(
        self,
        *,
        service_request_ref: str | None = None,
        patient_ref: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[TriageResult], int]:
        query = select(results).join(jobs, jobs.c.id == results.c.job_id).join(orders, orders.c.id == jobs.c.order_id)
        if service_request_ref is not None:
            query = query.where(orders.c.service_request_ref == service_request_ref)
        if patient_ref is not None:
            query = query.where(orders.c.patient_ref == patient_ref)
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            rows = conn.execute(
                query.order_by(results.c.created_at.desc(), results.c.job_id).offset(offset).limit(limit)
            ).all()
        return [_result_from_row(r) for r in rows], total

    def add_heatmaps(self, job_id: str, pictures: Sequence[Heatmap]) -> None:
        with self.engine.begin() as conn:
            conn.execute(heatmaps.delete().where(heatmaps.c.job_id == job_id))
            self._insert_heatmaps(conn, job_id, pictures)

    @staticmethod
    def _insert_heatmaps(conn: Connection, job_id: str, pictures: Sequence[Heatmap]) -> None:
        for position, heatmap in enumerate(pictures):
            conn.execute(
                insert(heatmaps).values(job_id=job_id, label=heatmap.label, position=position, png=heatmap.png)
            )

    def heatmap_png(self, job_id: str, label: str) -> bytes | None:
        with self.engine.connect() as conn:
            png = conn.execute(
                select(heatmaps.c.png).where(heatmaps.c.job_id == job_id, heatmaps.c.label == label)
            ).scalar_one_or_none()
        return bytes(png) if png is not None else None

    def heatmap_labels(self, job_id: str) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(heatmaps.c.label).where(heatmaps.c.job_id == job_id).order_by(heatmaps.c.position)
            ).all()
        return [r.label for r in rows]

    def find_model(self, sha256_prefix: str) -> ModelIdentity | None:
        columns = (results.c.model_name, results.c.model_version, results.c.model_sha256, results.c.model_placeholder)
        with self.engine.connect() as conn:
            row = conn.execute(
                select(*columns).where(results.c.model_sha256.startswith(sha256_prefix)).limit(1)
            ).first()
        if row is None:
            return None
        return ModelIdentity(row.model_name, row.model_version, row.model_sha256, bool(row.model_placeholder))

    def purge_results_before(self, cutoff: datetime, *, dry_run: bool = False) -> int:
        """Delete the derived results (findings, scores) of studies scored before `cutoff`; returns how many.

        Orders, jobs and their events stay: they are the record of what was asked and done. The audit trail is
        untouched (its rows are protected by the database)."""
        expired = results.c.created_at < cutoff
        with self.engine.begin() as conn:
            count = int(conn.execute(select(func.count()).select_from(results).where(expired)).scalar_one())
            if not dry_run and count:
                expired_jobs = select(results.c.job_id).where(expired)
                conn.execute(heatmaps.delete().where(heatmaps.c.job_id.in_(expired_jobs)))
                conn.execute(results.delete().where(expired))
        return count

    def mark_enqueued(self, job_id: str, priority: Priority | None, at: datetime) -> None:
        """Note that the job's id was handed to the broker at `priority` (None: the broker could not take it)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(enqueued_at=at if priority is not None else None, enqueued_priority=priority)
            )

    def sweep_candidates(self, limit: int = 5000) -> list[SweepCandidate]:
        """Unfinished jobs with what the sweeper needs to decide whether the broker should get them again."""
        terminal = [s.value for s in JobState if s.is_terminal]
        columns = (jobs.c.id, jobs.c.state, jobs.c.priority, jobs.c.updated_at, jobs.c.enqueued_at)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(*columns, jobs.c.enqueued_priority)
                .where(jobs.c.state.not_in(terminal))
                .order_by(jobs.c.priority.desc(), jobs.c.created_at)
                .limit(limit)
            ).all()
        return [
            SweepCandidate(
                r.id,
                JobState(r.state),
                Priority(r.priority),
                _utc(r.updated_at),
                _utc(r.enqueued_at),
                Priority(r.enqueued_priority) if r.enqueued_priority is not None else None,
            )
            for r in rows
        ]

    def unfinished_job_ids(self) -> list[str]:
        terminal = [s.value for s in JobState if s.is_terminal]
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(jobs.c.id)
                .where(jobs.c.state.not_in(terminal))
                .order_by(jobs.c.priority.desc(), jobs.c.created_at)
            ).all()
        return [r.id for r in rows]
