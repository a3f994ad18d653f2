"""HL7 v2 orders in: bytes → message header → imaging orders, read the way real RIS systems write them.

Supported (see docs/hl7-conformance.md for every field):

* ORM^O01, v2.3, 2.3.1, 2.4 (and 2.5, 2.5.1, where ORM is kept for backward compatibility);
  Study Instance UID in ZDS-1 (IHE Radiology Technical Framework, RAD-4 v2.3.1) or a configured field.
* OMI^O23, v2.5, 2.5.1; Study Instance UID in IPC-3, accession in IPC-1 (IHE RAD-4 v2.5.1).

Priority: ORC-7.6 / OBR-27.6 (TQ, up to v2.4, kept in later versions for backward compatibility) and TQ1-9
(v2.5+). When several are present the highest wins, because the service never lowers the priority an order
arrived with.

Nothing here logs or returns a field value in an error text: errors name the field (``PID-3``), never its
content.
"""

from __future__ import annotations

import codecs
import enum
import re
from dataclasses import dataclass, field
from typing import Any

from ..app.core.domain import ImagingOrder, Priority
from ..app.core.uids import is_dicom_uid
from . import er7
from .ack import AckHeader, ErrorCondition, Hl7Issue, Location
from .priority_map import DEFAULT_PRIORITY_MAP, PriorityMap, UnknownPriorityCode

SOURCE = "hl7"

#: (message type, trigger event) → versions read.
SUPPORTED_MESSAGES: dict[tuple[str, str], tuple[str, ...]] = {
    ("ORM", "O01"): ("2.3", "2.3.1", "2.4", "2.5", "2.5.1"),
    ("OMI", "O23"): ("2.5", "2.5.1"),
    # Radiologists' final reports, read by the report handler the door is given (radtriage.monitoring).
    ("ORU", "R01"): ("2.3", "2.3.1", "2.4", "2.5", "2.5.1"),
}

#: MSH-18 (HL7 table 0211, plus the DICOM-style names some systems use) → Python codec. Only character sets
#: whose bytes for the delimiters and for "MSH" are ASCII can be read before the character set is known.
CHARACTER_SETS: dict[str, str] = {
    "": "ascii",
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "iso8859-1",
    "ISO IR100": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "ISO IR192": "utf-8",
}

#: DICOM PS3.5 9.1: a UID is at most 64 characters of digits and dots.
#: Column sizes of the orders table; a longer value is a data type error, not a database error.
_MAX_LENGTH = {
    "study_instance_uid": 64,
    "patient_ref": 255,
    "source_key": 255,
    "accession_number": 64,
    "placer_order_number": 64,
    "filler_order_number": 64,
    "procedure_code": 64,
    "ordering_provider": 255,
}


class OrderControl(enum.StrEnum):
    """HL7 table 0119, the order control codes this door acts on."""

    NEW = "NW"
    CANCEL = "CA"
    DISCONTINUE = "DC"
    CHANGE = "XO"
    #: Notifications from a filler that the order was cancelled/discontinued: treated like CA/DC.
    CANCELLED = "OC"
    DISCONTINUED = "OD"
    #: Status changed (exam started, completed...): acknowledged, nothing to do for triage.
    STATUS_CHANGED = "SC"

    @property
    def cancels(self) -> bool:
        return self in (
            OrderControl.CANCEL,
            OrderControl.DISCONTINUE,
            OrderControl.CANCELLED,
            OrderControl.DISCONTINUED,
        )


class DecodeError(ValueError):
    def __init__(self, issue: Hl7Issue) -> None:
        super().__init__(issue.text)
        self.issue = issue


