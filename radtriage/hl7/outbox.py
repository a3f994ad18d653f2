"""The durable outbox of messages to the RIS.

Writing and sending are separate, so that a RIS that is down never holds up the pipeline and no update is lost:

1. `HL7ResultPublisher` (the core's `ResultPublisher` port) runs in the pipeline's publishing stage. It builds
   the priority update (and the optional ORU) and stores it in ``hl7_outbox``. Publishing a job twice (a
   re-run stage) stores nothing new.
2. `OutboxSender`, a background thread, sends what is due over one persistent MLLP connection and reads the
   original-mode ACK (HL7 v2.5.1 section 2.9.2):

   * AA (or CA): sent.
   * AR (or CR), no answer, a wrong answer, or the RIS unreachable: tried again later, with exponential
     backoff. The same bytes and MSH-10 are sent again, so a RIS that did receive the first copy can tell.
   * AE (or CE): parked for a person (`OutboxStore.release` to send it again, `discard` to drop it); never
     re-sent blindly, since the RIS said the content is wrong.

   Messages are sent in order per patient: a patient's message waits while an earlier one for the same
   patient is pending or parked. Other patients' messages go on.

Messages survive a restart: they are rows; the sender picks up whatever is pending when it starts.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..app.core.domain import ImagingOrder, TriageResult
from ..app.core.ports import Clock
from ..app.core.service import SystemClock
from ..app.storage.database import as_utc as _utc
from ..app.storage.messaging_tables import hl7_outbox
from ..compliance.phi import log_value
from . import er7
from .mapping import CHARACTER_SETS, SOURCE
from .mllp import MLLPClient, MLLPNoAnswer
from .outbound import OutboundOptions, not_analysed_update, order_identity, priority_update, result_report
from .store import HL7Store

log = logging.getLogger(__name__)


class OutboxState(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    PARKED = "parked"
    DISCARDED = "discarded"


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    order_id: str
    job_id: str
    kind: str
    patient_key: str
    control_id: str
    payload: str
    state: OutboxState
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None



def _message(row: Row[Any]) -> OutboxMessage:
    m = row._mapping
    return OutboxMessage(
        id=m["id"],
        order_id=m["order_id"],
        job_id=m["job_id"],
        kind=m["kind"],
        patient_key=m["patient_key"],
        control_id=m["control_id"],
        payload=m["payload"],
        state=OutboxState(m["state"]),
        attempts=m["attempts"],
        next_attempt_at=_utc(m["next_attempt_at"]) or m["next_attempt_at"],
        last_error=m["last_error"],
        created_at=_utc(m["created_at"]) or m["created_at"],
        sent_at=_utc(m["sent_at"]),
    )


def patient_key(patient_ref: str) -> str:
    """The per-patient ordering key. A hash, so the outbox index holds no identifier in clear."""
    return hashlib.sha256(patient_ref.encode("utf-8")).hexdigest()


class OutboxStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(
        self, *, order_id: str, job_id: str, kind: str, patient_ref: str, control_id: str, payload: str, at: datetime
    ) -> bool:
        """Store a message to send; False (and nothing changes) when this job already has one of this kind."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(hl7_outbox).values(
                        order_id=order_id,
                        job_id=job_id,
                        kind=kind,
                        patient_key=patient_key(patient_ref),
                        control_id=control_id,
                        payload=payload,
                        state=OutboxState.PENDING.value,
                        attempts=0,
                        next_attempt_at=at,
                        created_at=at,
                        updated_at=at,
                    )
                )
        except IntegrityError:
            return False
        return True

    def get(self, message_id: int) -> OutboxMessage | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(hl7_outbox).where(hl7_outbox.c.id == message_id)).first()
        return _message(row) if row else None

    def messages(self, *, state: OutboxState | None = None, job_id: str | None = None) -> list[OutboxMessage]:
        query = select(hl7_outbox).order_by(hl7_outbox.c.id)
        if state is not None:
            query = query.where(hl7_outbox.c.state == state.value)
        if job_id is not None:
            query = query.where(hl7_outbox.c.job_id == job_id)
        with self.engine.connect() as conn:
            return [_message(r) for r in conn.execute(query)]

    def _heads(self) -> list[tuple[int, str, datetime | None]]:
        """(id, state, next attempt) of each patient's oldest message not yet sent or discarded."""
        open_states = (OutboxState.PENDING.value, OutboxState.PARKED.value)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(hl7_outbox.c.id, hl7_outbox.c.patient_key, hl7_outbox.c.state, hl7_outbox.c.next_attempt_at)
                .where(hl7_outbox.c.state.in_(open_states))
                .order_by(hl7_outbox.c.id)
            ).all()
        heads: dict[str, tuple[int, str, datetime | None]] = {}
        for row in rows:
            heads.setdefault(row.patient_key, (row.id, row.state, _utc(row.next_attempt_at)))
        return sorted(heads.values())

    def deliverable(self, now: datetime, limit: int = 100) -> list[OutboxMessage]:
        """Messages to send now, oldest first: each patient's oldest unsent message, if it is pending and due.

        A parked message blocks the later messages of its patient until a person releases or discards it."""
        due = [
            message_id
            for message_id, state, at in self._heads()
            if state == OutboxState.PENDING.value and (at is None or at <= now)
        ]
        messages = []
        for message_id in due[:limit]:
            message = self.get(message_id)
            if message is not None:
                messages.append(message)
        return messages

    def next_due(self) -> datetime | None:
        """When the next message may be sent (messages waiting behind another of their patient's do not count)."""
        times = [at for _, state, at in self._heads() if state == OutboxState.PENDING.value and at is not None]
        return min(times, default=None)

    def mark_sent(self, message_id: int, at: datetime) -> None:
        self._set(message_id, at, state=OutboxState.SENT.value, sent_at=at, last_error=None)

    def retry_later(self, message_id: int, at: datetime, next_attempt_at: datetime, error: str) -> None:
        self._set(
            message_id,
            at,
            attempts=hl7_outbox.c.attempts + 1,
            next_attempt_at=next_attempt_at,
            last_error=error[:255],
        )

    def park(self, message_id: int, at: datetime, error: str) -> None:
        self._set(
            message_id, at, state=OutboxState.PARKED.value, attempts=hl7_outbox.c.attempts + 1, last_error=error[:255]
        )

    def release(self, message_id: int, at: datetime) -> bool:
        """A parked message, looked at by a person, goes back in line to be sent now."""
        return self._set(
            message_id, at, only_if=OutboxState.PARKED, state=OutboxState.PENDING.value, next_attempt_at=at
        )

    def discard(self, message_id: int, at: datetime) -> bool:
        """A person decided a parked message must not be sent; the patient's later messages then go on."""
        return self._set(message_id, at, only_if=OutboxState.PARKED, state=OutboxState.DISCARDED.value)

    def _set(self, message_id: int, at: datetime, *, only_if: OutboxState | None = None, **values: Any) -> bool:
        query = update(hl7_outbox).where(hl7_outbox.c.id == message_id)
        if only_if is not None:
            query = query.where(hl7_outbox.c.state == only_if.value)
        with self.engine.begin() as conn:
            return conn.execute(query.values(updated_at=at, **values)).rowcount == 1


