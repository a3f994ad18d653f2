"""Radiologists' final reports over HL7 v2: ORU^R01 (v2.3 - 2.5.1) → `FinalReport`, one per OBR group.

Read per OBR group (HL7 v2.5.1 chapter 7, 7.3.1; IHE Radiology RAD-128 writes reports this way):

* report key: OBR-3 (filler order number, with its namespace), else OBR-2 (placer order number); a later message
  with the same key replaces the report (an amendment: OBR-25 = C);
* status: OBR-25 (F final, C corrected); when empty, every OBX-11 must be F or C. A preliminary report (P, R, S,
  I, A) is acknowledged and not used; a cancelled one (X) likewise;
* links: OBR-2 (placer order number), OBR-18 (accession number, as IHE RAD-4 puts it), IPC-1 (accession) and
  IPC-3 (Study Instance UID), the configured study UID field (``ZDS-1`` by default) and an OBX whose OBX-3 is DCM
  110180 "Study Instance UID";
* issued: OBR-22, else the latest OBX-14;
* text: OBX-5 of every TX, FT or ST observation (formatting escapes such as ``\\.br\\`` become line breaks);
* coded findings: a CE/CWE OBX whose OBX-3 names a finding (SNOMED CT of `terminology.FINDING_SNOMED`, or the
  finding's name) with OBX-5 yes/no/possible (Y, N, POS, NEG, SNOMED 52101004 present, 2667000 absent), or whose
  OBX-5 names a finding (present, unless OBX-8 is N).

Problems answer AE with the ERR location (table 0357): no OBR (100), no order number (101 at OBR-3), nothing that
names the study (101 at OBR-2), an unreadable time stamp (102).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

from ..fhir import terminology as t
from ..hl7 import er7
from ..hl7.ack import ErrorCondition, Hl7Issue, Location
from ..hl7.mapping import MessageHeader
from ..model.datasets import normalise_label
from .reports import CodedFinding, FinalReport, ReportIntake

log = logging.getLogger(__name__)

SOURCE: Final = "hl7"
_STATUS: Final = {"F": "final", "C": "corrected"}
_NOT_FINAL: Final = frozenset("PRSIAXOD")
_TEXT_TYPES: Final = frozenset({"TX", "FT", "ST"})
_CODED_TYPES: Final = frozenset({"CE", "CWE", "CNE"})
_SNOMED_NAMES: Final = frozenset({"SCT", "SNM", "SNM3", "SNOMED", "SNOMED-CT", "SNOMEDCT", t.SNOMED_SYSTEM})
_SNOMED_TO_LABEL: Final = {code: label for label, (code, _) in t.FINDING_SNOMED.items()}
_PRESENT: Final = frozenset({"Y", "YES", "POS", "POSITIVE", "PRESENT", "52101004", "10828004"})
_ABSENT: Final = frozenset({"N", "NO", "NEG", "NEGATIVE", "ABSENT", "2667000", "260385009"})
_UNCERTAIN: Final = frozenset({"U", "UNK", "IND", "POSSIBLE", "EQUIVOCAL", "QUESTIONABLE", "371930009"})


class OruError(Exception):
    def __init__(self, issue: Hl7Issue) -> None:
        super().__init__(issue.text)
        self.issue = issue


@dataclass(frozen=True)
class OruResult:
    reports: int
    ignored_not_final: int


class OruHandler:
    """The HL7 door's report handler (`radtriage.hl7.handlers.OrderReceiver` calls it for ORU^R01)."""

    def __init__(self, intake: ReportIntake, study_uid_field: str = "ZDS-1") -> None:
        self.intake = intake
        self.study_uid_field = study_uid_field

    def __call__(self, message: er7.Message, header: MessageHeader) -> Sequence[Hl7Issue]:
        """Store every final report of the message; the issues to answer AE with (none: AA)."""
        try:
            reports, ignored = read_final_reports(message, self.study_uid_field)
        except OruError as error:
            return [error.issue]
        for report in reports:
            self.intake.receive(report)
        if ignored:
            log.info("HL7 %s %s: %d report(s) not final, not used", header.message_code, header.control_id, ignored)
        return []