@dataclass(frozen=True)
class MessageHeader:
    """MSH, read. Components are kept as tuples so that they can be echoed exactly."""

    sending_application: tuple[str, ...]
    sending_facility: tuple[str, ...]
    receiving_application: tuple[str, ...]
    receiving_facility: tuple[str, ...]
    message_type: str
    trigger_event: str
    control_id: str
    processing_id: str
    version: str
    character_set: str

    @property
    def sender(self) -> str:
        """The sending system, as used for de-duplication and in order keys: MSH-3.1^MSH-4.1."""
        app = self.sending_application[0] if self.sending_application else ""
        facility = self.sending_facility[0] if self.sending_facility else ""
        return f"{app}^{facility}"

    @property
    def message_code(self) -> str:
        return f"{self.message_type}^{self.trigger_event}"

    def ack_header(self) -> AckHeader:
        return AckHeader(
            control_id=self.control_id,
            sending_application=self.sending_application,
            sending_facility=self.sending_facility,
            trigger_event=self.trigger_event,
            version=self.version,
        )


@dataclass(frozen=True)
class OrderContext:
    """The HL7 identifiers of an order that outgoing messages must repeat for the RIS to find it."""

    version: str
    sending_application: tuple[str, ...] = ()
    sending_facility: tuple[str, ...] = ()
    patient_identifiers: tuple[tuple[str, ...], ...] = ()  # PID-3 repetitions, components unescaped
    #: PID-5 (first repetition): echoed so that messages to the RIS carry the required PID-5. Patient data.
    patient_name: tuple[str, ...] = ()
    placer_order_number: tuple[str, ...] = ()  # EI components
    filler_order_number: tuple[str, ...] = ()
    universal_service_id: tuple[str, ...] = ()  # OBR-4 components
    accession_number: str = ""
    requested_procedure_id: str = ""
    scheduled_procedure_step_id: str = ""
    modality: str = ""
    #: MSH-9.1 of the order ("ORM", "OMI"): updates go back in the sender's own dialect (`outbound.dialect`).
    message_type: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sending_application": list(self.sending_application),
            "sending_facility": list(self.sending_facility),
            "patient_identifiers": [list(r) for r in self.patient_identifiers],
            "patient_name": list(self.patient_name),
            "placer_order_number": list(self.placer_order_number),
            "filler_order_number": list(self.filler_order_number),
            "universal_service_id": list(self.universal_service_id),
            "accession_number": self.accession_number,
            "requested_procedure_id": self.requested_procedure_id,
            "scheduled_procedure_step_id": self.scheduled_procedure_step_id,
            "modality": self.modality,
            "message_type": self.message_type,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrderContext:
        return cls(
            version=str(data.get("version", "")),
            sending_application=tuple(data.get("sending_application", ())),
            sending_facility=tuple(data.get("sending_facility", ())),
            patient_identifiers=tuple(tuple(r) for r in data.get("patient_identifiers", ())),
            patient_name=tuple(data.get("patient_name", ())),
            placer_order_number=tuple(data.get("placer_order_number", ())),
            filler_order_number=tuple(data.get("filler_order_number", ())),
            universal_service_id=tuple(data.get("universal_service_id", ())),
            accession_number=str(data.get("accession_number", "")),
            requested_procedure_id=str(data.get("requested_procedure_id", "")),
            scheduled_procedure_step_id=str(data.get("scheduled_procedure_step_id", "")),
            modality=str(data.get("modality", "")),
            message_type=str(data.get("message_type", "")),
        )


@dataclass(frozen=True)
class OrderRequest:
    """One ORC group of an order message: what to do (ORC-1) with which order."""

    control: OrderControl
    order: ImagingOrder
    context: OrderContext
    #: Where the Study Instance UID was read from, to point at it when it conflicts with another order.
    study_uid_location: Location | None = None


@dataclass(frozen=True)
class ReaderOptions:
    #: Where ORM messages carry the Study Instance UID, as ``SEG-field`` or ``SEG-field.component``.
    study_uid_field: str = "ZDS-1"
    priority_map: PriorityMap = field(default_factory=lambda: DEFAULT_PRIORITY_MAP)


# ---------------------------------------------------------------------------------------------- bytes → text


