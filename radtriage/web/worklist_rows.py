"""How a worklist row and a study's findings are presented: chips in reading order, waiting time, reading state.

Finding chips, in this order (issue 14): flagged findings (score at or above the threshold), highest score first,
each with its threshold, so a flag on a low score is seen to come from a low threshold; then the other findings,
highest score first (the worklist shows the first `OTHER_CHIPS`, the study page all); then the findings the model
does **not assess** (`TriageResult.not_assessed`): never silently absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..app.core.domain import FindingScore
from ..app.core.errors import waiting_text
from .queries import SORTS, Status, WorklistQuery, WorklistRow, failure_text

#: Findings below threshold shown on a worklist row after the flagged ones (the rest: "+N more").
OTHER_CHIPS = 2


@dataclass(frozen=True)
class Chip:
    label: str
    kind: str  # "flagged" | "other" | "more" (how many others are left out) | "not-assessed"
    probability: float | None = None
    threshold: float | None = None

    @property
    def text(self) -> str:
        if self.kind == "not-assessed":
            return f"{self.label}: not assessed"
        if self.kind == "more":
            return self.label
        if self.kind == "flagged":
            return f"{self.label} {self.probability:.2f} ≥ {self.threshold:.2f}"
        return f"{self.label} {self.probability:.2f}"

    @property
    def title(self) -> str:
        if self.kind == "not-assessed":
            return f"{self.label}: this model cannot assess it; read the image for it"
        if self.kind == "more":
            return "Further findings below their thresholds: see the study page"
        relation = "at or above" if self.kind == "flagged" else "below"
        return f"{self.label}: score {self.probability:.2f}, {relation} its threshold {self.threshold:.2f}"


def finding_chips(
    findings: tuple[FindingScore, ...], not_assessed: tuple[str, ...], *, others: int | None = None
) -> tuple[list[Chip], int]:
    """Chips in reading order and how many below-threshold findings were left out (when `others` limits them)."""
    flagged = sorted((f for f in findings if f.positive), key=lambda f: -f.probability)
    rest = sorted((f for f in findings if not f.positive), key=lambda f: -f.probability)
    shown = rest if others is None else rest[:others]
    chips = [Chip(f.label, "flagged", f.probability, f.threshold) for f in flagged]
    chips += [Chip(f.label, "other", f.probability, f.threshold) for f in shown]
    if len(rest) > len(shown):
        chips.append(Chip(f"+{len(rest) - len(shown)} more", "more"))
    chips += [Chip(label, "not-assessed") for label in not_assessed]
    return chips, len(rest) - len(shown)


def arrival_text(received: datetime, now: datetime) -> str:
    """"07:31" today, "5 Dec 07:31" before (UTC, as the page's column header says)."""
    received = received.astimezone(UTC)
    if received.date() == now.astimezone(UTC).date():
        return received.strftime("%H:%M")
    return f"{received.day} {received.strftime('%b %H:%M')}"


def row_json(
    row: WorklistRow,
    now: datetime,
    *,
    url: Callable[..., str],
    patient: str,
    header: dict[str, str] | None,
    human_duration: Callable[[float | None], str],
) -> dict[str, Any]:
    chips, more = finding_chips(row.findings, row.not_assessed, others=OTHER_CHIPS)
    waiting = row.waiting_seconds(now)
    return {
        "id": row.job_id,
        "url": url("web.study_page", job_id=row.job_id),
        "thumb": url("web.study_thumbnail", job_id=row.job_id),
        "reading_url": url("web.study_reading", job_id=row.job_id),
        "priority": row.priority.code,
        "raised": row.priority > row.requested_priority,
        "shadow_priority": row.shadow_priority.code if row.shadow_priority else None,
        "severity": None if row.severity is None else round(row.severity, 1),
        "status": row.status.value,
        "status_label": row.status.label,
        "reason": failure_text(row.failure_code) if row.status is Status.NOT_ANALYSED else None,
        "patient": patient,
        "age": (header or {}).get("age", ""),
        "sex": (header or {}).get("sex", ""),
        "description": (header or {}).get("description", ""),
        "accession": row.accession_number or "",
        "received_at": row.received_at.isoformat(),
        "arrived": arrival_text(row.received_at, now),
        "waiting": human_duration(waiting),
        "waiting_s": waiting,
        "waiting_over": row.waiting_ended_at is not None,
        "claimed_by": row.claimed_by,
        "read_by": row.read_by,
        "read": row.is_read,
        "findings": [
            {"label": c.label, "probability": round(c.probability or 0, 4), "threshold": round(c.threshold or 0, 4),
             "positive": True}  # fmt: skip
            for c in chips
            if c.kind == "flagged"
        ],
        "chips": [{"text": c.text, "kind": c.kind, "title": c.title} for c in chips],
        "more": more,
        "not_assessed": list(row.not_assessed),
        "scored": bool(row.findings),
        "placeholder": row.placeholder_model,
        # A retryable failure that will be tried again (radtriage.app.retry) says so, with the time.
        "retry_at": row.next_attempt_at.isoformat(timespec="seconds") if row.next_attempt_at else None,
        **(
            {"reason": f"{waiting_text(row.failure_code)}, next try {row.next_attempt_at:%H:%M} UTC"}
            if row.next_attempt_at
            else {}
        ),
    }


def sort_links(query: WorklistQuery, args: dict[str, str], url: Callable[..., str]) -> dict[str, dict[str, Any]]:
    """For each sortable column: the address that sorts by it (again: reversed), and the current direction."""
    links = {}
    for name in SORTS:
        current = query.sort == name
        params = {k: v for k, v in args.items() if k not in ("sort", "dir") and v}
        params["sort"] = name
        if current and not query.descending:
            params["dir"] = "desc"
        state = ("descending" if query.descending else "ascending") if current else "none"
        links[name] = {"href": url("web.worklist_page", **params), "state": state}
    return links
