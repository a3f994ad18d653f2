"""The CDS services this door offers and the cards they return (CDS Hooks 2.0), without Flask or I/O.

* ``radtriage-cxr-triage`` on ``patient-view``: one card per recent chest X-ray triage result of the patient
  (newest first, at most `MAX_RESULT_CARDS`): the priority, the findings at or above the model's operating point
  with their probabilities, the predicted severity, the findings the model did not assess, and a link to the
  study page. Critical for stat and asap, warning for urgent, info for routine.
* ``radtriage-cxr-order-sign`` on ``order-sign``: for each chest radiograph among ``draftOrders``, an info card
  saying that the study will be triaged by AI; and when a recent AI result for the same patient was urgent or
  more while the draft asks for less, a warning card with a suggestion (an ``update`` action) to raise the draft's
  priority. Never a suggestion to lower one, and none from a result in shadow mode (its priority is the order's
  own: the model's was recorded, not acted on).

Every card's ``source.label`` says the content is AI-generated, and ``source.topic`` is the HL7 AIAST code
(Artificial Intelligence asserted), the same label the FHIR resources carry.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from ..app.core.domain import ImagingOrder, Priority, TriageResult

JsonObject = dict[str, Any]

PATIENT_VIEW_SERVICE: Final = "radtriage-cxr-triage"
ORDER_SIGN_SERVICE: Final = "radtriage-cxr-order-sign"
MAX_RESULT_CARDS: Final = 5
#: CDS Hooks 2.0: Card.summary "SHALL be less than 140 characters".
MAX_SUMMARY: Final = 139
AIAST_TOPIC: Final = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
#: The reasons a clinician may give for not following a suggestion (Card.overrideReasons).
OVERRIDE_SYSTEM: Final = "urn:radtriage:cds-override-reason"
#: LOINC codes of chest radiograph orders (Radiology Playbook: XR Chest, any number of views).
CHEST_XR_LOINC: Final = frozenset({"36643-5", "36554-4", "30745-4", "24627-2", "36687-2", "42272-5", "36572-6"})
_CHEST_TEXT: Final = re.compile(r"\bchest\b", re.IGNORECASE)
_XRAY_TEXT: Final = re.compile(r"x-?ray|radiograph|\bxr\b|\bcxr\b|\bcr\b|\bdx\b", re.IGNORECASE)
_INDICATOR: Final = {Priority.STAT: "critical", Priority.ASAP: "critical", Priority.URGENT: "warning"}
#: Order priorities from FHIR request-priority, for reading a draft ServiceRequest.
_REQUEST_PRIORITY: Final = {p.code: p for p in Priority}


@dataclass(frozen=True)
class ScoredStudy:
    """One recent result of the patient and the order it answered."""

    order: ImagingOrder
    result: TriageResult


def discovery() -> JsonObject:
    """The ``GET /cds-services`` document (CDS Hooks 2.0, Discovery)."""
    prefetch = {"patient": "Patient/{{context.patientId}}"}
    return {
        "services": [
            {
                "hook": "patient-view",
                "id": PATIENT_VIEW_SERVICE,
                "title": "Chest X-ray AI triage results",
                "description": (
                    "The patient's recent chest X-ray triage results from radtriage (AI-generated, preliminary): "
                    "priority, findings, severity, findings not assessed, and a link to the study."
                ),
                "prefetch": prefetch,
                "usageRequirements": "The Patient prefetch (or fhirServer access) lets results from HL7 orders, "
                "whose patient is known by identifier, be found too.",
            },
            {
                "hook": "order-sign",
                "id": ORDER_SIGN_SERVICE,
                "title": "Chest X-ray AI triage at order signing",
                "description": (
                    "Says when a chest radiograph order will be triaged by AI, and suggests raising the order's "
                    "priority when a recent AI triage result for the same patient was urgent or more."
                ),
                "prefetch": prefetch,
            },
        ]
    }


def source(results: Sequence[ScoredStudy], base_url: str) -> JsonObject:
    """Card.source: who made the content, labelled as AI-generated."""
    models = sorted({f"{s.result.model.name} {s.result.model.version}" for s in results})
    label = "radtriage AI triage (AI-generated, preliminary)"
    if models:
        label = f"radtriage AI triage, model {', '.join(models)} (AI-generated, preliminary)"
    return {"label": label[:200], "url": base_url or None, "topic": AIAST_TOPIC}


def patient_view_cards(studies: Sequence[ScoredStudy], study_url: str, base_url: str) -> list[JsonObject]:
    """One card per result, newest first. `study_url` has ``{job_id}`` where the job id goes."""
    ordered = sorted(studies, key=lambda s: s.result.created_at or datetime.min, reverse=True)
    cards = []
    for study in ordered[:MAX_RESULT_CARDS]:
        result = study.result
        positives = result.positive_findings
        named = ", ".join(f.label for f in positives) if positives else "no finding at the operating point"
        summary = f"AI chest X-ray triage: {result.priority.code.upper()} ({named})"
        cards.append(
            _card(
                summary=summary,
                indicator=_INDICATOR.get(result.priority, "info"),
                detail=_result_detail(study),
                source=source([study], base_url),
                links=[
                    {
                        "label": "Open the study in radtriage",
                        "url": study_url.format(job_id=result.job_id),
                        "type": "absolute",
                    }
                ],
            )
        )
    return cards


def _result_detail(study: ScoredStudy) -> str:
    result = study.result
    lines = []
    if result.model.placeholder:
        lines.append("**UNTRAINED PLACEHOLDER MODEL: these results have no clinical meaning.**\n")
    when = result.created_at.strftime("%Y-%m-%d %H:%M UTC") if result.created_at else "unknown time"
    reason = f" ({result.priority_reason})" if result.priority_reason else ""
    lines.append(f"**Priority:** {result.priority.code}{reason}  ")
    if result.shadow:
        would = result.model_priority.code if result.model_priority else "unknown"
        lines.append(f"*Shadow mode: the model's priority ({would}) was recorded, not acted on.*  ")
    lines.append(f"**Scored:** {when}, accession {study.order.accession_number or 'not given'}  ")
    if result.severity is not None:
        lines.append(f"**Predicted severity** (geographic extent, 0 to 8): {result.severity:.1f}  ")
    if result.positive_findings:
        lines.append("\n**Findings at or above the model's operating point:**\n")
        lines += [f"- {f.label}: {f.probability:.2f} (threshold {f.threshold:.2f})" for f in result.positive_findings]
    else:
        lines.append("\nNo finding reached the model's operating point.")
    if result.not_assessed:
        lines.append(f"\n**Not assessed by the model** (no output for them): {', '.join(result.not_assessed)}.")
    lines.append(
        f"\n*Preliminary machine triage by {result.model.name} {result.model.version}; not a radiologist's report.*"
    )
    return "\n".join(lines)


def is_chest_radiograph(request: JsonObject) -> bool:
    """Whether a draft ServiceRequest orders a chest radiograph: a known LOINC code, or text that says so."""
    code: JsonObject = request["code"] if isinstance(request.get("code"), dict) else {}
    codings = [c for c in code.get("coding") or [] if isinstance(c, dict)]
    if any(c.get("system") == "http://loinc.org" and c.get("code") in CHEST_XR_LOINC for c in codings):
        return True
    texts = [str(code.get("text") or "")] + [str(c.get("display") or "") for c in codings]
    return any(_CHEST_TEXT.search(text) and _XRAY_TEXT.search(text) for text in texts)


def draft_priority(request: JsonObject) -> Priority:
    """The draft's requested priority (routine when absent; an unknown code is read as routine, never higher)."""
    return _REQUEST_PRIORITY.get(str(request.get("priority") or "routine"), Priority.ROUTINE)


