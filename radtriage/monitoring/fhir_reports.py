"""A radiologist's final DiagnosticReport (FHIR R4, ``POST /DiagnosticReport``) → `FinalReport`.

Read:

* ``status``: final, amended, corrected or appended (R4 DiagnosticReport; other statuses are refused, 422-style
  UNSUPPORTED: a preliminary report is not a reference standard);
* the study: ``basedOn`` (``ServiceRequest/<id>``), ``imagingStudy`` (reference, or identifier
  ``urn:dicom:uid`` | ``urn:oid:<uid>``), ``identifier`` of type ACSN (accession number) or of system
  ``urn:dicom:uid``; at least one is required;
* the text: ``conclusion`` and every ``presentedForm`` attachment of type ``text/plain`` (base64 ``data``);
* coded findings: ``conclusionCode`` codings in SNOMED CT (`terminology.FINDING_SNOMED`) or radtriage's finding
  code system, each meaning "present";
* the key that identifies the report: ``DiagnosticReport/<id>``, else its first identifier (``system|value``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Final

from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from ..app.core.errors import ErrorCode, TriageError
from ..fhir import terminology as t
from ..fhir.inbound import parse_resource
from .reports import FINAL_STATUSES, CodedFinding, FinalReport, ReceivedReport, ReportIntake

JsonObject = dict[str, Any]

SOURCE: Final = "fhir"
_SNOMED_TO_LABEL: Final = {code: label for label, (code, _) in t.FINDING_SNOMED.items()}


def final_report_from_fhir(payload: object) -> FinalReport:
    report = parse_resource(payload, DiagnosticReport)
    if report.status not in t.REPORT_STATUS_CODES:
        raise TriageError(ErrorCode.INVALID_INPUT, "status is not a DiagnosticReport status code",
                          location="DiagnosticReport.status")
    if report.status not in FINAL_STATUSES:
        raise TriageError(ErrorCode.UNSUPPORTED, "only final (or amended, corrected) reports are received",
                          location="DiagnosticReport.status")
    key = _report_key(report)
    service_request = next(
        (r.reference for r in report.basedOn or [] if r.reference and "ServiceRequest/" in r.reference), None
    )
    study_uid = None
    for reference in report.imagingStudy or []:
        if reference.identifier is not None and reference.identifier.system == t.DICOM_UID_SYSTEM:
            study_uid = (reference.identifier.value or "").removeprefix(t.OID_PREFIX) or None
    accession = None
    for identifier in report.identifier or []:
        codings = identifier.type.coding if identifier.type else None
        if any(c.system == t.V2_0203_SYSTEM and c.code == t.ACCESSION_TYPE for c in codings or []):
            accession = identifier.value
        elif identifier.system == t.DICOM_UID_SYSTEM and identifier.value:
            study_uid = study_uid or identifier.value.removeprefix(t.OID_PREFIX)
    texts = [report.conclusion or ""]
    for index, form in enumerate(report.presentedForm or []):
        if (form.contentType or "").split(";")[0].strip() == "text/plain" and form.data:
            try:
                # fhir.resources decodes base64Binary already (bytes); a plain string is decoded here.
                raw = form.data if isinstance(form.data, bytes) else base64.b64decode(form.data, validate=True)
                texts.append(raw.decode("utf-8"))
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise TriageError(ErrorCode.INVALID_INPUT, "presentedForm data is not base64 UTF-8 text",
                                  location=f"DiagnosticReport.presentedForm[{index}].data") from None
    coded = []
    for concept in report.conclusionCode or []:
        for coding in concept.coding or []:
            label = None
            if coding.system == t.SNOMED_SYSTEM:
                label = _SNOMED_TO_LABEL.get(coding.code or "")
            elif coding.system == t.FINDING_SYSTEM:
                label = coding.code
            if label:
                coded.append(CodedFinding(label, 1.0, f"{coding.system}|{coding.code}"))
    return FinalReport(
        source=SOURCE,
        report_key=key,
        status=report.status,
        text="\n".join(text for text in texts if text.strip()),
        coded=tuple(coded),
        issued_at=report.issued,
        study_instance_uid=study_uid,
        accession_number=accession,
        service_request_ref=service_request,
        patient_ref=_patient(report),
    )


def _patient(report: DiagnosticReport) -> str | None:
    subject = report.subject
    if subject is None:
        return None
    if subject.reference:
        return subject.reference.strip()
    if subject.identifier is not None and subject.identifier.value:
        return f"{subject.identifier.system or ''}|{subject.identifier.value}"
    return None


def _report_key(report: DiagnosticReport) -> str:
    if report.id:
        return f"DiagnosticReport/{report.id}"
    for identifier in report.identifier or []:
        if identifier.value:
            return f"{identifier.system or ''}|{identifier.value}"[:255]
    raise TriageError(ErrorCode.INVALID_INPUT, "the report needs an id or an identifier (amendments are matched by it)",
                      location="DiagnosticReport.identifier")


def fhir_report_receiver(intake: ReportIntake) -> Callable[[object], tuple[JsonObject, int]]:
    """The callable the FHIR door's ``POST /DiagnosticReport`` calls: body → (OperationOutcome, HTTP status)."""

    def receive(payload: object) -> tuple[JsonObject, int]:
        received = intake.receive(final_report_from_fhir(payload))
        return outcome_for(received), 201

    return receive


def outcome_for(received: ReceivedReport) -> JsonObject:
    """An informational OperationOutcome saying what became of the report (no report text, no patient data)."""
    where = {
        "matched": "linked to the study radtriage scored",
        "not-scored": "linked to an order that has not been scored; kept for when it is",
        "unmatched": "no order matches it; kept and counted",
        "patient-mismatch": "the order it names belongs to another patient; kept, counted, not linked",
    }[received.match]
    labels = sum(1 for label in received.labels.values() if label.value == 1.0)
    text = f"final report {received.id} stored: {where}; text {received.quality}"
    if received.replaced:
        text += f"; replaced {received.replaced} earlier report(s)"
    if not received.current:
        text += "; a later report for the study is already current"
    if received.labels:
        text += f"; {labels} finding(s) present"
    return {
        "resourceType": "OperationOutcome",
        "id": received.id,
        "issue": [{"severity": "information", "code": "informational", "diagnostics": text}],
    }