def decode_message(payload: bytes) -> tuple[str, str | None]:
    """The message text and, when the bytes did not match MSH-18, a note saying so (for the log).

    MSH-18 names the character set. Read leniently: a message declared ASCII (or with no MSH-18) that holds
    8-bit bytes is read as UTF-8 when it is valid UTF-8, else as Windows-1252, which is what such senders use.
    Raises `DecodeError` (AE, 103 at MSH-18) for a character set this door cannot read.
    """
    first_line = re.split(rb"\r|\n", payload.lstrip(b"\xef\xbb\xbf\x0b\r\n\t "), maxsplit=1)[0]
    header = first_line.decode("latin-1")  # every supported charset is ASCII-compatible up to MSH-18
    charset = ""
    try:
        d = er7.Delimiters.from_header(header)
        fields = header.split(d.field)
        if len(fields) > 17:
            charset = fields[17].split(d.repetition)[0].strip().upper()
    except er7.Er7Error:
        pass  # the caller's parse reports it
    codec = CHARACTER_SETS.get(charset)
    if codec is None:
        raise DecodeError(
            Hl7Issue(ErrorCondition.TABLE_VALUE_NOT_FOUND, "character set not supported", Location("MSH", 18))
        )
    try:
        return payload.decode(codec), None
    except UnicodeDecodeError:
        pass
    if codec == "ascii":
        try:
            return payload.decode("utf-8"), "8-bit text in a message declared ASCII, read as UTF-8"
        except UnicodeDecodeError:
            return payload.decode("cp1252", errors="replace"), "8-bit text in a message declared ASCII, read as CP1252"
    return payload.decode("cp1252", errors="replace"), f"bytes not valid in {codecs.lookup(codec).name}, read as CP1252"


# ---------------------------------------------------------------------------------------------- MSH


def read_header(message: er7.Message) -> MessageHeader:
    msh = message.msh
    type_rep = msh.repetitions(9)
    message_type = type_rep[0].component(1).upper() if type_rep else ""
    trigger = type_rep[0].component(2).upper() if type_rep else ""
    if message_type and not trigger:
        # v2.2-style "ORM" without a trigger: ORM and OMI each have exactly one trigger event.
        trigger = next((t for m, t in SUPPORTED_MESSAGES if m == message_type), "")
    return MessageHeader(
        sending_application=_components(msh, 3),
        sending_facility=_components(msh, 4),
        receiving_application=_components(msh, 5),
        receiving_facility=_components(msh, 6),
        message_type=message_type,
        trigger_event=trigger,
        control_id=msh.value(10),
        processing_id=msh.value(11).upper(),
        version=msh.value(12),
        character_set=msh.value(18).upper(),
    )


def _components(segment: er7.Segment, position: int) -> tuple[str, ...]:
    reps = segment.repetitions(position)
    if not reps:
        return ()
    values = list(reps[0].components())
    while values and not values[-1]:
        values.pop()
    return tuple(values)


def check_supported(header: MessageHeader, accepted_processing_ids: frozenset[str]) -> Hl7Issue | None:
    """Why the message must be rejected (AR) before its content is read, or None."""
    if not header.message_type:
        return Hl7Issue(ErrorCondition.REQUIRED_FIELD_MISSING, "message type missing", Location("MSH", 9))
    types = {t for t, _ in SUPPORTED_MESSAGES}
    if header.message_type not in types:
        return Hl7Issue(ErrorCondition.UNSUPPORTED_MESSAGE_TYPE, "message type not supported", Location("MSH", 9, 1))
    versions = SUPPORTED_MESSAGES.get((header.message_type, header.trigger_event))
    if versions is None:
        return Hl7Issue(ErrorCondition.UNSUPPORTED_EVENT_CODE, "trigger event not supported", Location("MSH", 9, 2))
    if header.processing_id and header.processing_id not in accepted_processing_ids:
        return Hl7Issue(ErrorCondition.UNSUPPORTED_PROCESSING_ID, "processing id not accepted", Location("MSH", 11))
    if header.version not in versions:
        return Hl7Issue(
            ErrorCondition.UNSUPPORTED_VERSION_ID,
            f"{header.message_code} is read in versions {', '.join(versions)}",
            Location("MSH", 12),
        )
    return None


