"""Radiologists' final reports in: link each to the study radtriage scored, and label it per finding.

Whichever door a report came through (FHIR `fhir_reports`, HL7 ORU^R01 `hl7_reports`), it becomes one
`FinalReport` and goes to `ReportIntake.receive`, which in one transaction

1. stores the report, whatever happens next (nothing is dropped: unmatched reports are kept and counted);
2. links it to an order, trying in turn the ServiceRequest it is based on, the Study Instance UID, the
   accession number and the placer order number; the most recent order wins when several match. When the report
   names its patient and the order came through the same door, the two must agree: a report about another
   patient is kept as ``patient-mismatch`` and never linked (a wrong link would corrupt the metrics);
3. decides which report is current for that study: a report with the same key from the same sender (an
   amendment or correction) replaces the earlier one, and otherwise the later one (by issue time, or by receipt
   when the sender's clock is ahead of ours) replaces the earlier;
4. writes the current report's labels (`labels.extract_labels`, coded findings first) into ``report_labels``,
   replacing the study's earlier labels, so that the metrics follow amendments.

Reports without text or codes, and text the English rules cannot read, are stored with their quality and get
no labels. Nothing here logs report text or patient references.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Engine, and_, delete, insert, select, update

from ..app.core.errors import ErrorCode, TriageError
from ..app.storage.database import as_utc as _utc
from ..app.storage.monitoring_tables import final_reports, image_observations, report_labels
from ..app.storage.tables import jobs, orders, results
from .labels import ABNORMAL, LEXICON, ExtractedLabel, extract_labels, looks_english

log = logging.getLogger(__name__)

FINAL_STATUSES: Final = ("final", "amended", "corrected", "appended")
#: A report issued more than this far in our future comes from a clock that is ahead; it is ordered by receipt.
CLOCK_TOLERANCE: Final = timedelta(minutes=5)


@dataclass(frozen=True)
class CodedFinding:
    """A finding the sender coded (OBX CE/CWE, DiagnosticReport.conclusionCode): 1.0, 0.0, or None uncertain."""

    label: str
    value: float | None
    code: str = ""


@dataclass(frozen=True)
class FinalReport:
    """A radiologist's signed report, as either door read it. `text` may hold patient data: never log it."""

    source: str  # "fhir" | "hl7"
    report_key: str
    status: str
    text: str = ""
    coded: tuple[CodedFinding, ...] = ()
    issued_at: datetime | None = None
    study_instance_uid: str | None = None
    accession_number: str | None = None
    service_request_ref: str | None = None
    placer_order_number: str | None = None
    #: The patient as the sending door names patients (``Patient/<id>``; HL7 ``system|value``); patient data.
    patient_ref: str | None = None

    def __post_init__(self) -> None:
        if self.status not in FINAL_STATUSES:
            raise TriageError(
                ErrorCode.UNSUPPORTED, f"only final reports are used (status {self.status!r} is not one)"
            )
        if not self.report_key.strip():
            raise TriageError(ErrorCode.INVALID_INPUT, "the report has no identifier")
        if not any((self.study_instance_uid, self.accession_number, self.service_request_ref,
                    self.placer_order_number)):
            raise TriageError(
                ErrorCode.INVALID_INPUT,
                "the report names no study: give basedOn (ServiceRequest), the study (Study Instance UID) or the "
                "accession number",
            )


@dataclass(frozen=True)
class ReceivedReport:
    """What `ReportIntake.receive` did with one report."""

    id: str
    match: str  # matched | not-scored | unmatched | patient-mismatch
    quality: str  # ok | empty | not-english
    job_id: str | None = None
    current: bool = True
    replaced: int = 0
    labels: dict[str, ExtractedLabel] = field(default_factory=dict)



