"""One audit record as the compliance page and the study page show it: who, what in words, what was viewed.

Readers of the trail are people, not FHIR parsers: actions are words (Read, not R), a person's web sign-in is
"Signed in (web pages)" rather than the token-service wording of the same event kind, and each row says what was
looked at or changed (the view, the references, the search), from the AuditEvent's entities.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..compliance import codes
from ..compliance.audit import EVENT_KINDS
from ..compliance.audit_store import StoredAuditEvent
from .sessions import WEB_CLIENT_ID

#: AuditEvent.action codes (FHIR R4 value set audit-event-action) in words.
ACTION_NAMES = {"C": "Create", "R": "Read", "U": "Update", "D": "Delete", "E": "Execute"}
#: What a `view` detail means, for the pages' own records.
VIEW_NAMES = {
    "study": "study page",
    "image": "image",
    "image-full": "image at full resolution",
    "patient-identifier": "patient identifier revealed",
    "worklist": "worklist",
    "compliance": "audit search",
}
_MAX_WHAT = 160


def _view_text(view: str) -> str:
    if view.startswith("heatmap:"):
        return f"heatmap of {view.split(':', 1)[1]}"
    return VIEW_NAMES.get(view, view)


def what_was_viewed(resource: dict[str, Any]) -> str:
    """A short sentence of what the record is about: the view, the references (counted when many), the search."""
    details: dict[str, str] = {}
    references: list[str] = []
    query = ""
    for entity in resource.get("entity") or []:
        reference = ((entity.get("what") or {}).get("reference")) or ""
        if reference and not reference.startswith("Patient/"):
            references.append(reference)
        for detail in entity.get("detail") or []:
            if isinstance(detail.get("valueString"), str):
                details[str(detail.get("type"))] = detail["valueString"]
        if entity.get("query"):
            try:
                query = base64.b64decode(entity["query"]).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                query = ""
    parts = []
    if "view" in details:
        parts.append(_view_text(details["view"]))
    for key in ("action", "change", "account", "target", "method"):
        if key in details:
            parts.append(f"{key}: {details[key]}")
    if len(references) > 3:
        kinds = sorted({r.split("/", 1)[0] for r in references})
        parts.append(f"{len(references)} {'/'.join(kinds)} listed")
    elif references:
        parts.append(", ".join(references))
    if query:
        parts.append(f"search {query}")
    text = " · ".join(parts)
    return text if len(text) <= _MAX_WHAT else text[: _MAX_WHAT - 1] + "…"


@dataclass(frozen=True)
class AuditRow:
    """One audit record as the pages show it (who, what, outcome), read from its stored AuditEvent."""

    id: int
    recorded: datetime
    kind: str
    kind_display: str
    action: str
    action_name: str
    outcome: int
    client_id: str | None
    user_id: str | None
    patient_ref: str | None
    description: str | None
    what: str

    @classmethod
    def of(cls, event: StoredAuditEvent) -> AuditRow:
        resource = event.resource()
        user = None
        for agent in resource.get("agent", []):
            identifier = agent.get("who", {}).get("identifier", {})
            if identifier.get("system") == codes.USER_ID_SYSTEM:
                user = identifier.get("value")
        kind = EVENT_KINDS.get(event.kind or "")
        display = kind.display if kind else (event.kind or "")
        if event.kind == "login":
            # One event kind for both: a person signing in to the pages, a client getting an access token.
            display = "Signed in (web pages)" if event.client_id == WEB_CLIENT_ID else "Access token issued"
        return cls(
            id=event.id,
            recorded=event.recorded,
            kind=event.kind or "",
            kind_display=display,
            action=event.action,
            action_name=ACTION_NAMES.get(event.action, event.action),
            outcome=event.outcome,
            client_id=event.client_id,
            user_id=user,
            patient_ref=event.patient_ref,
            description=resource.get("outcomeDesc"),
            what=what_was_viewed(resource),
        )
