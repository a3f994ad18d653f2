"""Issue 13, HL7 defects 7-9, over real sockets with python-hl7's own MLLP client (an independent implementation):

7. an answer to a message whose MSH-2 cannot be used still echoes MSH-10 in MSA-2, so the sender can match it;
8. each sender is answered in its own dialect: OMI^O23 (v2.5+) with TQ1-9, ORM^O01 with ORC-7.6/OBR-27.6;
9. a study that cannot be analysed sends the RIS an update that says so, coded, at the order's own priority.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import hl7
import pydicom
import pytest
from hl7.client import MLLPClient

from radtriage.app.core.domain import JobState
from radtriage.app.factory import Components, build_components
from radtriage.hl7.door import HL7Door, build_hl7_door
from radtriage.model.placeholder import ensure_placeholder
from tests.hl7.conftest import parse_ack
from tests.hl7.messages import omi, orm
from tests.hl7.ris import Received, RisPeer
from tests.support.data import pydicom_data_dir


@pytest.mark.parametrize(
    "encoding",
    [
        pytest.param("^~}", id="three-encoding-characters (a HAPI sample)"),
        pytest.param("^~^&", id="duplicated-encoding-characters"),
        pytest.param("^~\\&ab", id="letters-among-encoding-characters"),
    ],
)
def test_an_unreadable_header_is_still_answered_with_its_control_id(door: HL7Door, encoding: str) -> None:
    message = orm("HAPI-CTRL-77").decode("ascii").replace("MSH|^~\\&|", f"MSH|{encoding}|", 1)
    with MLLPClient("127.0.0.1", door.port) as client:
        answer = client.send_message(message)
    msa = parse_ack(answer).segment("MSA")
    assert str(msa(1)) == "AR"
    assert str(msa(2)) == "HAPI-CTRL-77"  # used to be empty: the sender could not match the answer


def test_a_control_id_is_not_invented_when_there_is_none(door: HL7Door) -> None:
    with MLLPClient("127.0.0.1", door.port) as client:
        answer = client.send_message("MSH|^~|RIS|HOSP")
    msa = parse_ack(answer).segment("MSA")
    assert str(msa(1)) == "AR" and (len(msa) < 3 or str(msa(2)) == "")


# ---------------------------------------------------------------------------------------------- the RIS's updates


def wait_for_job(components: Components, key: str, timeout: float = 180) -> JobState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        order = components.store.find_order("hl7", key)
        job = components.store.job_for_order(order.id) if order and order.id else None
        if job is not None and job.state.is_terminal:
            return job.state
        time.sleep(0.1)
    raise AssertionError(f"the job for {key} did not finish")


def update_for(received: list[Received], placer: str) -> hl7.Message:
    [found] = [r.message for r in received if str(r.message.segment("ORC")(2)).startswith(placer)]
    return found


@pytest.mark.slow
def test_each_sender_gets_its_own_dialect_and_a_study_not_analysed_is_reported(
    components: Components, ris: RisPeer, tmp_path: Path
) -> None:
    studies = tmp_path / "archive"
    studies.mkdir()
    uids = {}
    for name in ("RG1_UNCR.dcm", "RG3_J2KI.dcm"):  # a chest PA radiograph, an extremity radiograph
        shutil.copy(pydicom_data_dir() / name, studies / name)
        uids[name] = str(pydicom.dcmread(studies / name, stop_before_pixels=True).StudyInstanceUID)
    settings = replace(
        components.settings,
        study_folder=str(studies),
        model=str(ensure_placeholder(tmp_path / "models")),  # this test is about HL7, not about the model
        ris_host="127.0.0.1",
        ris_port=ris.port,
        hl7_outbound_style="orm",  # the site default: an OMI sender must still get OMI back
        shadow_mode="off",  # the test asserts the priority update itself
        workers=1,
    )
    components.close()
    service = build_components(settings)
    door = build_hl7_door(service, settings, listen_port=0)
    service.start()
    door.start()
    try:
        chest = omi("O1", placer="CHESTOMI", study_uid=uids["RG1_UNCR.dcm"], priority="A")
        leg = orm("O2", placer="LEGORM", study_uid=uids["RG3_J2KI.dcm"], patient_id="P2", priority="S")
        with MLLPClient("127.0.0.1", door.port) as client:
            acks = [parse_ack(client.send_message(m.decode("ascii"))) for m in (chest, leg)]
        assert [str(a.segment("MSA")(1)) for a in acks] == ["AA", "AA"]
        assert wait_for_job(service, "RIS^HOSP|CHESTOMI") is JobState.COMPLETED
        assert wait_for_job(service, "RIS^HOSP|LEGORM") is JobState.FAILED  # an extremity: not analysed
        received = ris.wait_for(2, timeout=30)

        omi_update = update_for(received, "CHESTOMI")
        msh = omi_update.segment("MSH")
        assert (str(msh(9)), str(msh(12))) == ("OMI^O23^OMI_O23", "2.5.1")  # used to be ORM^O01 v2.5.1
        assert str(omi_update.segment("TQ1")(9)).split("^")[0] == "A"  # asap stays asap (placeholder flags nothing)
        assert str(omi_update.segment("ORC")(7)) == ""

        not_analysed = update_for(received, "LEGORM")
        msh = not_analysed.segment("MSH")
        assert (str(msh(9)), str(msh(12))) == ("ORM^O01", "2.3.1")
        orc, obr, nte = (not_analysed.segment(name) for name in ("ORC", "OBR", "NTE"))
        assert str(orc(1)) == "XO"
        assert str(orc(7)).split("^")[5] == str(obr(27)).split("^")[5] == "S"  # its own priority, never lower
        assert str(orc(16)).split("^")[0] == "NOT-ANALYSED"
        code, display, system = str(nte(4)).split("^")[:3]
        assert (code, system) == ("not-a-chest", "99RADTRIAGE") and "not a chest radiograph" in display
        assert "Not analysed by AI triage" in str(nte(3))
        with pytest.raises(KeyError):
            not_analysed.segment("TQ1")  # ORM^O01 has no TQ1 in any version
    finally:
        door.stop()
        service.close()
