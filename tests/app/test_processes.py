"""`radtriage api` and `radtriage mllp` with a broker never load the model: no torch, little memory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hl7.client import MLLPClient

from tests.hl7.conftest import ack_code
from tests.hl7.messages import orm
from tests.support.redis import RedisServer

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
STUDY = {
    "resourceType": "ImagingStudy",
    "id": "proc-1",
    "status": "available",
    "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.826.0.1.3680043.10.543.77"}],
    "subject": {"reference": "Patient/proc-1"},
}
MAX_API_RSS_KB = 150 * 1024

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_env(redis_server: RedisServer, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "RADTRIAGE_QUEUE": "celery",
        "RADTRIAGE_BROKER_URL": redis_server.url,
        "RADTRIAGE_HOME": str(tmp_path),
        "RADTRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'radtriage.sqlite3'}",
    }


@pytest.fixture
def process(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def memory_of(pid: int) -> tuple[int, bool]:
    """Resident set (kB) and whether any torch library is mapped into the process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(status.split("VmRSS:")[1].split()[0])
    maps = Path(f"/proc/{pid}/maps").read_text()
    return rss, "libtorch" in maps or "/torch/" in maps


def test_the_api_process_answers_without_torch_in_150_mb(redis_server, tmp_path: Path, process) -> None:
    port = free_port()
    log = open(tmp_path / "api.log", "wb")  # noqa: SIM115 - the process owns it
    api = subprocess.Popen(
        [sys.executable, "-m", "radtriage.cli", "api", "--port", str(port)],
        env=broker_env(redis_server, tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    process.append(api)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(f"{base}/fhir/metadata", headers=FHIR, timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert api.poll() is None and time.monotonic() < deadline, (tmp_path / "api.log").read_text()[-3000:]
        time.sleep(0.2)
    created = requests.post(f"{base}/fhir/ImagingStudy", json=STUDY, headers=FHIR, timeout=30)
    assert created.status_code == 201
    task = requests.get(f"{base}/fhir/Task/{created.json()['id']}", headers=FHIR, timeout=30).json()
    assert task["status"] in ("requested", "received", "accepted", "ready")  # queued for a worker
    for _ in range(20):
        requests.get(f"{base}/fhir/Task/{task['id']}", headers=FHIR, timeout=30).raise_for_status()
    assert requests.get(f"{base}/login", timeout=30).status_code == 200  # the web pages are served too
    rss, torch_mapped = memory_of(api.pid)
    assert not torch_mapped
    assert rss <= MAX_API_RSS_KB, f"{rss} kB"


def test_the_api_app_imports_no_torch(redis_server, tmp_path: Path) -> None:
    """The same application `radtriage api` serves, in a fresh interpreter: sys.modules after requests."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from radtriage.app.config import load_settings
        from radtriage.app.factory import build_components, create_app
        components = build_components(load_settings())
        client = create_app(components=components).test_client()
        created = client.post("/fhir/ImagingStudy", json={STUDY!r}, headers={FHIR!r})
        client.get("/fhir/Task/" + created.get_json()["id"], headers={FHIR!r})
        client.get("/fhir/metadata")
        components.close()
        print(json.dumps({{"status": created.status_code,
                           "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision",
                                                                                          "torchxrayvision"))}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=broker_env(redis_server, tmp_path),
        capture_output=True,
        timeout=300,
        check=True,
    )
    report = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert report == {"status": 201, "heavy": []}


def test_the_mllp_process_with_a_broker_takes_orders_without_torch(redis_server, tmp_path: Path, process) -> None:
    port = free_port()
    log = open(tmp_path / "mllp.log", "wb")  # noqa: SIM115 - the process owns it
    mllp = subprocess.Popen(
        [sys.executable, "-m", "radtriage.cli", "mllp", "--port", str(port)],
        env=broker_env(redis_server, tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    process.append(mllp)
    deadline = time.monotonic() + 120
    while True:
        try:
            with MLLPClient("127.0.0.1", port) as client:
                ack = client.send_message(orm("PROC1", placer="PROC1"))
            break
        except OSError:
            assert mllp.poll() is None and time.monotonic() < deadline, (tmp_path / "mllp.log").read_text()[-3000:]
            time.sleep(0.2)
    assert ack_code(ack) == "AA"
    time.sleep(1)  # a worker thread, if there were one, would start scoring now
    _, torch_mapped = memory_of(mllp.pid)
    assert not torch_mapped
