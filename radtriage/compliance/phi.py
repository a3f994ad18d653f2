"""Keeping patient data out of logs: a redacting `logging.Filter`, and a handler that collects every line.

The rule of the code base is that nothing logs patient data in the first place (log job ids, error codes,
route patterns). `PhiRedactingFilter` is the second line of defence for what slips through: values that a door
registers as PHI while it handles a message (names, identifiers, birth dates: `PhiRegistry.register`) and
shapes that are PHI whatever their value — a whole HL7 v2 PID, NK1 or PV1 segment, a FHIR ``Patient/<id>``
reference. It rewrites the message, its arguments and the formatted traceback of each record.

Install it on every handler (`install_phi_filter`): filters on a logger do not see records that propagate from
its children, filters on handlers see everything the handler writes.

Protocol values that are not PHI but come from outside (MSH-3/4/9/10, a peer's certificate name, a RIS's ACK
text) go through one sanitiser before they are logged, `log_value`: control characters are escaped, so a
sender cannot forge log lines or drive a terminal with escape sequences, and long values are cut. The filter
escapes control characters in every message as well, as a second line of defence.

Third-party libraries log what they see: dicomweb-client writes Study/Series/SOP Instance UIDs at INFO, and
retrying writes whole tracebacks with request URLs (which hold UIDs) at WARNING. `quiet_third_party_loggers`
sets them to WARNING (retrying: ERROR) by default; the CLI calls it when it configures logging.

`LogCollector` captures every formatted line (traceback included) so a test can assert that marker values
never reach a log.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

REDACTED = "<redacted>"
#: Shorter values are not registered: redacting every "M" or "12" would garble logs and protect nothing.
MIN_VALUE_LENGTH = 3

#: Segments whose every field is about the patient (HL7 v2.5.1 chapter 3: PID, PD1, NK1, PV1, PV2; and the
#: insurance segments). The segment id is kept so the log still says which segment it was.
_SEGMENTS = re.compile(r"(?m)(?<![A-Z0-9])(PID|PD1|NK1|PV1|PV2|IN1|IN2|GT1|MRG)\|[^\r\n]*")
#: FHIR literal references to a Patient (the id is an identifier of the patient).
_PATIENT_REFERENCE = re.compile(r"\bPatient/[A-Za-z0-9\-.]{1,64}")


#: Longest protocol value written to a log line (a hostile sender's 300-character MSH-3 is cut, not repeated).
MAX_LOGGED_VALUE = 64
#: C0 and C1 control characters and DEL; tab and newline are kept in whole messages (multi-line messages).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_EXCEPT_LAYOUT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

#: Third-party loggers and the lowest level they may log at by default.
THIRD_PARTY_LOG_LEVELS = {
    "dicomweb_client": logging.WARNING,  # logs every Study/Series/SOP Instance UID it retrieves at INFO
    "retrying": logging.ERROR,  # logs a traceback with the request URL (UIDs) at WARNING on each retry
    "urllib3": logging.WARNING,
    "requests": logging.WARNING,
    "pydicom": logging.WARNING,
    "hl7apy": logging.WARNING,
    "PIL": logging.WARNING,
    "celery": logging.WARNING,
    "kombu": logging.WARNING,
    "waitress": logging.WARNING,
}


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group(0)):02x}"


def log_value(value: object, limit: int = MAX_LOGGED_VALUE) -> str:
    """A protocol value made safe for a log line: control characters escaped (``\\x1b``), at most `limit`
    characters of it kept (then ``…(+N)``). Use it for every value a sender chose (MSH fields, peer names)."""
    text = _CONTROL.sub(_escape, "" if value is None else str(value))
    if len(text) > limit:
        return f"{text[:limit]}…(+{len(text) - limit})"
    return text


def quiet_third_party_loggers(levels: dict[str, int] | None = None) -> None:
    """Raise the level of chatty third-party loggers (`THIRD_PARTY_LOG_LEVELS`) unless already set higher."""
    for name, level in (levels or THIRD_PARTY_LOG_LEVELS).items():
        logger = logging.getLogger(name)
        if logger.level < level:
            logger.setLevel(level)


class PhiRegistry:
    """Values known to be PHI, most recent first, at most `capacity` of them (oldest forgotten first)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._values: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def register(self, *values: str | None) -> None:
        with self._lock:
            for value in values:
                if value is None:
                    continue
                text = str(value).strip()
                if len(text) < MIN_VALUE_LENGTH:
                    continue
                self._values[text] = None
                self._values.move_to_end(text, last=False)
                while len(self._values) > self.capacity:
                    self._values.popitem(last=True)
            self._pattern = None

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._pattern = None

    def pattern(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None and self._values:
                # Longest first, so that "Doe^John" is redacted whole rather than leaving "^John".
                ordered = sorted(self._values, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(v) for v in ordered), re.IGNORECASE)
            return self._pattern

    def __len__(self) -> int:
        return len(self._values)


