"""HL7 v2 "pipe and hat" (ER7) encoding: read leniently, write strictly.

HL7 v2.5.1 Chapter 2, section 2.5 (message construction rules) and 2.7 (use of escape sequences in text
fields). The reader accepts what real interfaces send: CR, LF or CRLF between segments, blank lines, trailing
separators, any encoding characters declared in MSH-2. The writer emits CR between segments, the standard
encoding characters ``^~\\&`` and escapes every delimiter and control character, so that what it writes can be
read back unchanged (a property the tests check with Hypothesis).

Why not hl7apy here: its tolerant parser loses the position of empty components in Z-segments and does not
unescape, and its builder escapes ``^`` but not ``&`` in components. This module is small, typed and exact;
hl7apy and python-hl7 are used by the tests as independent readers of what it writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}\Z")
#: Segment separators seen in the wild. HL7 says CR only; many systems write LF or CRLF.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class Er7Error(ValueError):
    """The text cannot be read as an HL7 v2 message at all (no MSH, unusable encoding characters)."""

    def __init__(self, detail: str, *, field_position: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field_position = field_position


@dataclass(frozen=True)
class Delimiters:
    """The five delimiters declared in MSH-1 and MSH-2 (HL7 v2.5.1 section 2.5.4)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as written."""
        return self.component + self.repetition + self.escape + self.subcomponent

    @classmethod
    def from_header(cls, text: str) -> Delimiters:
        """Read MSH-1 and MSH-2 from the start of a message. Raises `Er7Error` when they are unusable.

        MSH-2 must hold four distinct characters (v2.7 adds a fifth, the truncation character, which is read
        and ignored here). None of them may be a letter, a digit, a space or a line break.
        """
        if not text.startswith("MSH") or len(text) < 8:
            raise Er7Error("the message does not begin with an MSH segment")
        field_sep = text[3]
        end = text.find(field_sep, 4)
        line_end = _LINE_BREAK.search(text, 4)
        if end < 0 or (line_end is not None and line_end.start() < end):
            raise Er7Error("MSH-2 (encoding characters) is not followed by a field separator", field_position=2)
        encoding = text[4:end]
        delimiters = [field_sep, *encoding]
        if len(encoding) not in (4, 5) or len(set(delimiters)) != len(delimiters):
            raise Er7Error("MSH-2 must hold four distinct encoding characters", field_position=2)
        if any(ch.isalnum() or ch.isspace() for ch in delimiters):
            raise Er7Error("delimiters must not be letters, digits or white space", field_position=2)
        return cls(field_sep, encoding[0], encoding[1], encoding[2], encoding[3])


STANDARD = Delimiters()


# ---------------------------------------------------------------------------------------------- escaping


def escape(text: str, d: Delimiters = STANDARD) -> str:
    """Escape a value for use inside a (sub)component (section 2.7.1).

    Control characters (CR, LF, the MLLP block characters, ...) become ``\\Xhh\\`` so that the value can never
    end a segment or an MLLP frame.
    """
    out: list[str] = []
    e = d.escape
    for ch in text:
        if ch == d.field:
            out.append(f"{e}F{e}")
        elif ch == d.component:
            out.append(f"{e}S{e}")
        elif ch == d.subcomponent:
            out.append(f"{e}T{e}")
        elif ch == d.repetition:
            out.append(f"{e}R{e}")
        elif ch == e:
            out.append(f"{e}E{e}")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"{e}X{ord(ch):02X}{e}")
        else:
            out.append(ch)
    return "".join(out)


def unescape(text: str, d: Delimiters = STANDARD) -> str:
    """Undo `escape`, leniently: formatting escapes (``\\H\\``, ``\\.br\\``...) are dropped or turned into a
    line break, and an escape character without a closing one is kept as written."""
    e = d.escape
    if e not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        close = text.find(e, i + 1) if ch == e else -1
        if ch != e or close < 0:
            out.append(ch)
            i += 1
            continue
        code = text[i + 1 : close]
        simple = {"F": d.field, "S": d.component, "T": d.subcomponent, "R": d.repetition, "E": e}
        if code in simple:
            out.append(simple[code])
        elif code.startswith("X") and len(code) > 1 and len(code) % 2 == 1 and _is_hex(code[1:]):
            out.append(bytes.fromhex(code[1:]).decode("latin-1"))
        elif code in (".br", "N", "H") or code.startswith((".sp", ".in", ".ti", ".fi", ".nf", ".ce", "Z", "C", "M")):
            out.append("\n" if code in (".br",) or code.startswith(".sp") else "")
        else:  # not an escape sequence we know: keep it literally rather than lose data
            out.append(text[i : close + 1])
        i = close + 1
    return "".join(out)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Repetition:
    """One repetition of a field: components and their subcomponents, still escaped."""

    raw: str
    d: Delimiters

    def component(self, position: int = 1, subcomponent: int = 1) -> str:
        """The unescaped value at ``position`` (1-based), or "" when absent."""
        components = self.raw.split(self.d.component)
        if position > len(components):
            return ""
        subs = components[position - 1].split(self.d.subcomponent)
        if subcomponent > len(subs):
            return ""
        return unescape(subs[subcomponent - 1], self.d).strip()

    def components(self) -> tuple[str, ...]:
        """Every component, unescaped, with subcomponents joined back with the standard ``&``."""
        return tuple(
            "&".join(unescape(sub, self.d) for sub in comp.split(self.d.subcomponent))
            for comp in self.raw.split(self.d.component)
        )

    @property
    def is_empty(self) -> bool:
        return not self.raw.replace(self.d.component, "").replace(self.d.subcomponent, "").strip()


@dataclass(frozen=True)
class Segment:
    """One segment. `position` is its 1-based place in the message (for ERR locations)."""

    name: str
    fields: tuple[str, ...]  # fields[n] is field n, raw; fields[0] is the segment name
    d: Delimiters
    position: int
    #: How many segments with the same name came before this one, plus one (HL7 "set/sequence" in ERR-2).
    sequence: int = 1

    def raw(self, position: int) -> str:
        if position >= len(self.fields):
            return ""
        return self.fields[position]

    def repetitions(self, position: int) -> list[Repetition]:
        """Every non-empty repetition of a field. MSH-2 is never split."""
        raw = self.raw(position)
        if self.name == "MSH" and position in (1, 2):
            return [Repetition(raw, self.d)] if raw else []
        reps = [Repetition(r, self.d) for r in raw.split(self.d.repetition)]
        return [r for r in reps if not r.is_empty]

    def value(self, position: int, component: int = 1, subcomponent: int = 1) -> str:
        """The unescaped value of the first non-empty repetition, or ""."""
        if self.name == "MSH" and position in (1, 2):
            return self.raw(position)
        reps = self.repetitions(position)
        return reps[0].component(component, subcomponent) if reps else ""


@dataclass(frozen=True)
class Message:
    delimiters: Delimiters
    segments: tuple[Segment, ...]
    #: Lines that are not segments (no valid segment id): 1-based line numbers, for an AE 100.
    bad_lines: tuple[int, ...] = field(default=())

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)


def split_segments(text: str) -> list[str]:
    """Segments, whatever line breaks separate them; blank lines and stray control characters at line ends dropped."""
    lines = (line.rstrip("\x00\x1a\x1c\x0b") for line in _LINE_BREAK.split(text))
    return [line for line in lines if line.strip()]


def parse(text: str) -> Message:
    """Read an HL7 v2 message. Raises `Er7Error` only when there is no usable MSH segment."""
    text = text.lstrip("\ufeff\x0b\r\n\t ")
    delimiters = Delimiters.from_header(text)
    segments: list[Segment] = []
    bad_lines: list[int] = []
    seen: dict[str, int] = {}
    for line_number, line in enumerate(split_segments(text), start=1):
        name = line[:3].upper()
        if not SEGMENT_NAME.match(name) or (len(line) > 3 and line[3] != delimiters.field):
            bad_lines.append(line_number)
            continue
        parts = line.split(delimiters.field)
        if name == "MSH":
            # MSH-1 is the field separator itself, so MSH-n is parts[n - 1] (section 2.14.9.1).
            parts = [name, delimiters.field, *parts[1:]]
        else:
            parts[0] = name
        seen[name] = seen.get(name, 0) + 1
        segments.append(Segment(name, tuple(parts), delimiters, len(segments) + 1, seen[name]))
    return Message(delimiters, tuple(segments), tuple(bad_lines))


# ---------------------------------------------------------------------------------------------- writing

#: A component is a string or a tuple of subcomponents.
Component = str | tuple[str, ...]
#: A field repetition is a string (one component) or a tuple of components.
FieldRepetition = str | tuple[Component, ...]
#: A field is empty (None), one repetition, or a list of repetitions.
FieldValue = FieldRepetition | list[FieldRepetition] | None


def _encode_component(value: Component, d: Delimiters) -> str:
    if isinstance(value, str):
        return escape(value, d)
    return d.subcomponent.join(escape(v, d) for v in value).rstrip(d.subcomponent)


def _encode_repetition(value: FieldRepetition, d: Delimiters) -> str:
    if isinstance(value, str):
        return escape(value, d)
    return d.component.join(_encode_component(c, d) for c in value).rstrip(d.component)


def encode_field(value: FieldValue, d: Delimiters = STANDARD) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return d.repetition.join(_encode_repetition(r, d) for r in value)
    return _encode_repetition(value, d)


def encode_segment(name: str, fields: Sequence[FieldValue], d: Delimiters = STANDARD) -> str:
    """One segment; ``fields[0]`` is field 1. For MSH, pass fields from MSH-3 on (MSH-1/2 are written here)."""
    if not SEGMENT_NAME.match(name):
        raise ValueError(f"not a segment id: {name!r}")
    encoded = [encode_field(f, d) for f in fields]
    while encoded and not encoded[-1]:
        encoded.pop()
    if name == "MSH":
        return d.field.join([name, d.encoding_characters, *encoded])
    return d.field.join([name, *encoded])


def encode_message(segments: Sequence[str]) -> str:
    """Segments joined with CR, the only separator HL7 allows on the wire (section 2.5.3)."""
    return "\r".join(segments)


def timestamp(moment: datetime) -> str:
    """HL7 DTM/TS to the second, in UTC with an explicit offset (``YYYYMMDDHHMMSS+0000``)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
