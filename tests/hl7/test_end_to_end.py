"""The whole HL7 flow on one machine: an ORM from the RIS over MLLP → the real pipeline (a folder of real
DICOM files, the real model code) → a priority update back to the RIS over MLLP."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from hl7.client import MLLPClient

from radtriage.app.core.domain import JobState
from radtriage.app.factory import Components, build_components
from radtriage.hl7.door import build_hl7_door
from radtriage.hl7.priority_map import DEFAULT_PRIORITY_MAP
from radtriage.model.placeholder import ensure_placeholder
from tests.hl7.conftest import ack_code
from tests.hl7.messages import orm
from tests.hl7.ris import RisPeer
from tests.support.data import pydicom_data_dir

pytestmark = pytest.mark.slow


def wait_for_job(components: Components, key: str, timeout: float = 180) -> JobState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        order = components.store.find_order("hl7", key)
        job = components.store.job_for_order(order.id) if order and order.id else None
        if job is not None and job.state.is_terminal:
            return job.state
        time.sleep(0.1)
    raise AssertionError(f"the job for {key} did not finish")


def test_an_hl7_order_is_triaged_and_the_ris_gets_the_priority(
    components: Components, ris: RisPeer, tmp_path: Path
) -> None:
    studies = tmp_path / "chest-studies"
    studies.mkdir()
    uids = {}
    for name in ("RG1_UNCR.dcm", "RG3_J2KI.dcm"):  # a chest PA radiograph, an extremity radiograph
        shutil.copy(pydicom_data_dir() / name, studies / name)
        uids[name] = str(pydicom.dcmread(studies / name, stop_before_pixels=True).StudyInstanceUID)

    # The untrained placeholder model: this test is about the HL7 flow, and must not depend on which trained
    # model the package ships.
    model = ensure_placeholder(tmp_path / "models")
    settings = replace(
        components.settings,
        study_folder=str(studies),
        model=str(model),
        ris_host="127.0.0.1",
        ris_port=ris.port,
        workers=1,
        shadow_mode="off",  # the RIS hears from the model only outside shadow mode (issue 10)
    )
    components.close()
    service = build_components(settings)
    door = build_hl7_door(service, settings, listen_port=0)
    service.start()
    door.start()
    try:
        assert door.port
        with MLLPClient("127.0.0.1", door.port) as client:
            chest = client.send_message(orm("E1", placer="CHEST", study_uid=uids["RG1_UNCR.dcm"], priority="A"))
            leg = client.send_message(orm("E2", placer="LEG", study_uid=uids["RG3_J2KI.dcm"], patient_id="P2"))
        assert [ack_code(chest), ack_code(leg)] == ["AA", "AA"]

        assert wait_for_job(service, "RIS^HOSP|CHEST") is JobState.COMPLETED
        assert wait_for_job(service, "RIS^HOSP|LEG") is JobState.FAILED  # not a chest: not analysed...
        received = ris.wait_for(2, timeout=30)
        [update] = [r for r in received if str(r.message.segment("ORC")(2)) == "CHEST^RIS"]
        [not_analysed] = [r for r in received if str(r.message.segment("ORC")(2)) == "LEG^RIS"]
        assert str(not_analysed.message.segment("ORC")(16)).startswith("NOT-ANALYSED")  # ...and the RIS is told
        orc = update.message.segment("ORC")
        assert str(orc(1)) == "XO" and str(orc(2)) == "CHEST^RIS"
        sent = DEFAULT_PRIORITY_MAP.from_hl7(str(orc(7)).split("^")[5])
        order = service.store.find_order("hl7", "RIS^HOSP|CHEST")
        assert order is not None and order.id is not None
        job = service.store.job_for_order(order.id)
        assert job is not None
        result = service.store.get_result(job.id)
        assert result is not None and sent == result.priority >= order.requested_priority
        time.sleep(0.5)
        assert len(ris.received) == 2
    finally:
        door.stop()
        service.close()