# ---------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class PublishOptions:
    outbound: OutboundOptions
    #: Also send an ORU^R01 with the findings.
    send_results: bool = False
    #: Order sources whose results are sent to the RIS. The RIS knows the orders it sent (source "hl7").
    sources: frozenset[str] = frozenset({SOURCE})


class HL7ResultPublisher:
    """The core's `ResultPublisher`: puts the RIS's messages for a finished result into the outbox."""

    def __init__(
        self,
        outbox: OutboxStore,
        contexts: HL7Store,
        options: PublishOptions,
        *,
        clock: Clock | None = None,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.contexts = contexts
        self.options = options
        self.clock: Clock = clock or SystemClock()
        self.on_stored = on_stored

    def publish(self, order: ImagingOrder, result: TriageResult) -> None:
        if order.source not in self.options.sources or order.id is None:
            return
        if result.shadow:
            # Shadow mode: the RIS hears nothing from a model this site has not validated (issue 10).
            log.info("HL7 outbox: job %s is in shadow mode; no priority update sent", result.job_id)
            return
        now = self.clock.now()
        context = order_identity(order, self.contexts.get_context(order.id))
        # Never lower the priority the order arrived with (the core ensures it too; this is the last door out).
        priority = max(result.priority, order.requested_priority)
        update_message = priority_update(
            order, context, priority, self.options.outbound, now=now, reason=result.priority_reason,
            notes=not_assessed_notes(result),
        )
        stored = self.outbox.add(
            order_id=order.id,
            job_id=result.job_id,
            kind="priority",
            patient_ref=order.patient_ref,
            control_id=update_message.control_id,
            payload=update_message.text,
            at=now,
        )
        if self.options.send_results:
            report = result_report(order, context, result, priority, self.options.outbound, now=now)
            stored |= self.outbox.add(
                order_id=order.id,
                job_id=result.job_id,
                kind="result",
                patient_ref=order.patient_ref,
                control_id=report.control_id,
                payload=report.text,
                at=now,
            )
        if stored:
            log.info("HL7 outbox: update for job %s stored (priority %s)", result.job_id, priority.code)
            if self.on_stored is not None:
                self.on_stored()


    def publish_not_analysed(self, order: ImagingOrder, job_id: str, failure_code: str, failure_display: str) -> None:
        """Tell the RIS that the study could not be analysed (`outbound.not_analysed_update`), at the order's own
        priority: without it the RIS cannot tell "not analysed" from "still working"."""
        if order.source not in self.options.sources or order.id is None:
            return
        now = self.clock.now()
        context = order_identity(order, self.contexts.get_context(order.id))
        message = not_analysed_update(
            order, context, self.options.outbound, now=now, failure_code=failure_code, failure_display=failure_display
        )
        stored = self.outbox.add(
            order_id=order.id,
            job_id=job_id,
            kind="not-analysed",
            patient_ref=order.patient_ref,
            control_id=message.control_id,
            payload=message.text,
            at=now,
        )
        if stored:
            log.info("HL7 outbox: not-analysed update for job %s stored (%s)", job_id, failure_code)
            if self.on_stored is not None:
                self.on_stored()


def not_assessed_notes(result: TriageResult) -> tuple[str, ...]:
    """The NTE that says which findings the model did not assess (so the RIS never reads silence as negative)."""
    if not result.not_assessed:
        return ()
    return (f"Not assessed (the model has no output for them): {', '.join(result.not_assessed)}",)


# ---------------------------------------------------------------------------------------------- sending


class AckOutcome(enum.Enum):
    ACCEPTED = "accepted"
    ERROR = "error"  # AE/CE: park
    REJECTED = "rejected"  # AR/CR: retry
    NO_ANSWER = "no-answer"  # retry, and reconnect


def encode_payload(text: str) -> bytes:
    """The bytes of an ER7 message in the character set its MSH-18 names (ASCII when there is none)."""
    msh = er7.parse(text).msh
    codec = CHARACTER_SETS.get(msh.value(18).upper(), "utf-8")
    return text.encode(codec)


def read_ack(answer: bytes, control_id: str) -> tuple[AckOutcome, str]:
    """What an answer means for the message with `control_id`, and a short description (no patient data)."""
    try:
        message = er7.parse(answer.decode("latin-1"))
    except er7.Er7Error:
        return AckOutcome.NO_ANSWER, "the answer is not HL7"
    msa = message.first("MSA")
    if msa is None:
        return AckOutcome.NO_ANSWER, "the answer has no MSA"
    if msa.value(2) != control_id:
        return AckOutcome.NO_ANSWER, "the answer is for another message (MSA-2)"
    code = msa.value(1).upper()
    err = message.first("ERR")
    condition = (err.value(3) or err.value(1, 4)) if err else ""
    description = f"{code} {condition}".strip()
    if code in ("AA", "CA"):
        return AckOutcome.ACCEPTED, description
    if code in ("AE", "CE"):
        return AckOutcome.ERROR, description
    if code in ("AR", "CR"):
        return AckOutcome.REJECTED, description
    return AckOutcome.NO_ANSWER, "MSA-1 is not an acknowledgment code"


class OutboxSender:
    """Sends due outbox messages on a background thread. `deliver_due()` does one pass (tests call it)."""

    def __init__(
        self,
        store: OutboxStore,
        client: MLLPClient,
        *,
        clock: Clock | None = None,
        retry_base: float = 5.0,
        retry_max: float = 300.0,
        poll_interval: float = 2.0,
    ) -> None:
        self.store = store
        self.client = client
        self.clock: Clock = clock or SystemClock()
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.poll_interval = poll_interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link_failures = 0

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt number `attempts + 1`: base, 2×base, 4×base, ... up to the maximum."""
        return float(min(self.retry_max, self.retry_base * 2 ** max(attempts - 1, 0)))

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="radtriage-hl7-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except Exception as exc:  # the database may be briefly unavailable; keep the thread alive
                log.error("HL7 outbox pass failed (%s)", type(exc).__name__)
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        if self._link_failures:
            return self.backoff(self._link_failures)
        try:
            due = self.store.next_due()
        except Exception:
            return self.poll_interval
        if due is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, (due - self.clock.now()).total_seconds()))

    def deliver_due(self) -> int:
        """Send every message that is due now, in order, including a patient's next message once the one
        before it is accepted. Stops at the first transport failure (the RIS is probably down: its other
        messages would fail too). Returns how many were accepted."""
        accepted = 0
        tried: set[int] = set()  # each message at most once per call, whatever the backoff settings
        while not self._stop.is_set():
            batch = [m for m in self.store.deliverable(self.clock.now()) if m.id not in tried]
            if not batch:
                break
            for message in batch:
                if self._stop.is_set():
                    break
                tried.add(message.id)
                outcome = self._deliver(message)
                if outcome is AckOutcome.NO_ANSWER:
                    self._link_failures += 1
                    return accepted
                self._link_failures = 0
                if outcome is AckOutcome.ACCEPTED:
                    accepted += 1
        return accepted

    def _deliver(self, message: OutboxMessage) -> AckOutcome:
        try:
            answer = self.client.request(encode_payload(message.payload))
        except MLLPNoAnswer as exc:
            outcome, description = AckOutcome.NO_ANSWER, f"no answer: {exc}"
        else:
            outcome, description = read_ack(answer, message.control_id)
            if outcome is AckOutcome.NO_ANSWER:
                self.client.close()  # whatever the RIS is answering, it is out of step with us
        now = self.clock.now()
        if outcome is AckOutcome.ACCEPTED:
            self.store.mark_sent(message.id, now)
            log.info("HL7 outbox message %d (job %s) accepted by the RIS", message.id, message.job_id)
        elif outcome is AckOutcome.ERROR:
            self.store.park(message.id, now, description)
            what = f"parked: the RIS answered {log_value(description, 200)}"
            log.warning("HL7 outbox message %d (job %s) %s", message.id, message.job_id, what)
        else:
            delay = self.backoff(message.attempts + 1)
            self.store.retry_later(message.id, now, now + timedelta(seconds=delay), description)
            what = f"not delivered ({log_value(description, 200)}); next try in {delay:.0f} s"
            log.warning("HL7 outbox message %d (job %s) %s", message.id, message.job_id, what)
        return outcome
