"""The HL7 door's own records, on SQLAlchemy Core (SQLite and PostgreSQL alike): the message log that makes
re-sent messages harmless, and the HL7 identifiers of each order for the messages sent back to the RIS."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..app.storage.messaging_tables import hl7_message_log, hl7_order_context
from .mapping import OrderContext


@dataclass(frozen=True)
class LoggedAnswer:
    ack_code: str
    ack: str
    payload_sha256: str


class HL7Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------------ message log

    def find_answer(self, sender: str, control_id: str) -> LoggedAnswer | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(hl7_message_log.c.ack_code, hl7_message_log.c.ack, hl7_message_log.c.payload_sha256).where(
                    hl7_message_log.c.sender == sender, hl7_message_log.c.control_id == control_id
                )
            ).first()
        return LoggedAnswer(row.ack_code, row.ack, row.payload_sha256) if row else None

    def record_answer(
        self,
        *,
        sender: str,
        control_id: str,
        message_code: str,
        payload_sha256: str,
        ack_code: str,
        ack: str,
        at: datetime,
    ) -> LoggedAnswer:
        """Store the answer to a message; if the same message was answered meanwhile (two connections sent it
        at once), return that earlier answer instead, so both copies get the same ACK."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(hl7_message_log).values(
                        sender=sender,
                        control_id=control_id,
                        message_code=message_code,
                        payload_sha256=payload_sha256,
                        ack_code=ack_code,
                        ack=ack,
                        received_at=at,
                    )
                )
        except IntegrityError:
            earlier = self.find_answer(sender, control_id)
            if earlier is None:
                raise
            return earlier
        return LoggedAnswer(ack_code, ack, payload_sha256)

    # ------------------------------------------------------------------ order context

    def save_context(self, order_id: str, context: OrderContext, at: datetime) -> None:
        values = {"context": context.to_json(), "updated_at": at}
        with self.engine.begin() as conn:
            updated = conn.execute(
                update(hl7_order_context).where(hl7_order_context.c.order_id == order_id).values(values)
            )
            if updated.rowcount == 0:
                conn.execute(insert(hl7_order_context).values(order_id=order_id, **values))

    def get_context(self, order_id: str) -> OrderContext | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(hl7_order_context.c.context).where(hl7_order_context.c.order_id == order_id)
            ).first()
        return OrderContext.from_json(dict(row.context)) if row else None

