"""Issue 10 over HL7 v2: in shadow mode the RIS gets no priority update (and no ORU) from the model."""

from __future__ import annotations

from dataclasses import replace

from radtriage.app.core.domain import Priority
from radtriage.app.factory import Components
from radtriage.hl7.outbox import OutboxStore
from tests.hl7.messages import orm
from tests.hl7.ris import RisPeer
from tests.hl7.test_outbox import ManualClock, clock, outbox, publisher, receive, result_for, sender

__all__ = ["clock", "outbox"]  # fixtures from test_outbox


def test_a_shadow_result_sends_nothing_to_the_ris(
    components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer
) -> None:
    [order] = receive(components, orm(priority="R"))
    shadow = replace(
        result_for(components, order, Priority.ROUTINE), shadow=True, model_priority=Priority.STAT
    )
    publisher(components, outbox, clock, send_results=True).publish(order, shadow)
    assert outbox.messages() == []
    assert sender(outbox, ris, clock).deliver_due() == 0
    assert ris.received == []


def test_the_same_result_outside_shadow_mode_is_sent(
    components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer
) -> None:
    [order] = receive(components, orm(priority="R"))
    active = replace(result_for(components, order, Priority.STAT), shadow=False, model_priority=Priority.STAT)
    publisher(components, outbox, clock).publish(order, active)
    assert sender(outbox, ris, clock).deliver_due() == 1
    assert str(ris.received[0].message.segment("ORC")(7)) == "^^^^^S"
