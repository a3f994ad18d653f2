"""The database goes down (issue 15, docs/operations.md): the doors refuse in their protocol's shape, nothing
half-stored, and work resumes by itself when it is back. A real PostgreSQL cluster of its own, stopped and started."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from radtriage.app.config import Settings
from radtriage.app.demo import FHIR_JSON, DemoStudy, imaging_study
from radtriage.app.factory import Components, build_components, create_app
from radtriage.hl7.door import build_hl7_door
from tests.hl7.conftest import FAST
from tests.hl7.messages import orm
from tests.support.postgres import PostgresCluster, _pg_bin

pytestmark = pytest.mark.slow


class PausablePostgres(PostgresCluster):
    def pause(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.root / "log"), "-w",
                  "-o", options, "start")  # fmt: skip


@pytest.fixture
def postgres() -> Iterator[PausablePostgres]:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server is not installed (scripts/bootstrap.sh --dev installs it)")
    cluster = PausablePostgres(bindir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def components(postgres: PausablePostgres, tmp_path: Path) -> Iterator[Components]:
    settings = Settings(home=str(tmp_path), database_url=postgres.new_database(), **FAST)
    built = build_components(settings)  # workers not started: the doors alone
    yield built
    built.close()


def ack_code(ack: str) -> str:
    return next(line for line in ack.split("\r") if line.startswith("MSA|")).split("|")[1]


def test_the_doors_refuse_while_the_database_is_down_and_work_again_after(
    postgres: PausablePostgres, components: Components
) -> None:
    http = create_app(components=components).test_client()
    receiver = build_hl7_door(components).receiver
    first = http.post("/fhir/ImagingStudy", json=imaging_study(1, DemoStudy("a", "1.2.3.4.1")), headers=FHIR_JSON)
    assert first.status_code == 201
    assert ack_code(receiver.answer(orm("DB1", placer="P1", study_uid="1.2.3.4.11"))) == "AA"

    postgres.pause()
    down = http.post("/fhir/ImagingStudy", json=imaging_study(2, DemoStudy("b", "1.2.3.4.2")), headers=FHIR_JSON)
    assert down.status_code == 503 and down.headers["Retry-After"]  # "try again later", in HTTP terms
    assert down.get_json()["resourceType"] == "OperationOutcome"
    assert "Traceback" not in down.get_data(as_text=True)
    assert ack_code(receiver.answer(orm("DB2", placer="P2", study_uid="1.2.3.4.12"))) == "AR"  # "send it later"

    postgres.resume()
    again = http.post("/fhir/ImagingStudy", json=imaging_study(2, DemoStudy("b", "1.2.3.4.2")), headers=FHIR_JSON)
    assert again.status_code == 201
    assert ack_code(receiver.answer(orm("DB2", placer="P2", study_uid="1.2.3.4.12"))) == "AA"  # the resend
    assert http.get(f"/fhir/Task/{first.get_json()['id']}").status_code == 200
    _, total = components.store.list_jobs(limit=10)
    assert total == 4
