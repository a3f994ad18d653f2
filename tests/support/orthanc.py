"""A real Orthanc PACS on loopback for tests: the `orthanc` session fixture.

Orthanc cannot bind port 0 and report the port it got, so the fixture asks the kernel for two free loopback ports,
writes them into a generated configuration, and tries again with new ports when Orthanc fails to start (another
process took a port in between). Orthanc listens only for local clients (``RemoteAccessAllowed: false``), needs
HTTP basic authentication, keeps its storage in a temporary folder, and has the DICOMweb plugin loaded, so the
same server answers the REST API (``/instances``, ``/patients``) and DICOMweb (``/dicom-web/``).

If Orthanc or its DICOMweb plugin is not installed, every test that uses the fixture is skipped with the reason.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
STARTUP_TIMEOUT_S = 20.0
START_ATTEMPTS = 3


def free_loopback_port() -> int:
    """A TCP port that nothing listens on at this moment (it may be taken before it is used: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OrthancServer:
    """A running Orthanc: its URLs, its one user's credentials, and helpers for the REST API."""

    base_url: str
    username: str
    password: str
    dicom_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    _session: requests.Session = field(default_factory=requests.Session, repr=False)

    def __post_init__(self) -> None:
        self._session.auth = (self.username, self.password)

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    def upload(self, dicom_bytes: bytes) -> dict[str, Any]:
        """Store one DICOM Part 10 instance (``POST /instances``); returns Orthanc's answer (ID, Status, ...)."""
        response = self._session.post(f"{self.base_url}/instances", data=dicom_bytes, timeout=30)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def clear(self) -> None:
        """Delete every patient, and so every study, series and instance."""
        response = self._session.get(f"{self.base_url}/patients", timeout=10)
        response.raise_for_status()
        for patient_id in response.json():
            self._session.delete(f"{self.base_url}/patients/{patient_id}", timeout=30).raise_for_status()

    def log_tail(self, characters: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""

    def restart(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Start Orthanc again after `stop()` (a PACS outage in a test), on the same ports and storage."""
        config_path = self.log_path.with_name("orthanc.json")
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [ORTHANC_BINARY, str(config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=config_path.parent,
            )
        self._session = requests.Session()
        self._session.auth = (self.username, self.password)
        if not _wait_until_ready(self, time.monotonic() + timeout):
            raise RuntimeError(f"Orthanc did not start again; log:\n{self.log_tail()}")

    def stop(self) -> None:
        self._session.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _write_config(folder: Path, http_port: int, dicom_port: int, username: str, password: str) -> Path:
    config = {
        "Name": "radtriage-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "RADTRIAGETEST",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {username: password},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        # Keep the files as they arrive, so WADO-RS can hand back the stored transfer syntax.
        "StorageCompression": False,
        "HttpCompressionEnabled": False,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _wait_until_ready(server: OrthancServer, deadline: float) -> bool:
    """True once ``/system`` answers; False if the process died first (usually a port clash)."""
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            response = server._session.get(f"{server.base_url}/system", timeout=1)
            if response.status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return False


def start_orthanc(folder: Path) -> OrthancServer:
    """Start Orthanc with its files under `folder`; raises RuntimeError (with Orthanc's log) if it cannot."""
    username = "radtriage"
    password = secrets.token_urlsafe(16)
    last_log = ""
    for attempt in range(START_ATTEMPTS):
        run_folder = folder / f"run{attempt}"
        run_folder.mkdir(parents=True)
        http_port, dicom_port = free_loopback_port(), free_loopback_port()
        if http_port == dicom_port:
            continue
        config_path = _write_config(run_folder, http_port, dicom_port, username, password)
        log_path = run_folder / "orthanc.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [ORTHANC_BINARY, str(config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=run_folder,
            )
        server = OrthancServer(
            base_url=f"http://127.0.0.1:{http_port}",
            username=username,
            password=password,
            dicom_port=dicom_port,
            process=process,
            log_path=log_path,
        )
        if _wait_until_ready(server, time.monotonic() + STARTUP_TIMEOUT_S):
            return server
        last_log = server.log_tail()
        server.stop()
    raise RuntimeError(f"Orthanc did not start after {START_ATTEMPTS} attempts; last log:\n{last_log}")


def orthanc_missing_reason() -> str | None:
    if shutil.which(ORTHANC_BINARY) is None:
        return f"needs Orthanc ({ORTHANC_BINARY}; Debian package 'orthanc')"
    if not DICOMWEB_PLUGIN.exists():
        return f"needs the Orthanc DICOMweb plugin ({DICOMWEB_PLUGIN}; Debian package 'orthanc-dicomweb')"
    return None


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A real Orthanc with DICOMweb on loopback, shared by the whole session; stopped at the end."""
    reason = orthanc_missing_reason()
    if reason:
        pytest.skip(reason)
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """An Orthanc for one test alone, which the test may stop and `restart()` (PACS outages)."""
    reason = orthanc_missing_reason()
    if reason:
        pytest.skip(reason)
    server = start_orthanc(tmp_path_factory.mktemp("own-orthanc"))
    try:
        yield server
    finally:
        server.stop()
