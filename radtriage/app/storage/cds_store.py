"""`CdsRecords` (radtriage.cds.records) on SQLAlchemy Core, SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Engine, insert, select

from ...cds.records import Feedback, IssuedCard
from .cds_tables import cds_cards, cds_feedback
from .database import as_utc


class SqlCdsRecords:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def cards_issued(self, cards: Sequence[IssuedCard]) -> None:
        if not cards:
            return
        rows = [
            {
                "uuid": c.uuid,
                "service_id": c.service_id,
                "hook_instance": c.hook_instance[:64],
                "issuer": c.issuer[:255],
                "patient_ref": c.patient_ref[:255],
                "job_id": c.job_id,
                "issued_at": c.issued_at,
            }
            for c in cards
        ]
        with self.engine.begin() as connection:
            connection.execute(insert(cds_cards), rows)

    def card(self, card_uuid: str) -> IssuedCard | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(cds_cards).where(cds_cards.c.uuid == card_uuid)).first()
        if row is None:
            return None
        m = row._mapping
        issued_at = as_utc(m["issued_at"])
        assert issued_at is not None
        return IssuedCard(
            m["uuid"], m["service_id"], m["hook_instance"], m["issuer"], m["patient_ref"], m["job_id"], issued_at
        )

    def add_feedback(self, entries: Sequence[Feedback], received_at: datetime) -> None:
        rows = [
            {
                "card_uuid": e.card_uuid,
                "service_id": e.service_id,
                "issuer": e.issuer[:255],
                "outcome": e.outcome,
                "accepted_suggestions": list(e.accepted_suggestions),
                "override_reason": e.override_reason,
                "outcome_timestamp": e.outcome_timestamp,
                "received_at": received_at,
            }
            for e in entries
        ]
        if rows:
            with self.engine.begin() as connection:
                connection.execute(insert(cds_feedback), rows)

    def feedback(self, card_uuid: str) -> list[Feedback]:
        query = select(cds_feedback).where(cds_feedback.c.card_uuid == card_uuid).order_by(cds_feedback.c.id)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        found = []
        for row in rows:
            m = row._mapping
            at = as_utc(m["outcome_timestamp"])
            assert at is not None
            found.append(
                Feedback(
                    m["card_uuid"],
                    m["service_id"],
                    m["issuer"],
                    m["outcome"],
                    tuple(m["accepted_suggestions"]),
                    m["override_reason"],
                    at,
                )  # fmt: skip
            )
        return found
