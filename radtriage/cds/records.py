"""The CDS door's port for what it must remember: the cards it issued and the feedback on them.

The SQL adapter is `radtriage.app.storage.cds_store.SqlCdsRecords`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class IssuedCard:
    uuid: str
    service_id: str
    hook_instance: str
    issuer: str
    patient_ref: str
    job_id: str | None
    issued_at: datetime


@dataclass(frozen=True)
class Feedback:
    """One entry of a feedback request (CDS Hooks 2.0, Feedback)."""

    card_uuid: str
    service_id: str
    issuer: str
    outcome: str  # accepted | overridden
    accepted_suggestions: tuple[str, ...]
    override_reason: dict[str, Any] | None
    outcome_timestamp: datetime


class CdsRecords(Protocol):
    def cards_issued(self, cards: Sequence[IssuedCard]) -> None: ...

    def card(self, card_uuid: str) -> IssuedCard | None: ...

    def add_feedback(self, entries: Sequence[Feedback], received_at: datetime) -> None:
        """Store every entry in one transaction."""
        ...

    def feedback(self, card_uuid: str) -> list[Feedback]: ...