# ---------------------------------------------------------------------------------------------- orders


@dataclass
class _OrderGroup:
    orc: er7.Segment | None = None
    obr: er7.Segment | None = None
    tq1: list[er7.Segment] = field(default_factory=list)
    ipc: list[er7.Segment] = field(default_factory=list)
    others: list[er7.Segment] = field(default_factory=list)  # Z-segments and anything else after ORC


def _order_groups(message: er7.Message) -> tuple[list[_OrderGroup], list[Hl7Issue]]:
    """Split the flat segment list into ORC groups (each ORC starts one; TQ1, OBR, IPC, Z... belong to it)."""
    groups: list[_OrderGroup] = []
    issues: list[Hl7Issue] = []
    for seg in message.segments[1:]:
        if seg.name == "ORC":
            groups.append(_OrderGroup(orc=seg))
        elif not groups:
            if seg.name in ("OBR", "TQ1", "IPC"):
                issues.append(
                    Hl7Issue(ErrorCondition.SEGMENT_SEQUENCE_ERROR, f"{seg.name} before any ORC", Location(seg.name))
                )
        elif seg.name == "OBR":
            if groups[-1].obr is not None:
                issues.append(
                    Hl7Issue(
                        ErrorCondition.SEGMENT_SEQUENCE_ERROR,
                        "second OBR in one order group",
                        Location("OBR", sequence=seg.sequence),
                    )
                )
            else:
                groups[-1].obr = seg
        elif seg.name == "TQ1":
            groups[-1].tq1.append(seg)
        elif seg.name == "IPC":
            groups[-1].ipc.append(seg)
        else:
            groups[-1].others.append(seg)
    return groups, issues


def read_orders(
    message: er7.Message, header: MessageHeader, options: ReaderOptions
) -> tuple[list[OrderRequest], list[Hl7Issue]]:
    """Every order in the message, or the reasons it cannot be accepted (AE). Both lists may be non-empty;
    the caller acts on the orders only when there is no issue."""
    issues: list[Hl7Issue] = []
    if message.bad_lines:
        issues.append(
            Hl7Issue(
                ErrorCondition.SEGMENT_SEQUENCE_ERROR,
                f"line {message.bad_lines[0]} is not a segment (no valid segment id)",
            )
        )
    groups, group_issues = _order_groups(message)
    issues += group_issues
    if not groups:
        issues.append(Hl7Issue(ErrorCondition.SEGMENT_SEQUENCE_ERROR, "no ORC segment", Location("ORC")))
        return [], issues
    pid = message.first("PID")
    orders: list[OrderRequest] = []
    for group in groups:
        request, group_issues = _read_order(group, pid, header, options)
        issues += group_issues
        if request is not None:
            orders.append(request)
    return orders, issues


