"""Orders in over HL7 v2: one frame → one original-mode ACK.

The receiver turns each message into imaging orders (`mapping`), hands them to the core (`TriageService`),
and answers (`ack`):

======================================================  =====  ===========================================
situation                                               ACK    ERR (HL7 table 0357)
======================================================  =====  ===========================================
order committed (NW), cancelled (CA/DC), updated (XO)   AA
message sent again (same MSH-3/4 and MSH-10)            the ACK stored the first time, nothing changes
not HL7 (no MSH, unusable encoding characters)          AR     100 / 102 at MSH-2
sender not allowed                                      AR     207
unsupported type / trigger / version / processing id    AR     200 / 201 / 203 / 202
ORU^R01 without a report handler                        AR     200 at MSH-9.1
ORU^R01 the report handler finds wrong                  AE     what the handler says (100 / 101 / 102)
the service cannot take work (database down, stopping)  AR     207
over the size limit                                     AE     207
unknown character set                                   AE     103 at MSH-18
required field missing / malformed / unknown code       AE     101 / 102 / 103 with the field
MSH-3.1 / MSH-4.1 over 64, MSH-10 over 199 characters   AE     102 at MSH-3 / MSH-4 / MSH-10 (not stored)
study already ordered under another order number        AE     205 at IPC-3 / ZDS-1
cancel of an unknown order                              AE     204 at ORC-2
======================================================  =====  ===========================================

AA is sent only after `TriageService.submit_order` has returned, i.e. after the order is committed.
ORU^R01 (radiologists' final reports) go to the `ReportHandler` the receiver was given (radtriage.monitoring's
``OruHandler``); AA once it has stored them.
AR answers are not stored: AR means "try later", and the later try must be processed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from ..app.core.domain import Priority
from ..app.core.errors import ErrorCode, TriageError
from ..app.core.service import TriageService
from ..compliance.phi import log_value
from . import er7
from .ack import AckCode, ErrorCondition, Hl7Issue, Location, build_ack, salvaged_header
from .mapping import (
    SOURCE,
    DecodeError,
    MessageHeader,
    OrderControl,
    OrderRequest,
    ReaderOptions,
    check_supported,
    decode_message,
    read_header,
    read_orders,
)
from .mllp import Frame, Peer
from .store import HL7Store

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ReceiverSettings:
    application: tuple[str, ...] = ("RADTRIAGE",)
    facility: tuple[str, ...] = ()
    #: Senders allowed, as ``APP`` (MSH-3.1) or ``APP^FACILITY`` (MSH-3.1^MSH-4.1); empty allows every sender.
    allowed_senders: frozenset[str] = frozenset()
    #: MSH-11 values processed; a message for another processing mode (training, debugging) is rejected.
    processing_ids: frozenset[str] = frozenset({"P"})
    reader: ReaderOptions = field(default_factory=ReaderOptions)


class ReportHandler(Protocol):
    """Takes the final reports of an ORU^R01 (already decoded and parsed); returns the issues for an AE."""

    def __call__(self, message: er7.Message, header: MessageHeader) -> Sequence[Hl7Issue]: ...


class _Answer(Exception):
    """Raised inside the receiver to answer the message at once."""

    def __init__(self, code: AckCode, *issues: Hl7Issue, store: bool = True) -> None:
        super().__init__(code.value)
        self.code = code
        self.issues = issues
        self.store = store


class OrderReceiver:
    """The MLLP frame handler of the HL7 door. Thread-safe: one instance serves every connection."""

    def __init__(
        self,
        service: TriageService,
        store: HL7Store,
        settings: ReceiverSettings | None = None,
        reports: ReportHandler | None = None,
    ) -> None:
        self.service = service
        self.store = store
        self.settings = settings or ReceiverSettings()
        self.reports = reports
        #: Cleared while the door stops: messages are then answered AR ("try later") instead of half-processed.
        self.accepting = True

    def __call__(self, frame: Frame, peer: Peer) -> bytes:
        return self.answer(frame.payload, oversize_bytes=frame.size if frame.oversize else None).encode("latin-1")

    def answer(self, payload: bytes, *, oversize_bytes: int | None = None) -> str:
        """The ACK for one received payload, as text to encode in Latin-1. Never raises.

        Text the ACK quotes from a message body decoded in another charset (e.g. CP1252 in an ERR message) may
        hold characters Latin-1 lacks; they become "?" rather than breaking the answer."""
        text = self._answer(payload, oversize_bytes=oversize_bytes)
        return text.encode("latin-1", errors="replace").decode("latin-1")

    def _answer(self, payload: bytes, *, oversize_bytes: int | None = None) -> str:
        """The ACK itself.

        The ACK's own text is ASCII; what it echoes from the message's MSH (MSH-3/4 as MSH-5/6, MSH-10 as
        MSA-2) was read from the raw bytes as Latin-1, so encoding the ACK in Latin-1 gives back the sender's
        exact bytes whatever its character set."""
        header: MessageHeader | None = None
        try:
            header = self._header(payload)
            return self._process(payload, header, oversize_bytes)
        except _Answer as answer:
            try:
                return self._ack(header, answer.code, answer.issues, payload, store=answer.store)
            except Exception as exc:  # storing the answer failed (database down): the sender must try again
                return self._cannot_work(header, payload, exc)
        except Exception as exc:  # the listener must survive anything; the details may hold patient data
            return self._cannot_work(header, payload, exc)

    def _cannot_work(self, header: MessageHeader | None, payload: bytes, exc: Exception) -> str:
        log.error("HL7 message could not be processed (%s); answered AR", type(exc).__name__)
        issue = Hl7Issue(ErrorCondition.APPLICATION_INTERNAL_ERROR, "the service cannot accept work now")
        return self._ack(header, AckCode.REJECT, (issue,), payload, store=False)

    # ------------------------------------------------------------------ steps

    def _header(self, payload: bytes) -> MessageHeader:
        """MSH, read from the raw bytes (MSH is ASCII in every supported character set)."""
        try:
            return read_header(er7.parse(payload.decode("latin-1")))
        except er7.Er7Error as err:
            location = Location("MSH", err.field_position) if err.field_position else None
            condition = ErrorCondition.DATA_TYPE_ERROR if location else ErrorCondition.SEGMENT_SEQUENCE_ERROR
            raise _Answer(
                AckCode.REJECT, Hl7Issue(condition, f"not an HL7 v2 message: {err.detail}", location)
            ) from None

    def _process(self, payload: bytes, header: MessageHeader, oversize_bytes: int | None) -> str:
        if oversize_bytes is not None:
            raise _Answer(
                AckCode.ERROR,
                Hl7Issue(ErrorCondition.APPLICATION_INTERNAL_ERROR, f"message of {oversize_bytes} bytes is too large"),
                store=False,
            )
        if not header.control_id:
            raise _Answer(
                AckCode.ERROR,
                Hl7Issue(ErrorCondition.REQUIRED_FIELD_MISSING, "message control id missing", Location("MSH", 10)),
                store=False,
            )
        over_long = _over_long_header_value(header)
        if over_long is not None:
            # Longer than the message log stores: answered, not stored (a resend gets the same answer again).
            raise _Answer(AckCode.ERROR, over_long, store=False)
        if not self._sender_allowed(header):
            raise _Answer(
                AckCode.REJECT,
                Hl7Issue(
                    ErrorCondition.APPLICATION_INTERNAL_ERROR, "sending application not allowed", Location("MSH", 3)
                ),
                store=False,
            )
        earlier = self.store.find_answer(header.sender, header.control_id)
        if earlier is not None:
            if earlier.payload_sha256 != _digest(payload):
                what = "re-uses its MSH-10 with other content"
                log.warning("HL7 %s %s", _described(header), what)
            else:
                log.info("HL7 %s is a repeat", _described(header))
            return earlier.ack
        unsupported = check_supported(header, self.settings.processing_ids)
        if unsupported is None and header.message_type == "ORU" and self.reports is None:
            unsupported = Hl7Issue(
                ErrorCondition.UNSUPPORTED_MESSAGE_TYPE, "results are not received here", Location("MSH", 9, 1)
            )
        if unsupported is not None:
            raise _Answer(AckCode.REJECT, unsupported, store=False)
        if not self.accepting:
            issue = Hl7Issue(ErrorCondition.APPLICATION_INTERNAL_ERROR, "the service is stopping; send again later")
            raise _Answer(AckCode.REJECT, issue, store=False)
        try:
            text, note = decode_message(payload)
        except DecodeError as err:
            raise _Answer(AckCode.ERROR, err.issue) from None
        if note:
            log.info("HL7 %s: %s", _described(header), log_value(note, 200))
        message = er7.parse(text)
        if header.message_type == "ORU" and self.reports is not None:
            report_issues = self.reports(message, read_header(message))
            if report_issues:
                raise _Answer(AckCode.ERROR, *report_issues)
            return self._ack(header, AckCode.ACCEPT, (), payload, store=True)
        # The header again, now in the right character set, for the order's context. The ACK keeps echoing the
        # header as read from the raw bytes, so that MSA-2 and MSH-5/6 are byte for byte what the sender sent.
        requests, issues = read_orders(message, read_header(message), self.settings.reader)
        if issues:
            raise _Answer(AckCode.ERROR, *issues)
        for request in requests:
            self._apply(request)
        return self._ack(header, AckCode.ACCEPT, (), payload, store=True)

    def _sender_allowed(self, header: MessageHeader) -> bool:
        allowed = self.settings.allowed_senders
        if not allowed:
            return True
        app = header.sending_application[0] if header.sending_application else ""
        return app in allowed or header.sender in allowed

    # ------------------------------------------------------------------ acting on one order

    def _apply(self, request: OrderRequest) -> None:
        control = request.control
        if control is OrderControl.NEW:
            self._create(request)
        elif control is OrderControl.CHANGE:
            self._change(request)
        elif control.cancels:
            self._cancel(request)
        # SC (status changed): nothing to do for triage; acknowledged.

    def _create(self, request: OrderRequest) -> None:
        order = request.order
        uid_location = request.study_uid_location
        # The core refuses a second live order for the same study (from any door) with CONFLICT: point at the UID.
        stored, job, created = self._call(lambda: self.service.submit_order(order), location=uid_location)
        if not created and stored.study_instance_uid != order.study_instance_uid:
            raise _Answer(
                AckCode.ERROR,
                Hl7Issue(
                    ErrorCondition.DUPLICATE_KEY_IDENTIFIER,
                    "the order number is already used for another study",
                    Location("ORC", 2),
                ),
            )
        assert stored.id is not None
        self.store.save_context(stored.id, request.context, self.service.clock.now())
        log.info("HL7 order %s (job %s) %s", stored.id, job.id, "created" if created else "already known")

    def _change(self, request: OrderRequest) -> None:
        """XO: an unknown order is created; for a known one the HL7 identifiers are updated. A change of study
        or a higher priority needs `TriageService.update_order` (proposed), and is refused (AE) without it."""
        order = request.order
        stored = self.service.store.find_order(SOURCE, order.source_key)
        if stored is None or stored.id is None:
            self._create(request)
            return
        wanted = max(order.requested_priority, stored.requested_priority)
        changes_triage = order.study_instance_uid != stored.study_instance_uid or wanted > stored.requested_priority
        if changes_triage:
            update = getattr(self.service, "update_order", None)
            if update is None:
                raise _Answer(
                    AckCode.ERROR,
                    Hl7Issue(
                        ErrorCondition.APPLICATION_INTERNAL_ERROR,
                        "changing the study or raising the priority of an order is not supported",
                        request.study_uid_location if order.study_instance_uid != stored.study_instance_uid else None,
                    ),
                )
            self._call(lambda: update(replace(order, id=stored.id, requested_priority=Priority(wanted))))
        self.store.save_context(stored.id, request.context, self.service.clock.now())
        log.info("HL7 order %s updated", stored.id)

    def _cancel(self, request: OrderRequest) -> None:
        key = request.order.source_key
        try:
            job = self.service.cancel_order(SOURCE, key)
        except TriageError as err:
            if err.code is ErrorCode.NOT_FOUND:
                raise _Answer(
                    AckCode.ERROR,
                    Hl7Issue(ErrorCondition.UNKNOWN_KEY_IDENTIFIER, "no such order", Location("ORC", 2)),
                ) from None
            if err.code is ErrorCode.CONFLICT:
                raise _Answer(
                    AckCode.ERROR,
                    Hl7Issue(ErrorCondition.APPLICATION_INTERNAL_ERROR, f"unable to cancel: {err.detail}"),
                ) from None
            raise
        log.info("HL7 cancel: job %s is %s", job.id, job.state.value)

    def _call(self, action: Callable[[], T], *, location: Location | None = None) -> T:
        """Run a core call; its errors become ACKs (AE for the message's fault, AR when it may work later).

        `location` is where the ERR points when the core's error names no HL7 location of its own.
        """
        try:
            return action()
        except TriageError as err:
            if err.retryable:
                issue = Hl7Issue(ErrorCondition.APPLICATION_INTERNAL_ERROR, "the service cannot accept work now")
                raise _Answer(AckCode.REJECT, issue, store=False) from None
            condition = {
                ErrorCode.INVALID_INPUT: ErrorCondition.DATA_TYPE_ERROR,
                ErrorCode.NOT_FOUND: ErrorCondition.UNKNOWN_KEY_IDENTIFIER,
                ErrorCode.CONFLICT: ErrorCondition.DUPLICATE_KEY_IDENTIFIER,
            }.get(err.code, ErrorCondition.APPLICATION_INTERNAL_ERROR)
            where = _location(err.location) or location
            raise _Answer(AckCode.ERROR, Hl7Issue(condition, err.detail, where)) from None

    # ------------------------------------------------------------------ answering

    def _ack(
        self,
        header: MessageHeader | None,
        code: AckCode,
        issues: Sequence[Hl7Issue],
        payload: bytes,
        *,
        store: bool,
    ) -> str:
        now = self.service.clock.now()
        ack = build_ack(
            code,
            header.ack_header() if header else salvaged_header(payload),  # MSA-2 echoes MSH-10 whenever it can
            control_id=uuid.uuid4().hex[:20],
            now=now,
            application=self.settings.application,
            facility=self.settings.facility,
            issues=issues,
        )
        if store and header is not None and header.control_id and code is not AckCode.REJECT:
            ack = self.store.record_answer(
                sender=header.sender,
                control_id=header.control_id,
                message_code=header.message_code[:16],
                payload_sha256=_digest(payload),
                ack_code=code.value,
                ack=ack,
                at=now,
            ).ack
        conditions = ",".join(f"{i.condition.code}@{i.location}" if i.location else i.condition.code for i in issues)
        log.info(
            "HL7 %s answered %s%s",
            _described(header) if header else "(unreadable)",
            code.value,
            f" [{log_value(conditions, 200)}]" if conditions else "",
        )
        return ack


#: Longest MSH values stored (hl7_message_log, order keys): MSH-3.1 and MSH-4.1 make the sender key
#: ``MSH-3.1^MSH-4.1`` (<= 129 characters, and with a 64-character order number an order key within 255);
#: MSH-10 is ST 199 in v2.5.
MAX_SENDER_COMPONENT = 64
MAX_CONTROL_ID = 199


def _over_long_header_value(header: MessageHeader) -> Hl7Issue | None:
    """AE 102 (data type error) for a header value longer than radtriage stores, naming the field."""
    for position, components in ((3, header.sending_application), (4, header.sending_facility)):
        if components and len(components[0]) > MAX_SENDER_COMPONENT:
            text = f"value longer than {MAX_SENDER_COMPONENT} characters"
            return Hl7Issue(ErrorCondition.DATA_TYPE_ERROR, text, Location("MSH", position))
    if len(header.control_id) > MAX_CONTROL_ID:
        text = f"value longer than {MAX_CONTROL_ID} characters"
        return Hl7Issue(ErrorCondition.DATA_TYPE_ERROR, text, Location("MSH", 10))
    return None


def _described(header: MessageHeader) -> str:
    """MSH-9, MSH-10 and the sender for a log line, through the one sanitiser (they are the sender's bytes)."""
    return f"{log_value(header.message_code)} {log_value(header.control_id)} from {log_value(header.sender)}"


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _location(text: str | None) -> Location | None:
    """``OBR-4`` or ``OBR-4.1`` (a core error's location) → Location."""
    match = re.fullmatch(r"([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?", text or "")
    if not match:
        return None
    return Location(match.group(1), int(match.group(2)), int(match.group(3)) if match.group(3) else None)
