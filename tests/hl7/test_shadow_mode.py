"""Issue 10 over HL7 v2: in shadow mode the RIS gets no priority update (and no ORU) from the model."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import pydicom
from hl7.client import MLLPClient

from radtriage.app.core.domain import JobState, Priority
from radtriage.app.factory import Components, build_components
from radtriage.hl7.door import build_hl7_door
from radtriage.hl7.outbox import OutboxStore
from radtriage.model.placeholder import ensure_placeholder
from tests.hl7.conftest import ack_code
from tests.hl7.messages import orm
from tests.hl7.ris import RisPeer
from tests.hl7.test_end_to_end import wait_for_job
from tests.hl7.test_outbox import ManualClock, clock, outbox, publisher, receive, result_for, sender
from tests.support.data import pydicom_data_dir

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


def test_over_mllp_by_default_the_ris_hears_only_what_was_not_analysed(
    components: Components, ris: RisPeer, tmp_path: Path
) -> None:
    """The default settings (shadow_mode auto, no site validation): an ORM in over MLLP is acknowledged and scored,
    the RIS gets no priority update for it; a study that could not be analysed is still reported."""
    studies = tmp_path / "chest-studies"
    studies.mkdir()
    uids = {}
    for name in ("RG1_UNCR.dcm", "RG3_J2KI.dcm"):
        shutil.copy(pydicom_data_dir() / name, studies / name)
        uids[name] = str(pydicom.dcmread(studies / name, stop_before_pixels=True).StudyInstanceUID)
    settings = replace(
        components.settings, study_folder=str(studies), model=str(ensure_placeholder(tmp_path / "models")),
        ris_host="127.0.0.1", ris_port=ris.port, workers=1,
    )  # fmt: skip
    assert settings.shadow_mode == "auto"
    components.close()
    service = build_components(settings)
    door = build_hl7_door(service, settings, listen_port=0)
    service.start()
    door.start()
    try:
        with MLLPClient("127.0.0.1", door.port) as client:
            chest = client.send_message(orm("E1", placer="CHEST", study_uid=uids["RG1_UNCR.dcm"], priority="A"))
            leg = client.send_message(orm("E2", placer="LEG", study_uid=uids["RG3_J2KI.dcm"], patient_id="P2"))
        assert [ack_code(chest), ack_code(leg)] == ["AA", "AA"]
        assert wait_for_job(service, "RIS^HOSP|CHEST") is JobState.COMPLETED
        assert wait_for_job(service, "RIS^HOSP|LEG") is JobState.FAILED
        [not_analysed] = ris.wait_for(1, timeout=30)
        assert str(not_analysed.message.segment("ORC")(2)) == "LEG^RIS"
        order = service.store.find_order("hl7", "RIS^HOSP|CHEST")
        assert order is not None and order.id is not None
        job = service.store.job_for_order(order.id)
        assert job is not None
        result = service.store.get_result(job.id)
        assert result is not None and result.shadow and result.priority is Priority.ASAP  # the order's own
        time.sleep(1.0)
        assert len(ris.received) == 1  # nothing about the chest
        assert OutboxStore(service.engine).messages(job_id=job.id) == []
    finally:
        door.stop()
        service.close()