def _read_order(
    group: _OrderGroup, pid: er7.Segment | None, header: MessageHeader, options: ReaderOptions
) -> tuple[OrderRequest | None, list[Hl7Issue]]:
    assert group.orc is not None
    orc, obr = group.orc, group.obr
    issues: list[Hl7Issue] = []
    seq = orc.sequence

    control_text = orc.value(1).upper()
    control: OrderControl | None = None
    if not control_text:
        issues.append(
            Hl7Issue(ErrorCondition.REQUIRED_FIELD_MISSING, "order control missing", Location("ORC", 1, sequence=seq))
        )
    else:
        try:
            control = OrderControl(control_text)
        except ValueError:
            issues.append(
                Hl7Issue(
                    ErrorCondition.TABLE_VALUE_NOT_FOUND,
                    "order control code not supported",
                    Location("ORC", 1, sequence=seq),
                )
            )

    placer = _ei(orc, 2) or (_ei(obr, 2) if obr else ())
    filler = _ei(orc, 3) or (_ei(obr, 3) if obr else ())
    if placer and placer[0]:
        key = f"{header.sender}|{placer[0]}"
    elif filler and filler[0]:
        key = f"{header.sender}|filler:{filler[0]}"
    else:
        key = ""
        issues.append(
            Hl7Issue(
                ErrorCondition.REQUIRED_FIELD_MISSING,
                "placer order number missing (ORC-2, OBR-2; or filler ORC-3)",
                Location("ORC", 2, sequence=seq),
            )
        )
    if control is None or issues:
        return None, issues

    # Only NW and XO describe an order; for a cancellation or a status change the key is enough, and the rest
    # of the order is read but need not be valid.
    checked = issues if control in _CREATES else []
    patient_ref, patient_ids = _patient(pid, checked)
    study_uid, uid_location = _study_uid(group, header, options, checked)
    priority = _priority(group, options, checked)
    accession, accession_location = _accession(group)
    procedure = _ce(obr, 4) if obr else ()
    provider = _provider(orc) or (_provider(obr) if obr else "")
    context = OrderContext(
        version=header.version,
        message_type=header.message_type,
        sending_application=header.sending_application,
        sending_facility=header.sending_facility,
        patient_identifiers=patient_ids,
        patient_name=_components(pid, 5) if pid is not None else (),
        placer_order_number=placer,
        filler_order_number=filler,
        universal_service_id=procedure,
        accession_number=accession,
        requested_procedure_id=_first(group.ipc, 2) or (obr.value(19) if obr else ""),
        scheduled_procedure_step_id=_first(group.ipc, 4) or (obr.value(20) if obr else ""),
        modality=_first(group.ipc, 5) or (obr.value(24) if obr else ""),
    )
    order = ImagingOrder(
        study_instance_uid=study_uid,
        patient_ref=patient_ref,
        source=SOURCE,
        source_key=key,
        requested_priority=priority,
        accession_number=accession or None,
        placer_order_number=(placer[0] if placer else "") or None,
        filler_order_number=(filler[0] if filler else "") or None,
        procedure_code=(procedure[0] if procedure else "") or None,
        ordering_provider=provider or None,
    )
    if control in _CREATES:
        issues += _too_long(order, seq, uid_location, accession_location)
    return OrderRequest(control, order, context, uid_location), issues


_CREATES = (OrderControl.NEW, OrderControl.CHANGE)


def _ei(segment: er7.Segment | None, position: int) -> tuple[str, ...]:
    if segment is None:
        return ()
    return _components(segment, position)


def _ce(segment: er7.Segment, position: int) -> tuple[str, ...]:
    return _components(segment, position)


def _first(segments: list[er7.Segment], position: int) -> str:
    return next((v for s in segments if (v := s.value(position))), "")


def _patient(pid: er7.Segment | None, issues: list[Hl7Issue]) -> tuple[str, tuple[tuple[str, ...], ...]]:
    """PID-3 → ``system|value``: the medical record number (CX-5 = MR) if there is one, else the first id.
    The system is the assigning authority's universal id (CX-4.2) or namespace (CX-4.1)."""
    if pid is None:
        issues.append(Hl7Issue(ErrorCondition.SEGMENT_SEQUENCE_ERROR, "PID segment missing", Location("PID")))
        return "", ()
    reps = [r for r in pid.repetitions(3) if r.component(1)]
    if not reps:
        issues.append(Hl7Issue(ErrorCondition.REQUIRED_FIELD_MISSING, "patient identifier missing", Location("PID", 3)))
        return "", ()
    chosen = next((r for r in reps if r.component(5).upper() == "MR"), reps[0])
    system = chosen.component(4, 2) or chosen.component(4, 1)
    all_ids = tuple(tuple(c for c in r.components()) for r in reps)
    return f"{system}|{chosen.component(1)}", all_ids


def _parse_field_spec(spec: str) -> tuple[str, int, int]:
    """``ZDS-1`` → ("ZDS", 1, 1); ``OBR-20.2`` → ("OBR", 20, 2)."""
    match = re.fullmatch(r"([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?", spec.strip().upper())
    if not match:
        raise ValueError(f"not a field reference: {spec!r} (expected e.g. ZDS-1 or OBR-20.1)")
    return match.group(1), int(match.group(2)), int(match.group(3) or 1)