class ReportIntake:
    """Stores final reports and their labels (module docstring). Thread-safe: each call is one transaction."""

    def __init__(self, engine: Engine, clock: Any = None) -> None:
        self.engine = engine
        self._clock = clock

    def _now(self) -> datetime:
        return self._clock.now() if self._clock is not None else datetime.now(UTC)

    def receive(self, report: FinalReport) -> ReceivedReport:
        now = self._now()
        report_id = uuid.uuid4().hex
        quality = _quality(report)
        issued = _utc(report.issued_at)
        if issued is not None and issued > now + CLOCK_TOLERANCE:
            log.warning("final report %s: issued %s ahead of this server's clock; ordered by receipt",
                        report_id, issued - now)
        order_key = _order_time(issued, now)
        with self.engine.begin() as conn:
            order = _find_order(conn, report)
            mismatch = order is not None and _other_patient(order, report)
            if mismatch:
                log.warning("final report %s: the order it names is another patient's; not linked", report_id)
                order = None
            job_id = order["job_id"] if order else None
            scored = bool(job_id) and conn.execute(
                select(results.c.job_id).where(results.c.job_id == job_id)
            ).first() is not None
            if scored:
                match = "matched"
            else:
                match = "not-scored" if order else ("patient-mismatch" if mismatch else "unmatched")
            # Same sender and key: an amendment or correction of that report.
            earlier_same = conn.execute(
                select(final_reports.c.id).where(
                    final_reports.c.source == report.source,
                    final_reports.c.report_key == report.report_key[:255],
                    final_reports.c.superseded.is_(False),
                )
            ).all()
            current = True
            others: list[Any] = []
            if job_id:
                others = list(conn.execute(
                    select(final_reports.c.id, final_reports.c.issued_at, final_reports.c.received_at,
                           final_reports.c.report_key, final_reports.c.source).where(
                        final_reports.c.job_id == job_id, final_reports.c.superseded.is_(False)
                    )
                ).all())
                newer = [
                    o for o in others
                    if (o.source, o.report_key) != (report.source, report.report_key[:255])
                    and _order_time(_utc(o.issued_at), _utc(o.received_at) or now) > order_key
                ]
                current = not newer
            conn.execute(insert(final_reports).values(
                id=report_id, source=report.source, report_key=report.report_key[:255], status=report.status,
                received_at=now, issued_at=issued, text=report.text,
                coded=[{"label": c.label, "value": c.value, "code": c.code} for c in report.coded],
                study_instance_uid=report.study_instance_uid, accession_number=report.accession_number,
                service_request_ref=report.service_request_ref, placer_order_number=report.placer_order_number,
                job_id=job_id, match=match, quality=quality, superseded=not current,
            ))
            replaced_ids = {r.id for r in earlier_same}
            if current:
                replaced_ids |= {o.id for o in others}
            if replaced_ids:
                conn.execute(update(final_reports).where(final_reports.c.id.in_(replaced_ids))
                             .values(superseded=True))
            labels: dict[str, ExtractedLabel] = {}
            if current and order is not None:
                conn.execute(delete(report_labels).where(report_labels.c.job_id == job_id))
                if quality == "ok":
                    labels = extract_labels(report.text, {c.label: c.value for c in report.coded})
                    _write_labels(conn, order, report_id, report, labels, now)
        log.info("final report %s: %s, %s%s", report_id, match, quality,
                 f", replaced {len(replaced_ids)}" if replaced_ids else "")
        return ReceivedReport(report_id, match, quality, job_id, current, len(replaced_ids), labels)

    def counts(self, since: datetime | None = None) -> dict[str, int]:
        """Reports received (by match, by quality, superseded, clock ahead) since `since`."""
        query = select(final_reports.c.match, final_reports.c.quality, final_reports.c.superseded,
                       final_reports.c.issued_at, final_reports.c.received_at)
        if since is not None:
            query = query.where(final_reports.c.received_at >= since)
        counts: dict[str, int] = {"received": 0}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                counts["received"] += 1
                counts[f"match:{row.match}"] = counts.get(f"match:{row.match}", 0) + 1
                counts[f"quality:{row.quality}"] = counts.get(f"quality:{row.quality}", 0) + 1
                if row.superseded:
                    counts["superseded"] = counts.get("superseded", 0) + 1
                issued, received = _utc(row.issued_at), _utc(row.received_at)
                if issued and received and issued > received + CLOCK_TOLERANCE:
                    counts["clock-ahead"] = counts.get("clock-ahead", 0) + 1
        return counts


