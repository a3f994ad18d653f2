"""Issue 13, HL7 defects 7-9, over real sockets with python-hl7's own MLLP client (an independent implementation):

7. an answer to a message whose MSH-2 cannot be used still echoes MSH-10 in MSA-2, so the sender can match it;
8. each sender is answered in its own dialect: OMI^O23 (v2.5+) with TQ1-9, ORM^O01 with ORC-7.6/OBR-27.6;
9. a study that cannot be analysed sends the RIS an update that says so, coded, at the order's own priority.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import pydicom
import pytest
from hl7.client import MLLPClient

from radtriage.app.config import load_settings
from radtriage.app.core.domain import JobState
from radtriage.app.factory import Components, build_components
from radtriage.hl7.door import HL7Door, build_hl7_door
from radtriage.model.placeholder import ensure_placeholder
from tests.hl7.conftest import FAST, parse_ack
from tests.hl7.messages import frame, omi, orm
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


def test_mllp_send_gets_its_control_id_back_for_an_unreadable_header(door: HL7Door, tmp_path: Path) -> None:
    """python-hl7's command-line sender, as an integration engineer would try a HAPI sample by hand."""
    message = orm("HAPI-CTRL-78").decode("ascii").replace("MSH|^~\\&|", "MSH|^~}|", 1)
    sample = tmp_path / "hapi-sample.hl7"
    sample.write_bytes(frame(message.encode("ascii")))  # without --loose, mllp_send reads an MLLP-framed stream
    mllp_send = Path(sys.executable).with_name("mllp_send")
    run = subprocess.run(
        [str(mllp_send), "--port", str(door.port), "--file", str(sample), "127.0.0.1"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    msa = hl7.parse(run.stdout.decode("latin-1").strip().replace("\n", "\r")).segment("MSA")
    assert (str(msa(1)), str(msa(2))) == ("AR", "HAPI-CTRL-78")


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


@pytest.fixture(scope="module")
def updates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Received]]:
    """What the RIS received after an OMI^O23 v2.5.1 chest order (priority A) and an ORM^O01 v2.3.1 order of an
    extremity (priority S), both sent with python-hl7's MLLPClient and run through the real pipeline."""
    home = tmp_path_factory.mktemp("dialects")
    studies = home / "archive"
    studies.mkdir()
    uids = {}
    for name in ("RG1_UNCR.dcm", "RG3_J2KI.dcm"):  # a chest PA radiograph, an extremity radiograph
        shutil.copy(pydicom_data_dir() / name, studies / name)
        uids[name] = str(pydicom.dcmread(studies / name, stop_before_pixels=True).StudyInstanceUID)
    ris = RisPeer().start()
    settings = load_settings(
        env={},
        home=str(home),
        **FAST,
        study_folder=str(studies),
        model=str(ensure_placeholder(home / "models")),  # this test is about HL7, not about the model
        ris_host="127.0.0.1",
        ris_port=ris.port,
        hl7_outbound_style="orm",  # the site default: an OMI sender must still get OMI back
        shadow_mode="off",  # the tests assert the priority update itself
        workers=1,
    )
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
        time.sleep(1.0)  # anything else the outbox would send
        yield list(ris.received)
    finally:
        door.stop()
        service.close()
        ris.stop()


@pytest.mark.slow
def test_an_omi_sender_gets_omi_with_tq1_back(updates: list[Received]) -> None:
    omi_update = update_for(updates, "CHESTOMI")  # used to be ORM^O01 v2.5.1 with ORC-7.6 and no TQ1
    msh = omi_update.segment("MSH")
    assert (str(msh(9)), str(msh(12))) == ("OMI^O23^OMI_O23", "2.5.1")
    assert str(omi_update.segment("TQ1")(9)).split("^")[0] == "A"  # asap stays asap (placeholder flags nothing)
    assert str(omi_update.segment("ORC")(7)) == ""
    assert str(omi_update.segment("IPC")(3))  # the Study Instance UID, where OMI carries it


@pytest.mark.slow
def test_a_study_not_analysed_is_reported_at_the_orders_priority(updates: list[Received]) -> None:
    not_analysed = update_for(updates, "LEGORM")  # used to be nothing: the RIS could not tell it from "working"
    msh = not_analysed.segment("MSH")
    assert (str(msh(9)), str(msh(12))) == ("ORM^O01", "2.3.1")  # and in the ORM sender's own dialect
    orc, obr, nte = (not_analysed.segment(name) for name in ("ORC", "OBR", "NTE"))
    assert str(orc(1)) == "XO"
    assert str(orc(7)).split("^")[5] == str(obr(27)).split("^")[5] == "S"  # its own priority, never lower
    assert str(orc(16)).split("^")[0] == "NOT-ANALYSED"
    code, display, system = str(nte(4)).split("^")[:3]
    assert (code, system) == ("not-a-chest", "99RADTRIAGE") and "not a chest radiograph" in display
    assert "Not analysed by AI triage" in str(nte(3))
    with pytest.raises(KeyError):
        not_analysed.segment("TQ1")  # ORM^O01 has no TQ1 in any version
    assert len(updates) == 2  # one message per order, nothing more