def order_sign_cards(
    drafts: Sequence[JsonObject], recent: Sequence[ScoredStudy], study_url: str, base_url: str
) -> list[JsonObject]:
    """Cards for the chest radiographs among `drafts` (draft ServiceRequests), given the patient's `recent` results."""
    cards: list[JsonObject] = []
    most_urgent = max(recent, key=lambda s: (s.result.priority, s.result.created_at or datetime.min), default=None)
    for draft in drafts:
        if not is_chest_radiograph(draft):
            continue
        what = str((draft.get("code") or {}).get("text") or "This chest radiograph")
        cards.append(
            _card(
                summary=f"{what[:60]}: radtriage will triage the images by AI when they arrive",
                indicator="info",
                detail=(
                    "The images of this order will be scored by radtriage's chest X-ray model. An urgent finding "
                    "can raise the worklist priority, never lower it; a radiologist reads every study. Findings "
                    "the model cannot assess are reported as not assessed."
                ),
                source=source([], base_url),
            )
        )
        requested = draft_priority(draft)
        if (
            most_urgent is None
            or most_urgent.result.priority < Priority.URGENT
            or requested >= most_urgent.result.priority
        ):
            continue
        cards.append(_raise_priority_card(draft, requested, most_urgent, study_url, base_url))
    return cards


def _raise_priority_card(
    draft: JsonObject, requested: Priority, urgent: ScoredStudy, study_url: str, base_url: str
) -> JsonObject:
    target = urgent.result.priority
    positives = ", ".join(f.label for f in urgent.result.positive_findings) or "see the result"
    updated = {**draft, "priority": target.code}
    suggestion = {
        "label": f"Raise this order's priority to {target.code}",
        "uuid": str(uuid.uuid4()),
        "isRecommended": False,
        "actions": [
            {
                "type": "update",
                "description": f"Set ServiceRequest.priority to {target.code} (was {requested.code})",
                "resource": updated,
            }
        ],
    }
    when = urgent.result.created_at.strftime("%Y-%m-%d") if urgent.result.created_at else "recently"
    return _card(
        summary=f"Recent AI chest X-ray triage was {target.code.upper()}: consider raising this order's priority",
        indicator="warning",
        detail=(
            f"radtriage triaged this patient's chest X-ray of {when} as **{target.code}** ({positives}). This order "
            f"is **{requested.code}**. The suggestion raises it to {target.code}; radtriage never lowers a priority."
            "\n\n" + _result_detail(urgent)
        ),
        source=source([urgent], base_url),
        suggestions=[suggestion],
        links=[
            {
                "label": "Open the earlier study in radtriage",
                "url": study_url.format(job_id=urgent.result.job_id),
                "type": "absolute",
            }
        ],
    )


def _study_link(label: str, study_url: str, job_id: str) -> JsonObject:
    return {"label": label, "url": study_url.format(job_id=job_id), "type": "absolute"}


def _card(
    *,
    summary: str,
    indicator: str,
    detail: str,
    source: JsonObject,
    suggestions: list[JsonObject] | None = None,
    links: list[JsonObject] | None = None,
) -> JsonObject:
    card: JsonObject = {
        "uuid": str(uuid.uuid4()),
        "summary": summary[:MAX_SUMMARY],
        "indicator": indicator,
        "detail": detail,
        "source": {k: v for k, v in source.items() if v is not None},
    }
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one"  # required with suggestions (CDS Hooks 2.0)
        card["overrideReasons"] = [
            {
                "code": "already-addressed",
                "system": "https://radtriage.example/cds/override",
                "display": "Already addressed",
            },
            {
                "code": "not-relevant",
                "system": "https://radtriage.example/cds/override",
                "display": "Not relevant to this order",
            },
        ]
    if links:
        card["links"] = links
    return card