def _quality(report: FinalReport) -> str:
    if not report.text.strip() and not report.coded:
        return "empty"
    if report.text.strip() and not looks_english(report.text) and not report.coded:
        return "not-english"
    return "ok"


def _order_time(issued: datetime | None, received: datetime) -> datetime:
    """When a report counts as written: its issue time, unless that is ahead of the receipt (a fast clock)."""
    if issued is None or issued > received + CLOCK_TOLERANCE:
        return received
    return issued


def _find_order(conn: Any, report: FinalReport) -> dict[str, Any] | None:
    """The order (with its job id) the report is about, by the first identifier that finds one."""
    base = (
        select(orders.c.id, orders.c.source, orders.c.study_instance_uid, orders.c.patient_ref,
               jobs.c.id.label("job_id"))
        .join(jobs, jobs.c.order_id == orders.c.id)
        .order_by(orders.c.received_at.desc())
        .limit(1)
    )
    candidates: Sequence[tuple[Any, str | None]] = (
        (orders.c.service_request_ref, _reference_tail(report.service_request_ref)),
        (orders.c.study_instance_uid, report.study_instance_uid),
        (orders.c.accession_number, report.accession_number),
        (orders.c.placer_order_number, report.placer_order_number),
    )
    for column, value in candidates:
        if not value:
            continue
        if column is orders.c.service_request_ref:
            condition = (column == value) | column.endswith("/" + value)
        else:
            condition = column == value
        row = conn.execute(base.where(condition)).mappings().first()
        if row is not None:
            return dict(row)
    return None


def _other_patient(order: dict[str, Any], report: FinalReport) -> bool:
    """True when the report names a patient, in the same door's terms as the order, and it is another one."""
    if not report.patient_ref or order["source"] != report.source:
        return False
    return _patient_key(order["patient_ref"]) != _patient_key(report.patient_ref)


def _patient_key(reference: str) -> str:
    """``Patient/<id>`` from a relative or absolute reference (version dropped); other forms as they are."""
    if "Patient/" in reference:
        return "Patient/" + reference.split("Patient/", 1)[1].split("/")[0]
    return reference.strip()


def _reference_tail(reference: str | None) -> str | None:
    """``ServiceRequest/<id>`` from a relative or absolute reference."""
    if not reference:
        return None
    parts = reference.rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


def _write_labels(conn: Any, order: dict[str, Any], report_id: str, report: FinalReport,
                  labels: dict[str, ExtractedLabel], now: datetime) -> None:
    observed = conn.execute(
        select(image_observations.c.view_position, image_observations.c.patient_sex, image_observations.c.patient_age)
        .join(results, results.c.sop_instance_uid == image_observations.c.sop_instance_uid)
        .where(results.c.job_id == order["job_id"])
        .order_by(image_observations.c.id.desc())
        .limit(1)
    ).first()
    rows = [
        {
            "study_instance_uid": order["study_instance_uid"],
            "patient_ref": order["patient_ref"],
            "image_path": None,
            "view": observed.view_position if observed else None,
            "sex": observed.patient_sex if observed else None,
            "age": observed.patient_age if observed else None,
            "label": label,
            "value": extracted.value,
            "certainty": extracted.mention.value,
            "report_ref": f"{report.source}:{report.report_key}"[:255],
            "final_report_id": report_id,
            "job_id": order["job_id"],
            "labelled_at": now,
        }
        for label, extracted in labels.items()
        if label in LEXICON or label == ABNORMAL
    ]
    if rows:
        conn.execute(insert(report_labels), rows)


def current_labels_query() -> Any:
    """report_labels rows of current reports of scored studies (for metrics, recalibration and export)."""
    return (
        select(report_labels)
        .join(final_reports, and_(final_reports.c.id == report_labels.c.final_report_id,
                                  final_reports.c.superseded.is_(False)))
    )
