"""Original-mode acknowledgements (HL7 v2.5.1 section 2.9.2) with ERR segments (section 2.15.5).

* AA: the message was processed and what it asked for is committed.
* AE: the message was understood but is wrong (a required field missing, a code unknown); sending it again
  unchanged will fail again, so a sender must not resend it blindly.
* AR: the message was rejected for a reason unrelated to its content (unsupported type, version or processing
  id; not HL7 at all; the service cannot accept work now); the sender may try again later.

The ERR segment carries an HL7 table 0357 code and where the problem is. In v2.5 and later that is ERR-2
(error location, ERL) + ERR-3 (code) + ERR-4 (severity) + ERR-8 (user message); v2.3 and v2.4 have only ERR-1
(ELD: segment^sequence^field^code), so the text goes into MSA-3 there. The texts never contain field values,
so no patient data ends up in an ACK or in the message log.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from . import er7


class AckCode(enum.StrEnum):
    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


class ErrorCondition(enum.Enum):
    """HL7 table 0357 (message error condition codes)."""

    MESSAGE_ACCEPTED = ("0", "Message accepted")
    SEGMENT_SEQUENCE_ERROR = ("100", "Segment sequence error")
    REQUIRED_FIELD_MISSING = ("101", "Required field missing")
    DATA_TYPE_ERROR = ("102", "Data type error")
    TABLE_VALUE_NOT_FOUND = ("103", "Table value not found")
    UNSUPPORTED_MESSAGE_TYPE = ("200", "Unsupported message type")
    UNSUPPORTED_EVENT_CODE = ("201", "Unsupported event code")
    UNSUPPORTED_PROCESSING_ID = ("202", "Unsupported processing id")
    UNSUPPORTED_VERSION_ID = ("203", "Unsupported version id")
    UNKNOWN_KEY_IDENTIFIER = ("204", "Unknown key identifier")
    DUPLICATE_KEY_IDENTIFIER = ("205", "Duplicate key identifier")
    APPLICATION_RECORD_LOCKED = ("206", "Application record locked")
    APPLICATION_INTERNAL_ERROR = ("207", "Application internal error")

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def text(self) -> str:
        return self.value[1]


@dataclass(frozen=True)
class Location:
    """Where an error is: segment id, its sequence among segments of that id, field, component (ERL)."""

    segment: str
    field: int | None = None
    component: int | None = None
    sequence: int = 1

    def __str__(self) -> str:
        text = self.segment if self.field is None else f"{self.segment}-{self.field}"
        return text if self.component is None else f"{text}.{self.component}"

    def erl(self) -> tuple[str, ...]:
        """ERR-2 (v2.5+): segment ID ^ sequence ^ field position ^ field repetition ^ component."""
        parts = [self.segment, str(self.sequence), "" if self.field is None else str(self.field)]
        if self.component is not None:
            parts += ["1", str(self.component)]
        return tuple(parts)


@dataclass(frozen=True)
class Hl7Issue:
    """One reason a message is not accepted. `text` names what is wrong, never a value from the message."""

    condition: ErrorCondition
    text: str
    location: Location | None = None


@dataclass(frozen=True)
class AckHeader:
    """What the ACK echoes from the message it answers (all may be empty when the message was unreadable)."""

    control_id: str = ""
    sending_application: tuple[str, ...] = ()
    sending_facility: tuple[str, ...] = ()
    trigger_event: str = ""
    version: str = ""


def salvaged_header(payload: bytes) -> AckHeader:
    """What can still be echoed from a message whose MSH could not be read (odd or duplicated encoding characters,
    a broken MSH-2): MSH-10 and MSH-12, found by the field separator alone (MSH-1, the fourth character).

    HL7 v2.5.1 section 2.9.2: MSA-2 is how the sender matches an answer to its message, so an AR that echoes
    MSH-10 can be acted on, and one with an empty MSA-2 cannot. The values are taken as written (up to the first
    component separator a sender is likely to use) and escaped when the ACK is built.
    """
    text = payload.decode("latin-1")
    if not text.startswith("MSH") or len(text) < 5:
        return AckHeader()
    segment = re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]
    separator = text[3]
    if separator.isalnum() or separator.isspace():
        return AckHeader()
    fields = segment.split(separator)  # fields[0] = "MSH", fields[n - 1] = MSH-n (MSH-1 is the separator itself)
    control_id = fields[9].strip() if len(fields) > 9 else ""
    version = fields[11].split("^", 1)[0].strip() if len(fields) > 11 else ""
    if len(control_id) > 199 or not control_id.isprintable():
        control_id = ""
    return AckHeader(control_id=control_id, version=version if version in ACK_VERSIONS else "")


#: The version used to answer a message whose own version cannot be used.
FALLBACK_VERSION = "2.5.1"
ACK_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")


def _at_least_25(version: str) -> bool:
    parts = tuple(int(p) for p in version.split(".") if p.isdigit())
    return parts >= (2, 5)


def build_ack(
    code: AckCode,
    answering: AckHeader,
    *,
    control_id: str,
    now: datetime,
    application: tuple[str, ...],
    facility: tuple[str, ...] = (),
    issues: Sequence[Hl7Issue] = (),
) -> str:
    """An ACK for `answering`, as ER7 text (CR-separated). Emitted strictly: standard delimiters, no MSH-18
    (the text is ASCII), the version of the message answered when it is one we can write."""
    version = answering.version if answering.version in ACK_VERSIONS else FALLBACK_VERSION
    modern = _at_least_25(version)
    msg_type: er7.FieldRepetition = ("ACK", answering.trigger_event) if answering.trigger_event else "ACK"
    if version != "2.3" and version != "2.3.1" and answering.trigger_event:
        msg_type = ("ACK", answering.trigger_event, "ACK")
    msh = er7.encode_segment(
        "MSH",
        [
            application,
            facility or None,
            answering.sending_application or None,
            answering.sending_facility or None,
            er7.timestamp(now),
            None,
            msg_type,
            control_id,
            "P",
            version,
        ],
    )
    user_text = "; ".join(_issue_text(i) for i in issues)
    msa_fields: list[er7.FieldValue] = [code.value, answering.control_id]
    if user_text and not modern:
        msa_fields.append(user_text[:80])  # MSA-3 is ST(80) before v2.5
    segments = [msh, er7.encode_segment("MSA", msa_fields)]
    for issue in issues:
        segments.append(_err_segment(issue, modern))
    return er7.encode_message(segments)


def _issue_text(issue: Hl7Issue) -> str:
    where = f" ({issue.location})" if issue.location else ""
    return f"{issue.text}{where}"


def _err_segment(issue: Hl7Issue, modern: bool) -> str:
    condition = (issue.condition.code, issue.condition.text, "HL70357")
    if modern:
        return er7.encode_segment(
            "ERR",
            [
                None,  # ERR-1, kept for backward compatibility only
                issue.location.erl() if issue.location else None,
                condition,
                "E",
                None,
                None,
                None,
                _issue_text(issue)[:250],  # ERR-8 user message
            ],
        )
    loc = issue.location
    eld: tuple[er7.Component, ...] = (
        loc.segment if loc else "",
        str(loc.sequence) if loc else "",
        str(loc.field) if loc and loc.field is not None else "",
        condition,
    )
    return er7.encode_segment("ERR", [eld])