def _study_uid(
    group: _OrderGroup, header: MessageHeader, options: ReaderOptions, issues: list[Hl7Issue]
) -> tuple[str, Location | None]:
    candidates: list[tuple[str, Location]] = []
    for ipc in group.ipc:
        candidates.append((ipc.value(3), Location("IPC", 3, sequence=ipc.sequence)))
    seg_name, position, component = _parse_field_spec(options.study_uid_field)
    where = Location(seg_name, position, component if component != 1 else None)
    for seg in [group.orc, group.obr, *group.others]:
        if seg is not None and seg.name == seg_name:
            candidates.append((seg.value(position, component), where))
    for value, location in candidates:
        if value:
            uid = value.strip()
            if not is_dicom_uid(uid):
                issues.append(
                    Hl7Issue(ErrorCondition.DATA_TYPE_ERROR, "Study Instance UID is not a valid DICOM UID", location)
                )
            return uid, location
    expected = Location("IPC", 3) if header.message_type == "OMI" else where
    issues.append(Hl7Issue(ErrorCondition.REQUIRED_FIELD_MISSING, "Study Instance UID missing", expected))
    return "", None


def _priority(group: _OrderGroup, options: ReaderOptions, issues: list[Hl7Issue]) -> Priority:
    """The highest of TQ1-9, ORC-7.6 and OBR-27.6 (each may repeat); routine when none is given."""
    found: list[tuple[str, Location]] = []
    for tq1 in group.tq1:
        for rep in tq1.repetitions(9):
            found.append((rep.component(1), Location("TQ1", 9, sequence=tq1.sequence)))
    for seg, position in ((group.orc, 7), (group.obr, 27)):
        if seg is not None:
            for rep in seg.repetitions(position):
                found.append((rep.component(6), Location(seg.name, position, 6, sequence=seg.sequence)))
    priority = Priority.ROUTINE
    for code, location in found:
        try:
            priority = max(priority, options.priority_map.from_hl7(code))
        except UnknownPriorityCode:
            issues.append(Hl7Issue(ErrorCondition.TABLE_VALUE_NOT_FOUND, "priority code not in table 0485", location))
    return priority


def _accession(group: _OrderGroup) -> tuple[str, Location]:
    """IPC-1 (v2.5+), else OBR-18 (placer field 1, where IHE RAD-4 v2.3.1 puts the accession number)."""
    value = _first(group.ipc, 1)
    if value or group.obr is None:
        return value, Location("IPC", 1)
    return group.obr.value(18), Location("OBR", 18)


def _provider(segment: er7.Segment | None) -> str:
    """ORC-12 / OBR-16 (XCN): the id, or family^given when there is no id."""
    if segment is None:
        return ""
    position = 12 if segment.name == "ORC" else 16
    reps = segment.repetitions(position)
    if not reps:
        return ""
    rep = reps[0]
    return rep.component(1) or "^".join(p for p in (rep.component(2), rep.component(3)) if p)


def _too_long(
    order: ImagingOrder, sequence: int, uid_location: Location | None, accession_location: Location
) -> list[Hl7Issue]:
    where = {
        "study_instance_uid": uid_location or Location("IPC", 3),
        "patient_ref": Location("PID", 3),
        "source_key": Location("ORC", 2, sequence=sequence),
        "accession_number": accession_location,
        "placer_order_number": Location("ORC", 2, sequence=sequence),
        "filler_order_number": Location("ORC", 3, sequence=sequence),
        "procedure_code": Location("OBR", 4),
        "ordering_provider": Location("ORC", 12, sequence=sequence),
    }
    issues = []
    for name, limit in _MAX_LENGTH.items():
        if name == "study_instance_uid":
            continue  # checked with its syntax
        value = getattr(order, name)
        if isinstance(value, str) and len(value) > limit:
            issues.append(
                Hl7Issue(ErrorCondition.DATA_TYPE_ERROR, f"value longer than {limit} characters", where[name])
            )
    return issues