def read_final_reports(message: er7.Message, study_uid_field: str = "ZDS-1") -> tuple[list[FinalReport], int]:
    groups = _obr_groups(message)
    if not groups:
        raise OruError(Hl7Issue(ErrorCondition.SEGMENT_SEQUENCE_ERROR, "ORU^R01 without an OBR segment",
                                Location("OBR", 0)))
    study_uid = _configured_uid(message, study_uid_field)
    ipc = message.first("IPC")
    patient = _patient(message.first("PID"))
    reports: list[FinalReport] = []
    ignored = 0
    for obr, observations in groups:
        status_code = obr.value(25).upper()
        if not status_code:
            statuses = {o.value(11).upper() for o in observations}
            status_code = "C" if "C" in statuses and statuses <= {"F", "C"} else ("F" if statuses == {"F"} else "")
        if status_code not in _STATUS:
            ignored += 1
            continue
        filler, placer = _ei(obr, 3), _ei(obr, 2)
        key = filler or placer
        if not key:
            raise OruError(Hl7Issue(ErrorCondition.REQUIRED_FIELD_MISSING, "the report has no order number",
                                    Location("OBR", 3, sequence=obr.sequence)))
        accession = obr.value(18) or (ipc.value(1) if ipc else "")
        uid = (ipc.value(3) if ipc else "") or study_uid or _uid_from_observations(observations)
        text_lines: list[str] = []
        coded: list[CodedFinding] = []
        issued = _timestamp(obr.value(22), Location("OBR", 22))
        for obx in observations:
            kind = obx.value(2).upper()
            if kind in _TEXT_TYPES:
                text_lines += [rep.component(1) if kind == "ST" else "^".join(rep.components()).strip("^")
                               for rep in obx.repetitions(5)]
            elif kind in _CODED_TYPES:
                finding = _coded(obx)
                if finding is not None:
                    coded.append(finding)
            observed = _timestamp(obx.value(14), Location("OBX", 14))
            if issued is None and observed is not None:
                issued = observed
        if not (placer or accession or uid):
            raise OruError(Hl7Issue(ErrorCondition.REQUIRED_FIELD_MISSING,
                                    "the report names no study (placer order number, accession or study UID)",
                                    Location("OBR", 2, sequence=obr.sequence)))
        reports.append(FinalReport(
            source=SOURCE, report_key=key, status=_STATUS[status_code], text="\n".join(text_lines).strip(),
            coded=tuple(coded), issued_at=issued, study_instance_uid=uid or None, accession_number=accession or None,
            placer_order_number=obr.value(2) or None,  # the number alone: orders store it without its namespace
            patient_ref=patient,
        ))
    return reports, ignored


def _patient(pid: er7.Segment | None) -> str | None:
    """PID-3 as the HL7 door names patients: ``system|value`` of the MR identifier, else of the first."""
    reps = [r for r in pid.repetitions(3) if r.component(1)] if pid is not None else []
    if not reps:
        return None
    chosen = next((r for r in reps if r.component(5).upper() == "MR"), reps[0])
    return f"{chosen.component(4, 2) or chosen.component(4, 1)}|{chosen.component(1)}"


def _obr_groups(message: er7.Message) -> list[tuple[er7.Segment, list[er7.Segment]]]:
    groups: list[tuple[er7.Segment, list[er7.Segment]]] = []
    for segment in message:
        if segment.name == "OBR":
            groups.append((segment, []))
        elif segment.name == "OBX" and groups:
            groups[-1][1].append(segment)
    return groups


def _ei(segment: er7.Segment, position: int) -> str:
    reps = segment.repetitions(position)
    if not reps:
        return ""
    value, namespace = reps[0].component(1), reps[0].component(2)
    if not value:
        return ""
    return f"{value}^{namespace}" if namespace else value


def _configured_uid(message: er7.Message, spec: str) -> str:
    name, _, rest = spec.partition("-")
    field_text, _, component = rest.partition(".")
    segment = message.first(name.upper()) if name else None
    if segment is None or not field_text.isdigit():
        return ""
    return segment.value(int(field_text), int(component) if component.isdigit() else 1)


def _uid_from_observations(observations: Sequence[er7.Segment]) -> str:
    for obx in observations:
        if obx.value(3, 1) == t.DCM_STUDY_INSTANCE_UID or obx.value(3, 2).lower() == "study instance uid":
            return obx.value(5)
    return ""


def _label_of(code: str, text: str, system: str) -> str | None:
    if system.upper() in _SNOMED_NAMES or system == t.SNOMED_SYSTEM:
        found = _SNOMED_TO_LABEL.get(code)
        if found:
            return found
    return normalise_label(code) or normalise_label(text)


def _coded(obx: er7.Segment) -> CodedFinding | None:
    question = _label_of(obx.value(3, 1), obx.value(3, 2), obx.value(3, 3))
    answer_code, answer_text, answer_system = obx.value(5, 1), obx.value(5, 2), obx.value(5, 3)
    if question is not None:
        answer = {answer_code.upper(), answer_text.upper()}
        value: float | None
        if answer & _PRESENT:
            value = 1.0
        elif answer & _ABSENT:
            value = 0.0
        elif answer & _UNCERTAIN:
            value = None
        else:
            return None
        return CodedFinding(question, value, f"{obx.value(3, 3)}|{obx.value(3, 1)}")
    named = _label_of(answer_code, answer_text, answer_system)
    if named is None:
        return None
    return CodedFinding(named, 0.0 if obx.value(8).upper() == "N" else 1.0, f"{answer_system}|{answer_code}")


def _timestamp(text: str, location: Location) -> datetime | None:
    """HL7 TS/DTM: YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]; without a zone it is taken as UTC."""
    text = text.strip()
    if not text:
        return None
    zone = UTC
    for sign in ("+", "-"):
        if sign in text[4:]:
            head, _, offset = text.rpartition(sign)
            if len(offset) == 4 and offset.isdigit():
                minutes = int(offset[:2]) * 60 + int(offset[2:])
                zone = timezone(timedelta(minutes=minutes if sign == "+" else -minutes))
                text = head
            break
    digits = text.split(".")[0]
    if not digits.isdigit() or len(digits) < 8:
        raise OruError(Hl7Issue(ErrorCondition.DATA_TYPE_ERROR, "not an HL7 time stamp", location))
    padded = (digits + "000000")[:14]
    try:
        return datetime.strptime(padded, "%Y%m%d%H%M%S").replace(tzinfo=zone).astimezone(UTC)
    except ValueError:
        raise OruError(Hl7Issue(ErrorCondition.DATA_TYPE_ERROR, "not an HL7 time stamp", location)) from None
