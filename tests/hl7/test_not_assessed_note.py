"""Issue 10 over HL7 v2: the priority update says in an NTE which findings the model did not assess, and the
ORU^R01 reports them as OBX with result status X (cannot be obtained) beside the severity."""

from __future__ import annotations

from dataclasses import replace

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from radtriage.app.core.domain import Priority
from radtriage.app.factory import Components
from radtriage.hl7.outbound import OutboundStyle
from radtriage.hl7.outbox import OutboxStore
from tests.hl7.messages import omi, orm
from tests.hl7.ris import RisPeer
from tests.hl7.test_outbox import ManualClock, clock, outbox, publisher, receive, result_for, sender

__all__ = ["clock", "outbox"]  # fixtures from test_outbox


def test_the_priority_update_notes_the_findings_not_assessed(
    components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer
) -> None:
    [order] = receive(components, orm(priority="R"))
    result = replace(result_for(components, order, Priority.URGENT), not_assessed=("Consolidation", "Pneumothorax"))
    publisher(components, outbox, clock).publish(order, result)
    assert sender(outbox, ris, clock).deliver_due() == 1
    message = ris.received[0].message
    notes = [str(s(3)) for s in message if str(s(0)) == "NTE"]
    assert notes[0] == result.priority_reason
    assert notes[1] == "Not assessed (the model has no output for them): Consolidation, Pneumothorax"
    assert [str(s(1)) for s in message if str(s(0)) == "NTE"] == ["1", "2"]


def test_omi_with_the_note_still_validates(
    components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer
) -> None:
    [order] = receive(components, omi(priority="R"))
    result = replace(result_for(components, order, Priority.URGENT), not_assessed=("Pneumothorax",))
    publisher(components, outbox, clock, style=OutboundStyle.OMI).publish(order, result)
    sender(outbox, ris, clock).deliver_due()
    text = ris.received[0].text
    assert parse_message(text, validation_level=VALIDATION_LEVEL.STRICT).validate()
    assert "Not assessed (the model has no output for them): Pneumothorax" in text


def test_no_note_when_everything_was_assessed(
    components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer
) -> None:
    [order] = receive(components, orm(priority="R"))
    publisher(components, outbox, clock).publish(order, result_for(components, order, Priority.URGENT))
    sender(outbox, ris, clock).deliver_due()
    assert [str(s(1)) for s in ris.received[0].message if str(s(0)) == "NTE"] == ["1"]


def test_the_oru_reports_severity_and_not_assessed_findings(
    components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer
) -> None:
    [order] = receive(components, omi())
    result = replace(result_for(components, order, Priority.URGENT), not_assessed=("Consolidation",), severity=4.3)
    publisher(components, outbox, clock, style=OutboundStyle.OMI, send_results=True).publish(order, result)
    assert sender(outbox, ris, clock).deliver_due() == 2
    assert parse_message(ris.received[1].text, validation_level=VALIDATION_LEVEL.STRICT).validate()
    obx = {str(s(3)(1)(1)): s for s in ris.received[1].message if str(s(0)) == "OBX"}
    assert str(obx["SEVERITY"](5)) == "4.3"
    assert str(obx["SEVERITY"](11)) == "P"
    assert str(obx["Consolidation"](11)) == "X" and str(obx["Consolidation"](5)) == ""
    assert str(obx["Pneumothorax"](11)) == "P" and str(obx["Effusion"](11)) == "P"
    assert "Not assessed" in str(ris.received[1].message.segment("NTE")(3))
