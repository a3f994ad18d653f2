"""The one priority mapping table: FHIR request-priority ↔ HL7 v2 table 0485 ↔ DICOM Requested Procedure Priority.

=======================  ==============================  =================================  ==================
FHIR ``Task.priority``   HL7 table 0485, read            HL7 table 0485, written            DICOM (0040,1003)
=======================  ==============================  =================================  ==================
stat                     S                               S                                  STAT
asap                     A, P, C                         A                                  HIGH
urgent                   T, TS…, TM…, TH…, TD…, TW…, TL…  T                                  MEDIUM
routine                  R, PRN, (empty)                 R                                  ROUTINE, LOW
=======================  ==============================  =================================  ==================

Where the codes come from: S, A and R follow the HL7 v2-to-FHIR ConceptMap "table-hl70485-to-request-priority"
(which leaves P, C and T unmapped). P (pre-op), C (callback) and T (timing critical) are placed so that the
HL7 → DICOM composition matches the mapping most PACS use (dcm4chee: S→STAT, A/P/C→HIGH, R→ROUTINE, T→MEDIUM).
HL7 has no "urgent", so urgent is written as T; a site whose RIS knows only S/A/R can write it as A instead.

A site overrides any cell in a TOML file (``priority_map`` setting)::

    [hl7_read]        # extra or changed incoming codes (site-local codes are common)
    U = "urgent"
    [hl7_write]
    urgent = "A"
    [dicom_write]
    urgent = "HIGH"

Loading checks the one rule that makes the table safe: reading back what is written never gives a lower
priority (``read(write(p)) >= p``). Unknown incoming codes are an error, not "routine": a code the table does
not know could mean anything, and guessing low would lower the priority the order arrived with.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..app.core.domain import Priority

#: HL7 table 0485 (extended priority codes), as written in v2.5.1 section 4.5.4.
HL7_0485 = {
    "S": "Stat",
    "A": "ASAP",
    "R": "Routine",
    "P": "Preop",
    "C": "Callback",
    "T": "Timing critical",
    "PRN": "As needed",
}
#: DICOM PS3.3 C.4.11, Requested Procedure Priority (0040,1003) enumerated values.
DICOM_PRIORITIES = ("STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW")
#: TS<integer>, TM<integer>, ...: "timing critical within <integer> seconds/minutes/..." (table 0485).
_TIMING_CRITICAL_WITHIN = re.compile(r"T[SMHDWL]\d+\Z")

P = Priority
DEFAULT_HL7_READ: dict[str, Priority] = {
    "S": P.STAT,
    "A": P.ASAP,
    "P": P.ASAP,
    "C": P.ASAP,
    "T": P.URGENT,
    "R": P.ROUTINE,
    "PRN": P.ROUTINE,
    # Whole words some systems write instead of the table 0485 codes.
    "STAT": P.STAT,
    "ASAP": P.ASAP,
    "URGENT": P.URGENT,
    "ROUTINE": P.ROUTINE,
}
DEFAULT_HL7_WRITE: dict[Priority, str] = {P.STAT: "S", P.ASAP: "A", P.URGENT: "T", P.ROUTINE: "R"}
DEFAULT_DICOM_READ: dict[str, Priority] = {
    "STAT": P.STAT,
    "HIGH": P.ASAP,
    "MEDIUM": P.URGENT,
    "ROUTINE": P.ROUTINE,
    "LOW": P.ROUTINE,
}
DEFAULT_DICOM_WRITE: dict[Priority, str] = {P.STAT: "STAT", P.ASAP: "HIGH", P.URGENT: "MEDIUM", P.ROUTINE: "ROUTINE"}


class UnknownPriorityCode(ValueError):
    """An incoming priority code that the table does not know."""


@dataclass(frozen=True)
class PriorityMap:
    hl7_read: Mapping[str, Priority] = field(default_factory=lambda: dict(DEFAULT_HL7_READ))
    hl7_write: Mapping[Priority, str] = field(default_factory=lambda: dict(DEFAULT_HL7_WRITE))
    dicom_read: Mapping[str, Priority] = field(default_factory=lambda: dict(DEFAULT_DICOM_READ))
    dicom_write: Mapping[Priority, str] = field(default_factory=lambda: dict(DEFAULT_DICOM_WRITE))

    def __post_init__(self) -> None:
        for p in Priority:
            if p not in self.hl7_write or p not in self.dicom_write:
                raise ValueError(f"the priority map has no outgoing code for {p.code}")
            if self.from_hl7(self.hl7_write[p]) < p:
                raise ValueError(f"HL7 code {self.hl7_write[p]!r} written for {p.code} reads back lower")
            if self.from_dicom(self.dicom_write[p]) < p:
                raise ValueError(f"DICOM value {self.dicom_write[p]!r} written for {p.code} reads back lower")
        for value in self.dicom_write.values():
            if value not in DICOM_PRIORITIES:
                raise ValueError(f"{value!r} is not a DICOM Requested Procedure Priority")

    # FHIR request-priority codes are the names of `Priority` itself.
    @staticmethod
    def from_fhir(code: str) -> Priority:
        return Priority.from_code(code)

    @staticmethod
    def to_fhir(priority: Priority) -> str:
        return priority.code

    def from_hl7(self, code: str) -> Priority:
        """Table 0485 code → priority. Empty means routine (HL7's default); unknown codes raise."""
        code = code.strip().upper()
        if not code:
            return Priority.ROUTINE
        if code in self.hl7_read:
            return self.hl7_read[code]
        if _TIMING_CRITICAL_WITHIN.match(code) and "T" in self.hl7_read:
            return self.hl7_read["T"]
        raise UnknownPriorityCode(f"priority code {code!r} is not in the site's priority table")

    def to_hl7(self, priority: Priority) -> str:
        return self.hl7_write[priority]

    def from_dicom(self, value: str) -> Priority:
        value = value.strip().upper()
        if not value:
            return Priority.ROUTINE
        try:
            return self.dicom_read[value]
        except KeyError:
            raise UnknownPriorityCode(f"{value!r} is not a DICOM Requested Procedure Priority") from None

    def to_dicom(self, priority: Priority) -> str:
        return self.dicom_write[priority]

    def rows(self) -> list[tuple[str, list[str], str, list[str], str]]:
        """(FHIR code, HL7 codes read, HL7 code written, DICOM values read, DICOM value written), most urgent
        first: the table the README and the conformance statement show."""
        out = []
        for p in sorted(Priority, reverse=True):
            out.append(
                (
                    p.code,
                    sorted(c for c, q in self.hl7_read.items() if q is p and c in HL7_0485),
                    self.hl7_write[p],
                    [v for v in DICOM_PRIORITIES if self.dicom_read.get(v) is p],
                    self.dicom_write[p],
                )
            )
        return out

    def markdown_table(self) -> str:
        lines = [
            "| FHIR `Task.priority` | HL7 0485 read | HL7 0485 written | DICOM (0040,1003) read | DICOM written |",
            "|---|---|---|---|---|",
        ]
        for fhir, hl7_in, hl7_out, dicom_in, dicom_out in self.rows():
            extra = ["TS*n*, TM*n*, TH*n*, TD*n*, TW*n*, TL*n*"] if "T" in hl7_in else []
            extra += ["(empty)"] if fhir == "routine" else []
            hl7_read = ", ".join(hl7_in + extra)
            lines.append(f"| {fhir} | {hl7_read} | {hl7_out} | {', '.join(dicom_in)} | {dicom_out} |")
        return "\n".join(lines)


DEFAULT_PRIORITY_MAP = PriorityMap()


def load_priority_map(path: str | Path | None) -> PriorityMap:
    """The default table with a site's overrides from a TOML file (see the module docstring)."""
    if not path:
        return DEFAULT_PRIORITY_MAP
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    unknown = set(data) - {"hl7_read", "hl7_write", "dicom_read", "dicom_write"}
    if unknown:
        raise ValueError(f"unknown sections in {path}: {', '.join(sorted(unknown))}")
    hl7_read = dict(DEFAULT_HL7_READ)
    hl7_read.update({str(k).upper(): Priority.from_code(str(v)) for k, v in data.get("hl7_read", {}).items()})
    dicom_read = dict(DEFAULT_DICOM_READ)
    dicom_read.update({str(k).upper(): Priority.from_code(str(v)) for k, v in data.get("dicom_read", {}).items()})
    hl7_write = dict(DEFAULT_HL7_WRITE)
    hl7_write.update({Priority.from_code(str(k)): str(v).upper() for k, v in data.get("hl7_write", {}).items()})
    dicom_write = dict(DEFAULT_DICOM_WRITE)
    dicom_write.update({Priority.from_code(str(k)): str(v).upper() for k, v in data.get("dicom_write", {}).items()})
    return PriorityMap(hl7_read, hl7_write, dicom_read, dicom_write)
