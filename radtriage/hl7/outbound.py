"""Messages to the RIS: the new priority of a triaged order, and optionally the findings.

* ORM^O01 with ORC-1 = XO (change order), in the version the order arrived in (2.3.1 by default): the priority
  in ORC-7.6 and OBR-27.6 (quantity/timing, TQ). ORM^O01 has no TQ1 segment in any version, so this holds
  for ORM in v2.5 too.
* OMI^O23 (v2.5.1, or 2.5), ORC-1 = XO: the priority in TQ1-9; IPC repeats accession, requested procedure id,
  Study Instance UID and scheduled procedure step id.
* ORU^R01 (optional): one OBX with the triage priority, one with the Study Instance UID, one per finding with
  its probability and whether it reached the model's operating point, the model's identity in OBX-17 and an
  NTE that says what the result is and is not.

Emitted strictly (`er7` escapes every value). PID carries the identifiers (PID-3) and the name (PID-5, which
HL7 requires) exactly as the RIS sent them; nothing else about the patient.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from ..app.core.domain import ImagingOrder, Priority, TriageResult
from . import er7
from .mapping import SUPPORTED_MESSAGES, OrderContext
from .priority_map import DEFAULT_PRIORITY_MAP, HL7_0485, PriorityMap

LOCAL_CODING_SYSTEM = "99RADTRIAGE"  # "99zzz": a locally defined coding system (HL7 table 0396)
DICOM_STUDY_INSTANCE_UID = ("110180", "Study Instance UID", "DCM")


class OutboundStyle(enum.StrEnum):
    ORM = "orm"
    OMI = "omi"


@dataclass(frozen=True)
class Endpoints:
    """MSH-3..6 of outgoing messages."""

    application: tuple[str, ...] = ("RADTRIAGE",)
    facility: tuple[str, ...] = ()
    ris_application: tuple[str, ...] = ()
    ris_facility: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutboundMessage:
    control_id: str
    text: str


@dataclass(frozen=True)
class OutboundOptions:
    style: OutboundStyle = OutboundStyle.ORM
    endpoints: Endpoints = field(default_factory=Endpoints)
    priority_map: PriorityMap = field(default_factory=lambda: DEFAULT_PRIORITY_MAP)


def new_control_id() -> str:
    return uuid.uuid4().hex[:20]  # MSH-10 is ST(20) before v2.5


def order_identity(order: ImagingOrder, context: OrderContext | None) -> OrderContext:
    """The HL7 identifiers to repeat: those the order arrived with, or, for an order that did not come over
    HL7, what the order itself records."""
    if context is not None:
        return context
    system, _, value = order.patient_ref.rpartition("|")
    return OrderContext(
        version="",
        patient_identifiers=(((value, "", "", system) if system else (value,)),) if value else (),
        placer_order_number=(order.placer_order_number,) if order.placer_order_number else (),
        filler_order_number=(order.filler_order_number,) if order.filler_order_number else (),
        universal_service_id=(order.procedure_code,) if order.procedure_code else (),
        accession_number=order.accession_number or "",
    )


def dialect(context: OrderContext, configured: OutboundStyle) -> OutboundStyle:
    """Answer each sender in its own dialect: an order that came as OMI^O23 (v2.5 and later) gets OMI^O23 with
    the priority in TQ1-9; one that came as ORM^O01 gets ORM^O01 with ORC-7.6/OBR-27.6 (ORM has no TQ1 in any
    version). Orders that did not come over HL7 (or whose context predates this) get the configured style."""
    if context.message_type == "OMI":
        return OutboundStyle.OMI
    if context.message_type == "ORM":
        return OutboundStyle.ORM
    return configured


def _version(style: OutboundStyle, context: OrderContext) -> str:
    if style is OutboundStyle.OMI:
        return context.version if context.version in SUPPORTED_MESSAGES[("OMI", "O23")] else "2.5.1"
    return context.version if context.version in SUPPORTED_MESSAGES[("ORM", "O01")] else "2.3.1"


def _modern(version: str) -> bool:
    return version.startswith("2.5")


def _msh(options: OutboundOptions, message_type: tuple[str, ...], control_id: str, now: datetime, version: str) -> str:
    e = options.endpoints
    return er7.encode_segment(
        "MSH",
        [
            e.application,
            e.facility or None,
            e.ris_application or None,
            e.ris_facility or None,
            er7.timestamp(now),
            None,
            message_type,
            control_id,
            "P",
            version,
        ],
    )


def _pid(context: OrderContext) -> str:
    ids: list[er7.FieldRepetition] = [tuple(r) for r in context.patient_identifiers]
    return er7.encode_segment("PID", ["1", None, ids or None, None, context.patient_name or None])


def _priority_code(priority: Priority, options: OutboundOptions) -> tuple[str, str, str]:
    code = options.priority_map.to_hl7(priority)
    return code, HL7_0485.get(code, code), "HL70485"


def _tq(code: str) -> tuple[str, ...]:
    return ("", "", "", "", "", code)  # TQ.6 is the priority


def priority_update(
    order: ImagingOrder,
    context: OrderContext,
    priority: Priority,
    options: OutboundOptions,
    *,
    now: datetime,
    reason: str = "",
    control_id: str | None = None,
    notes: Sequence[str] = (),
    reason_code: tuple[str, str, str] | None = None,
    comment_type: tuple[str, str, str] | None = None,
) -> OutboundMessage:
    """ORM^O01 XO or OMI^O23 XO carrying `priority` (the caller makes sure it is never below the order's), in the
    dialect the order came in (`dialect`).

    `reason` is the first NTE (with `comment_type` as its NTE-4, when given); each of `notes` (e.g. the findings
    the model did not assess) one more. `reason_code` replaces ORC-16 (default: set by computer-assisted triage)."""
    control_id = control_id or new_control_id()
    options = replace(options, style=dialect(context, options.style))
    version = _version(options.style, context)
    # OMI carries the priority in TQ1-9. ORM^O01 never gained a TQ1 segment (it was frozen when TQ1 came in
    # v2.5), so ORM keeps it in ORC-7.6 / OBR-27.6 in every version.
    modern = options.style is OutboundStyle.OMI
    code = _priority_code(priority, options)
    placer = context.placer_order_number or None
    filler = context.filler_order_number or None
    reason_code = reason_code or ("TRIAGE", "Priority set by computer-assisted triage", LOCAL_CODING_SYSTEM)
    if options.style is OutboundStyle.OMI:
        message_type: tuple[str, ...] = ("OMI", "O23", "OMI_O23")
    else:
        message_type = ("ORM", "O01", "ORM_O01") if version != "2.3" and version != "2.3.1" else ("ORM", "O01")
    orc: list[er7.FieldValue] = ["XO", placer, filler, None, None, None, None if modern else _tq(code[0])]
    orc += [None, er7.timestamp(now), None, None, None, None, None, None, reason_code]
    segments = [_msh(options, message_type, control_id, now, version), _pid(context), er7.encode_segment("ORC", orc)]
    if modern:
        segments.append(er7.encode_segment("TQ1", ["1", None, None, None, None, None, None, None, code]))
    obr: list[er7.FieldValue] = ["1", placer, filler, context.universal_service_id or None]
    if options.style is OutboundStyle.ORM:
        obr += [None] * 13 + [
            context.accession_number or None,  # OBR-18
            context.requested_procedure_id or None,  # OBR-19
            context.scheduled_procedure_step_id or None,  # OBR-20
        ]
        if not modern:
            obr += [None] * 6 + [_tq(code[0])]  # OBR-27
    segments.append(er7.encode_segment("OBR", obr))
    for set_id, text in enumerate((note for note in (reason, *notes) if note), start=1):
        coded = comment_type if set_id == 1 and reason else None
        segments.append(er7.encode_segment("NTE", [str(set_id), "L", text[:200], coded]))
    if options.style is OutboundStyle.OMI:
        segments.append(
            er7.encode_segment(
                "IPC",
                [
                    context.accession_number or None,
                    context.requested_procedure_id or None,
                    order.study_instance_uid,
                    context.scheduled_procedure_step_id or None,
                    context.modality or None,
                ],
            )
        )
    else:
        app = options.endpoints.application[0] if options.endpoints.application else ""
        segments.append(er7.encode_segment("ZDS", [(order.study_instance_uid, app, "Application", "DICOM")]))
    return OutboundMessage(control_id, er7.encode_message(segments))


def not_analysed_update(
    order: ImagingOrder,
    context: OrderContext,
    options: OutboundOptions,
    *,
    now: datetime,
    failure_code: str,
    failure_display: str,
    control_id: str | None = None,
) -> OutboundMessage:
    """The update that tells the RIS the model could not analyse the study, so that "not analysed" is never
    mistaken for "still working": ORC-1 XO at the order's own priority (never lower), ORC-16 (order control
    code reason) = ``NOT-ANALYSED`` and an NTE whose comment type (NTE-4) is the coded reason, e.g.
    ``not-a-chest^Not a chest radiograph^99RADTRIAGE``. The order itself stands: a radiologist reads the study.
    """
    reason = f"Not analysed by AI triage: {failure_display}. A radiologist reads this study as usual."
    return priority_update(
        order,
        context,
        order.requested_priority,
        options,
        now=now,
        reason=reason,
        control_id=control_id,
        reason_code=("NOT-ANALYSED", "Study not analysed by computer-assisted triage", LOCAL_CODING_SYSTEM),
        comment_type=(failure_code, failure_display, LOCAL_CODING_SYSTEM),
    )


def result_report(
    order: ImagingOrder,
    context: OrderContext,
    result: TriageResult,
    priority: Priority,
    options: OutboundOptions,
    *,
    now: datetime,
    control_id: str | None = None,
) -> OutboundMessage:
    """ORU^R01 with the findings, preliminary (OBX-11 = P): computer-assisted triage, not a report."""
    control_id = control_id or new_control_id()
    version = context.version if context.version in ("2.3.1", "2.4", "2.5", "2.5.1") else "2.5.1"
    modern = _modern(version)
    coded = "CWE" if modern else "CE"
    observed = er7.timestamp(result.created_at or now)
    model = result.model
    method = (model.name, f"{model.name} {model.version}", LOCAL_CODING_SYSTEM)
    placer = context.placer_order_number or None
    filler = context.filler_order_number or None
    message_type = ("ORU", "R01") if version == "2.3.1" else ("ORU", "R01", "ORU_R01")
    segments = [
        _msh(options, message_type, control_id, now, version),
        _pid(context),
        er7.encode_segment("ORC", ["RE", placer, filler]),
        er7.encode_segment(
            "OBR",
            [
                "1",
                placer,
                filler,
                context.universal_service_id or None,
                None,
                None,
                observed,  # OBR-7 observation date/time
                *[None] * 14,
                er7.timestamp(now),  # OBR-22 results report/status change
                None,
                None,
                "P",  # OBR-25 result status: preliminary
            ],
        ),
    ]
    obx: list[list[er7.FieldValue]] = [
        [coded, ("PRIORITY", "Triage priority", LOCAL_CODING_SYSTEM), "1", _priority_code(priority, options)],
        ["ST", DICOM_STUDY_INSTANCE_UID, "1", order.study_instance_uid],
    ]
    for finding in result.findings:
        obx.append(
            [
                "NM",
                (finding.label, finding.label, LOCAL_CODING_SYSTEM),
                "1",  # OBX-4 sub-id: each OBX-3 appears once
                f"{finding.probability:.3f}",
                None,
                f"<{finding.threshold:.3f}",  # OBX-7: below the operating point counts as negative
                "A" if finding.positive else "N",  # OBX-8 abnormal flag
            ]
        )
    if result.severity is not None:
        severity = ("SEVERITY", "Radiographic severity (geographic extent 0-8)", LOCAL_CODING_SYSTEM)
        obx.append(["NM", severity, "1", f"{result.severity:.1f}", None, "0-8"])
    statuses = ["P"] * len(obx)
    for label in result.not_assessed:
        # OBX-11 "X": results cannot be obtained for this observation. The model has no output for the finding.
        obx.append(["ST", (label, label, LOCAL_CODING_SYSTEM), "1", None])
        statuses.append("X")
    for n, (fields, status) in enumerate(zip(obx, statuses, strict=True), start=1):
        fields += [None] * (9 - len(fields))  # fields[0] is OBX-2: pad up to OBX-10
        fields += [status, None, None, observed, None, None, method]  # OBX-11 status, OBX-14 time, OBX-17 method
        segments.append(er7.encode_segment("OBX", [str(n), *fields]))
    note = (
        f"Computer-assisted triage by {model.name} {model.version} (sha256 {model.sha256[:16]}). "
        "Probabilities rank studies for reading order; they are not a diagnosis."
    )
    if model.placeholder:
        note += " PLACEHOLDER MODEL, NOT TRAINED: the scores carry no clinical meaning."
    if result.not_assessed:
        note += f" Not assessed (the model has no output for them): {', '.join(result.not_assessed)}."
    if result.priority_reason:
        note += f" Priority: {result.priority_reason}"
    segments.append(er7.encode_segment("NTE", ["1", "L", note[:500]]))
    return OutboundMessage(control_id, er7.encode_message(segments))