#: The process-wide registry the doors register values in.
DEFAULT_REGISTRY = PhiRegistry()


def register_phi(*values: str | None) -> None:
    """Mark values as PHI for every log line written from now on (e.g. PID-3, PID-5, PID-7 of a message)."""
    DEFAULT_REGISTRY.register(*values)


def redact(text: str, registry: PhiRegistry | None = None) -> str:
    """`text` with registered values and PHI-shaped parts replaced by ``<redacted>``."""
    registry = registry or DEFAULT_REGISTRY
    text = _SEGMENTS.sub(lambda m: f"{m.group(1)}|{REDACTED}", text)
    text = _PATIENT_REFERENCE.sub(f"Patient/{REDACTED}", text)
    pattern = registry.pattern()
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    return text


class PhiRedactingFilter(logging.Filter):
    """Rewrites each record so that the message, its arguments and its traceback carry no PHI. Never drops one."""

    def __init__(self, registry: PhiRegistry | None = None) -> None:
        super().__init__()
        self.registry = registry or DEFAULT_REGISTRY

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the template only, never the arguments
            message = str(record.msg)
        record.msg = _CONTROL_EXCEPT_LAYOUT.sub(_escape, redact(message, self.registry))
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Format the traceback now, redacted; the formatter uses exc_text as it is.
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"), self.registry)
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, self.registry)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.registry)
        return True


def install_phi_filter(
    logger: logging.Logger | None = None, phi_filter: PhiRedactingFilter | None = None
) -> PhiRedactingFilter:
    """Add the filter to every handler of `logger` (default: the root logger); call after configuring logging."""
    logger = logger or logging.getLogger()
    phi_filter = phi_filter or PhiRedactingFilter()
    for handler in logger.handlers:
        if not any(isinstance(f, PhiRedactingFilter) for f in handler.filters):
            handler.addFilter(phi_filter)
    return phi_filter


class LogCollector(logging.Handler):
    """Collects every formatted line a logger tree writes, at every level, traceback included."""

    def __init__(self, fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter(fmt))
        self.lines: list[str] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        with self._guard:
            self.lines.extend(text.splitlines() or [""])

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def containing(self, markers: Iterable[str]) -> list[str]:
        """The lines that contain any of `markers` (case-insensitive): what a PHI test expects to be empty."""
        lowered = [m.lower() for m in markers if m]
        return [line for line in self.lines if any(m in line.lower() for m in lowered)]


@contextmanager
def collect_logs(
    logger: logging.Logger | None = None, *, redact_with: PhiRedactingFilter | None = None
) -> Iterator[LogCollector]:
    """Collect every line `logger` (default root) writes inside the block, at DEBUG and above.

    With `redact_with`, the collector redacts like a production handler would, so a test can check the filter.
    """
    logger = logger or logging.getLogger()
    collector = LogCollector()
    if redact_with is not None:
        collector.addFilter(redact_with)
    previous = logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.DEBUG)
    try:
        yield collector
    finally:
        logger.removeHandler(collector)
        logger.setLevel(previous)
