"""Priority updates to the RIS: written by the pipeline's publishing stage, sent by the durable outbox to a
test RIS over a real socket."""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import given
from hypothesis import strategies as st

from radtriage.app.core.domain import FindingScore, ImagingOrder, ModelIdentity, Priority, TriageResult
from radtriage.app.factory import Components, build_components
from radtriage.hl7 import er7
from radtriage.hl7.door import HL7Door, build_hl7_door
from radtriage.hl7.mllp import MLLPClient
from radtriage.hl7.outbound import OutboundOptions, OutboundStyle, order_identity, priority_update
from radtriage.hl7.outbox import (
    HL7ResultPublisher,
    OutboxMessage,
    OutboxSender,
    OutboxState,
    OutboxStore,
    PublishOptions,
)
from radtriage.hl7.priority_map import DEFAULT_PRIORITY_MAP
from radtriage.hl7.store import HL7Store
from tests.hl7.messages import omi, orm
from tests.hl7.ris import RisPeer

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
MODEL = ModelIdentity("radtriage-cxr", "1.0.0", "ab" * 32)


class ManualClock:
    def __init__(self) -> None:
        self.moment = T0

    def now(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


def receive(components: Components, *payloads: bytes) -> list[ImagingOrder]:
    """Orders as the door commits them (straight to the receiver; sockets are tested elsewhere)."""
    receiver = build_hl7_door(components).receiver
    stored = []
    for payload in payloads:
        answer = receiver.answer(payload)
        assert "MSA|AA" in answer, answer
        message = er7.parse(payload.decode("latin-1"))
        orc = message.first("ORC")
        assert orc is not None
        order = components.store.find_order("hl7", f"RIS^HOSP|{orc.value(2)}")
        assert order is not None
        stored.append(order)
    return stored


def result_for(components: Components, order: ImagingOrder, priority: Priority) -> TriageResult:
    assert order.id is not None
    job = components.store.job_for_order(order.id)
    assert job is not None
    return TriageResult(
        job_id=job.id,
        findings=(FindingScore("Pneumothorax", 0.91, 0.5), FindingScore("Effusion", 0.12, 0.4)),
        priority=priority,
        model=MODEL,
        series_instance_uid="1.2.3.9.1",
        sop_instance_uid="1.2.3.9.1.1",
        priority_reason="Pneumothorax 0.91 >= 0.50",
        created_at=T0,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def outbox(components: Components) -> OutboxStore:
    return OutboxStore(components.engine)


def publisher(components: Components, outbox: OutboxStore, clock: ManualClock, **options: object) -> HL7ResultPublisher:
    style = options.pop("style", OutboundStyle.ORM)
    return HL7ResultPublisher(
        outbox,
        HL7Store(components.engine),
        PublishOptions(OutboundOptions(style=style), **options),  # type: ignore[arg-type]
        clock=clock,
    )


def sender(outbox: OutboxStore, ris: RisPeer, clock: ManualClock, timeout: float = 2.0) -> OutboxSender:
    return OutboxSender(outbox, MLLPClient(ris.host, ris.port, timeout=timeout), clock=clock, retry_base=1, retry_max=8)


def segment(message: hl7.Message, name: str) -> hl7.Segment:
    return message.segment(name)


def test_an_orm_xo_with_the_new_priority_reaches_the_ris(
    components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer
) -> None:
    [order] = receive(components, orm(priority="R"))
    publisher(components, outbox, clock).publish(order, result_for(components, order, Priority.STAT))
    assert sender(outbox, ris, clock).deliver_due() == 1
    [got] = ris.received
    message = got.message
    assert str(segment(message, "MSH")(9)) == "ORM^O01" and str(segment(message, "MSH")(12)) == "2.3.1"
    orc, obr = segment(message, "ORC"), segment(message, "OBR")
    assert str(orc(1)) == "XO"
    assert str(orc(2)) == "PL1001^RIS" and str(orc(3)) == "FL1001^PACS"  # exactly as the RIS sent them
    assert str(orc(7)) == "^^^^^S" and str(obr(27)) == "^^^^^S"  # TQ.6: the new priority
    assert str(obr(4)) == "CXR^Chest X-ray PA^L" and str(obr(18)) == "ACC1001"
    assert str(segment(message, "PID")(3)) == "PAT1001^^^HOSP^MR~99-PAT1001^^^SSA^SS"
    assert str(segment(message, "PID")(5)) == "Doe^John"  # PID-5 is required: echoed as received
    assert str(segment(message, "ZDS")(1)(1)(1)) == order.study_instance_uid
    [stored] = outbox.messages()
    assert stored.state is OutboxState.SENT and stored.sent_at == T0


def test_omi_style_puts_the_priority_in_tq1_and_the_study_in_ipc(
    components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer
) -> None:
    [order] = receive(components, omi(priority="R"))
    publisher(components, outbox, clock, style=OutboundStyle.OMI).publish(
        order, result_for(components, order, Priority.ASAP)
    )
    sender(outbox, ris, clock).deliver_due()
    text = ris.received[0].text
    assert parse_message(text, validation_level=VALIDATION_LEVEL.STRICT).validate()  # an independent validator
    message = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    assert message.msh.msh_9.to_er7() == "OMI^O23^OMI_O23"
    assert message.orc.orc_1.to_er7() == "XO"
    assert message.tq1.tq1_9.to_er7() == "A^ASAP^HL70485"
    assert message.ipc.ipc_1.to_er7() == "ACC2001" and message.ipc.ipc_3.to_er7() == order.study_instance_uid


def test_the_priority_sent_is_never_lower_than_the_order_arrived_with(
    components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer
) -> None:
    [order] = receive(components, orm(priority="S"))
    publisher(components, outbox, clock).publish(order, result_for(components, order, Priority.ROUTINE))
    sender(outbox, ris, clock).deliver_due()
    assert str(segment(ris.received[0].message, "ORC")(7)) == "^^^^^S"


@given(st.sampled_from(list(Priority)), st.sampled_from(list(Priority)), st.sampled_from(list(OutboundStyle)))
def test_written_priority_reads_back_at_least_the_higher_one(
    requested: Priority, decided: Priority, style: OutboundStyle
) -> None:
    order = ImagingOrder("1.2.3", "H|P1", "hl7", "k", requested_priority=requested, placer_order_number="PL")
    wanted = max(requested, decided)
    text = priority_update(order, order_identity(order, None), wanted, OutboundOptions(style=style), now=T0).text
    message = er7.parse(text)
    tq1, orc = message.first("TQ1"), message.first("ORC")
    code = tq1.value(9) if tq1 else orc.value(7, 6) if orc else ""
    assert DEFAULT_PRIORITY_MAP.from_hl7(code) == wanted >= requested


def test_publishing_a_job_twice_stores_one_message(
    components: Components, outbox: OutboxStore, clock: ManualClock
) -> None:
    [order] = receive(components, orm())
    result = result_for(components, order, Priority.ASAP)
    publish = publisher(components, outbox, clock)
    publish.publish(order, result)
    publish.publish(order, result)
    assert len(outbox.messages()) == 1


def test_orders_from_other_doors_are_not_sent_to_the_ris(
    components: Components, outbox: OutboxStore, clock: ManualClock
) -> None:
    order, job, _ = components.service.submit_order(
        ImagingOrder("1.2.3.8", "Patient/1", "fhir", "ImagingStudy/1", placer_order_number="X")
    )
    publisher(components, outbox, clock).publish(order, replace(result_for(components, order, Priority.STAT)))
    assert outbox.messages() == []


def test_the_ris_down_then_up(components: Components, outbox: OutboxStore, clock: ManualClock) -> None:
    [order] = receive(components, orm())
    publisher(components, outbox, clock).publish(order, result_for(components, order, Priority.STAT))
    with socket.socket() as probe:  # a free port with nobody listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = OutboxSender(outbox, MLLPClient("127.0.0.1", port, timeout=1), clock=clock, retry_base=1, retry_max=8)
    assert down.deliver_due() == 0
    [message] = outbox.messages()
    assert message.state is OutboxState.PENDING and message.attempts == 1
    assert message.next_attempt_at == T0 + timedelta(seconds=1) and "no answer" in (message.last_error or "")
    assert down.deliver_due() == 0 and outbox.messages()[0].attempts == 1  # not due yet: not tried

    up = RisPeer(port=port).start()
    try:
        clock.advance(1)
        assert down.deliver_due() == 1
        assert [r.control_id for r in up.received] == [message.control_id]
    finally:
        up.stop()


def test_ar_is_retried_with_backoff_and_the_same_control_id(
    components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer
) -> None:
    answers = iter(["AR", "AR", "AR", "AR", "AA"])
    ris.behaviour = lambda _m: next(answers)
    [order] = receive(components, orm())
    publisher(components, outbox, clock).publish(order, result_for(components, order, Priority.STAT))
    send = sender(outbox, ris, clock)
    delays = []
    for _ in range(4):
        send.deliver_due()
        message = outbox.messages()[0]
        delays.append((message.next_attempt_at - clock.now()).total_seconds())
        clock.moment = message.next_attempt_at
    assert delays == [1, 2, 4, 8]
    assert send.deliver_due() == 1
    assert outbox.messages()[0].state is OutboxState.SENT
    assert len({r.control_id for r in ris.received}) == 1 and len(ris.received) == 5


def test_a_silent_ris_is_retried(components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer) -> None:
    answers = iter(["silent", "AA"])
    ris.behaviour = lambda _m: next(answers)
    [order] = receive(components, orm())
    publisher(components, outbox, clock).publish(order, result_for(components, order, Priority.STAT))
    send = sender(outbox, ris, clock, timeout=0.3)
    assert send.deliver_due() == 0
    clock.advance(1)
    assert send.deliver_due() == 1
    assert len(ris.received) == 2


def test_ae_parks_the_message_and_holds_back_that_patients_later_ones(
    components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer
) -> None:
    first, second = receive(
        components,
        orm("M1", placer="A1", study_uid="1.2.3.1", patient_id="PAT-A"),
        orm("M2", placer="A2", study_uid="1.2.3.2", patient_id="PAT-A"),
    )
    [other] = receive(components, orm("M3", placer="B1", study_uid="1.2.3.3", patient_id="PAT-B"))
    publish = publisher(components, outbox, clock)
    for order in (first, second, other):
        publish.publish(order, result_for(components, order, Priority.STAT))
    ris.behaviour = lambda m: "AE" if str(m.segment("ORC")(2)(1)(1)) == "A1" else "AA"
    send = sender(outbox, ris, clock)

    assert send.deliver_due() == 1  # A1 parked; A2 waits behind it; B1 goes
    assert [str(r.message.segment("ORC")(2)(1)(1)) for r in ris.received] == ["A1", "B1"]
    states: dict[str | None, OutboxMessage] = {m.order_id: m for m in outbox.messages()}
    parked = states[first.id]
    assert parked.state is OutboxState.PARKED and (parked.last_error or "").startswith("AE")
    assert states[second.id].state is OutboxState.PENDING
    clock.advance(3600)
    assert send.deliver_due() == 0 and len(ris.received) == 2  # never re-sent blindly

    assert outbox.discard(parked.id, clock.now())  # a person decides; then A2 may go
    assert send.deliver_due() == 1
    assert [str(r.message.segment("ORC")(2)(1)(1)) for r in ris.received] == ["A1", "B1", "A2"]


def test_a_released_message_is_sent_again(
    components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer
) -> None:
    answers = iter(["AE", "AA"])
    ris.behaviour = lambda _m: next(answers)
    [order] = receive(components, orm())
    publisher(components, outbox, clock).publish(order, result_for(components, order, Priority.STAT))
    send = sender(outbox, ris, clock)
    send.deliver_due()
    [message] = outbox.messages(state=OutboxState.PARKED)
    assert outbox.release(message.id, clock.now())
    assert send.deliver_due() == 1 and outbox.messages()[0].state is OutboxState.SENT


def test_messages_for_one_patient_keep_their_order_through_retries(
    components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer
) -> None:
    orders = receive(
        components,
        *[orm(f"P{n}", placer=f"P{n}", study_uid=f"1.2.3.{n}", patient_id="PAT-SAME") for n in range(4)],
    )
    publish = publisher(components, outbox, clock)
    for order in orders:
        publish.publish(order, result_for(components, order, Priority.STAT))
    verdicts = iter(["AA", "AR", "AA", "AR", "AR", "AA", "AA"])
    ris.behaviour = lambda _m: next(verdicts)
    send = sender(outbox, ris, clock)
    for _ in range(10):
        send.deliver_due()
        clock.advance(10)
    sent_order = [str(r.message.segment("ORC")(2)(1)(1)) for r in ris.received if r.answer == "AA"]
    assert sent_order == ["P0", "P1", "P2", "P3"]
    tried = [str(r.message.segment("ORC")(2)(1)(1)) for r in ris.received]
    assert tried == ["P0", "P1", "P1", "P2", "P2", "P2", "P3"]


def test_an_oru_with_the_findings_and_the_model(
    components: Components, outbox: OutboxStore, clock: ManualClock, ris: RisPeer
) -> None:
    [order] = receive(components, omi())
    result = result_for(components, order, Priority.STAT)
    result = replace(result, model=replace(MODEL, placeholder=True))
    publisher(components, outbox, clock, style=OutboundStyle.OMI, send_results=True).publish(order, result)
    assert sender(outbox, ris, clock).deliver_due() == 2
    assert parse_message(ris.received[1].text, validation_level=VALIDATION_LEVEL.STRICT).validate()
    oru = ris.received[1].message
    assert str(oru.segment("MSH")(9)) == "ORU^R01^ORU_R01"
    obx = [s for s in oru if str(s(0)) == "OBX"]
    assert str(obx[0](5)) == "S^Stat^HL70485"
    assert str(obx[1](3)(1)(1)) == "110180" and str(obx[1](5)) == order.study_instance_uid
    findings = {str(s(3)(1)(1)): (str(s(5)), str(s(8))) for s in obx[2:]}
    assert findings == {"Pneumothorax": ("0.910", "A"), "Effusion": ("0.120", "N")}
    assert all(str(s(11)) == "P" for s in obx)  # preliminary: triage, not a report
    assert str(obx[0](17)(1)(2)) == "radtriage-cxr 1.0.0"
    assert "PLACEHOLDER MODEL" in str(oru.segment("NTE")(3))
    assert str(oru.segment("OBR")(25)) == "P"


def test_messages_survive_a_restart(components: Components, ris: RisPeer) -> None:
    """Stored while the RIS is unreachable; sent by a new process (new engine, new door) once it is back."""
    settings = replace(components.settings, ris_host="127.0.0.1", ris_port=1)  # port 1: nobody listens
    door = build_hl7_door(components, settings, listen_port=0)
    door.start()
    try:
        [order] = receive(components, orm())
        assert door.publisher is not None
        door.publisher.publish(order, result_for(components, order, Priority.STAT))
        time.sleep(0.2)
    finally:
        door.stop()
    assert [m.state for m in OutboxStore(components.engine).messages()] == [OutboxState.PENDING]
    components.close()

    restarted = build_components(replace(settings, ris_port=ris.port))
    door = build_hl7_door(restarted)
    door.start()
    try:
        [got] = ris.wait_for(1, timeout=10)
        assert str(got.message.segment("ORC")(1)) == "XO"
        deadline = time.monotonic() + 5
        while OutboxStore(restarted.engine).messages()[0].state is not OutboxState.SENT:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        door.stop()
        restarted.close()


def test_the_door_registers_its_publisher_once(components: Components, ris: RisPeer) -> None:
    settings = replace(components.settings, ris_host="127.0.0.1", ris_port=ris.port)
    first: HL7Door = build_hl7_door(components, settings)
    build_hl7_door(components, settings)
    assert [p for p in components.service.publishers if isinstance(p, HL7ResultPublisher)] == [first.publisher]
    assert build_hl7_door(components).listener is None  # mllp_port 0: no listener
