"""DICOMweb specifics beyond the StudySource contract: credentials, dead or silent archives, retries, and archives
that leave series attributes out of instance-level QIDO-RS results.

The archives that misbehave are small servers on loopback sockets, written here, because a real PACS cannot be
made to hang or to drop attributes on demand; everything else runs against the real Orthanc.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.imaging.dicomweb_source import DicomwebStudySource
from tests.support.data import pydicom_data_dir
from tests.support.orthanc import OrthancServer, free_loopback_port

STUDY_UID = generate_uid()


def failure(source: DicomwebStudySource, study_uid: str = STUDY_UID) -> tuple[TriageError, float]:
    started = time.monotonic()
    with pytest.raises(TriageError) as caught:
        source.find_instances(study_uid)
    return caught.value, time.monotonic() - started


# ------------------------------------------------------------------ small misbehaving servers


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that completes the TCP handshake and then never says a word.

    It listens but never accepts: the kernel still completes connections up to the backlog, the client's request
    is buffered, and no answer ever comes, which is how a hung PACS looks from outside.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"


class _CannedHandler(BaseHTTPRequestHandler):
    """Answers every GET with the server's `answer(path)`: (status, JSON body); counts the requests."""

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        server: CannedServer = self.server  # type: ignore[assignment]
        server.requests.append(self.path)
        status, body = server.answer(self.path)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        pass  # keep test output clean


class CannedServer(ThreadingHTTPServer):
    def __init__(self, answer: Any) -> None:
        super().__init__(("127.0.0.1", 0), _CannedHandler)
        self.answer = answer
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/dicom-web"


@pytest.fixture
def canned_server() -> Iterator[Any]:
    servers: list[CannedServer] = []

    def start(answer: Any) -> CannedServer:
        server = CannedServer(answer)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------ tests


def test_wrong_credentials_give_a_clear_error(orthanc: OrthancServer) -> None:
    source = DicomwebStudySource(orthanc.dicomweb_url, username=orthanc.username, password="wrong", attempts=1)
    error, _ = failure(source)
    assert error.code is ErrorCode.PACS_UNAVAILABLE
    assert "credentials" in error.detail and "401" in error.detail
    assert STUDY_UID not in str(error)


def test_missing_credentials_give_the_same_clear_error(orthanc: OrthancServer) -> None:
    error, _ = failure(DicomwebStudySource(orthanc.dicomweb_url, attempts=1))
    assert error.code is ErrorCode.PACS_UNAVAILABLE and "credentials" in error.detail


def test_closed_port_is_unavailable_quickly() -> None:
    source = DicomwebStudySource(f"http://127.0.0.1:{free_loopback_port()}/dicom-web", timeout=5, attempts=2)
    error, elapsed = failure(source)
    assert error.code is ErrorCode.PACS_UNAVAILABLE and error.retryable
    # Two attempts and one short back-off, not dicomweb-client's default 30 s of retries.
    assert elapsed < 3.0


@pytest.mark.parametrize("attempts", [1, 2])
def test_silent_archive_is_unavailable_after_the_timeout(silent_server: str, attempts: int) -> None:
    timeout = 0.5
    source = DicomwebStudySource(silent_server, timeout=timeout, attempts=attempts)
    error, elapsed = failure(source)
    assert error.code is ErrorCode.PACS_UNAVAILABLE and error.retryable
    assert "did not answer" in error.detail
    # Each attempt waits about `timeout`; between attempts there is a 0.5 s back-off.
    expected = attempts * timeout + (attempts - 1) * 0.5
    assert expected * 0.9 <= elapsed < expected + 1.5


def test_busy_archive_is_tried_attempts_times_then_unavailable(canned_server: Any) -> None:
    server = canned_server(lambda path: (503, {"error": "busy"}))
    error, elapsed = failure(DicomwebStudySource(server.url, attempts=2))
    assert error.code is ErrorCode.PACS_UNAVAILABLE and error.retryable
    assert len(server.requests) == 2
    assert "503" in error.detail and elapsed < 3.0


def test_server_error_is_unavailable_without_retry(canned_server: Any) -> None:
    server = canned_server(lambda path: (500, {}))
    error, _ = failure(DicomwebStudySource(server.url, attempts=3))
    assert error.code is ErrorCode.PACS_UNAVAILABLE
    assert len(server.requests) == 1  # a 500 is not "busy": the job-level retry deals with it later


def test_series_attributes_are_fetched_when_instance_results_lack_them(canned_server: Any) -> None:
    series_uid, sop_uid = generate_uid(), generate_uid()
    instance_level = {  # no Study Instance UID either: it is in the URL, and some archives leave it out
        "0020000E": {"vr": "UI", "Value": [series_uid]},
        "00080018": {"vr": "UI", "Value": [sop_uid]},
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.1.1"]},
        "00185101": {"vr": "CS", "Value": ["AP"]},
    }
    series_level = {
        "0020000E": {"vr": "UI", "Value": [series_uid]},
        "00080060": {"vr": "CS", "Value": ["DX"]},
        "00180015": {"vr": "CS", "Value": ["CHEST"]},
        "0008103E": {"vr": "LO", "Value": ["Chest AP portable"]},
    }

    def answer(path: str) -> tuple[int, Any]:
        if path.startswith(f"/dicom-web/studies/{STUDY_UID}/instances"):
            return 200, [instance_level]
        if path.startswith(f"/dicom-web/studies/{STUDY_UID}/series"):
            return 200, [series_level]
        return 404, {}

    server = canned_server(answer)
    [info] = DicomwebStudySource(server.url, attempts=1).find_instances(STUDY_UID)
    assert (info.modality, info.body_part_examined, info.view_position) == ("DX", "CHEST", "AP")
    assert info.series_description == "Chest AP portable"
    assert info.sop_instance_uid == sop_uid


def test_an_answer_that_is_not_dicom_json_is_the_archives_fault(canned_server: Any) -> None:
    server = canned_server(lambda path: (200, [{"not": "DICOM JSON"}]))
    error, _ = failure(DicomwebStudySource(server.url, attempts=1))
    assert error.code is ErrorCode.PACS_UNAVAILABLE and "not DICOM JSON" in error.detail


def test_orthanc_returns_series_attributes_at_instance_level(orthanc: OrthancServer) -> None:
    # Documents what the series-level fallback is for: Orthanc answers in one query, so none is made.
    data = (pydicom_data_dir() / "RG3_J2KI.dcm").read_bytes()
    orthanc.upload(data)
    study_uid = dcmread(pydicom_data_dir() / "RG3_J2KI.dcm", stop_before_pixels=True).StudyInstanceUID
    source = DicomwebStudySource(orthanc.dicomweb_url, username=orthanc.username, password=orthanc.password)
    calls: list[str] = []
    original = source._client.search_for_series

    def counting_search_for_series(*args: Any, **kwargs: Any) -> Any:
        calls.append("series")
        return original(*args, **kwargs)

    source._client.search_for_series = counting_search_for_series  # type: ignore[method-assign]
    [info] = source.find_instances(study_uid)
    assert (info.modality, info.body_part_examined, info.view_position) == ("CR", "EXTREMITY", "AP")
    assert calls == []


def test_constructor_rejects_settings_that_cannot_work() -> None:
    with pytest.raises(ValueError):
        DicomwebStudySource("http://127.0.0.1:1/dicom-web", timeout=0)
    with pytest.raises(ValueError):
        DicomwebStudySource("http://127.0.0.1:1/dicom-web", attempts=0)


def test_orthanc_fixture_clear_empties_the_archive(orthanc: OrthancServer) -> None:
    path = pydicom_data_dir() / "MR2_J2KI.dcm"
    orthanc.upload(path.read_bytes())
    study_uid = dcmread(path, stop_before_pixels=True).StudyInstanceUID
    source = DicomwebStudySource(orthanc.dicomweb_url, username=orthanc.username, password=orthanc.password)
    assert len(source.find_instances(study_uid)) == 1
    orthanc.clear()
    error, _ = failure(source, study_uid)
    assert error.code is ErrorCode.STUDY_NOT_FOUND


# ------------------------------------------------------------------ circuit breaker and bounded requests


def test_a_dead_archive_opens_the_breaker_and_jobs_then_fail_fast(silent_server: str) -> None:
    timeout = 0.4
    source = DicomwebStudySource(silent_server, timeout=timeout, attempts=1, breaker_failures=3, breaker_cooldown=1.0)
    slow = [failure(source)[1] for _ in range(3)]
    assert all(elapsed >= timeout * 0.9 for elapsed in slow)  # each of these held its worker for the timeout
    assert source.breaker.is_open
    # Now every request fails at once, so ten jobs cost ten milliseconds instead of ten timeouts.
    fast = [failure(source) for _ in range(10)]
    assert all(error.code is ErrorCode.PACS_UNAVAILABLE and error.retryable for error, _ in fast)
    assert "not asked" in fast[0][0].detail and STUDY_UID not in fast[0][0].detail
    assert sum(elapsed for _, elapsed in fast) < 0.5
    # After the cool-down one request tests the archive again; still silent, so the breaker opens again.
    time.sleep(1.1)
    _, probe = failure(source)
    assert probe >= timeout * 0.9
    assert source.breaker.is_open


def test_the_breaker_closes_when_the_archive_is_back(own_orthanc: OrthancServer) -> None:
    data = (pydicom_data_dir() / "RG1_J2KI.dcm").read_bytes()
    own_orthanc.upload(data)
    study = str(dcmread(pydicom_data_dir() / "RG1_J2KI.dcm", stop_before_pixels=True).StudyInstanceUID)
    source = DicomwebStudySource(
        own_orthanc.dicomweb_url, username=own_orthanc.username, password=own_orthanc.password,
        timeout=2, attempts=1, breaker_failures=2, breaker_cooldown=0.5,
    )  # fmt: skip
    assert source.find_instances(study)
    own_orthanc.stop()
    for _ in range(2):
        failure(source, study)
    assert source.breaker.is_open
    own_orthanc.restart()
    time.sleep(0.6)
    assert source.find_instances(study)  # the trial request succeeds and closes the breaker
    assert not source.breaker.is_open and source.breaker.failures == 0


def test_answers_that_are_not_the_archives_fault_do_not_open_the_breaker(canned_server: Any) -> None:
    server = canned_server(lambda path: (404, {}))
    source = DicomwebStudySource(server.url, attempts=1, breaker_failures=2)
    for _ in range(4):
        error, _ = failure(source)
        assert error.code is ErrorCode.STUDY_NOT_FOUND
    assert not source.breaker.is_open and len(server.requests) == 4


def test_an_instance_without_the_part10_preamble_is_unreadable_not_retryable(orthanc: OrthancServer) -> None:
    """Orthanc stores and serves a DICOM object that lacks the 128-byte preamble and "DICM" (its upload accepts a
    bare data set with file meta). Asking again would give the same bytes: not analysed, not "try later"."""
    import io

    from pydicom import dcmwrite

    dataset = dcmread(pydicom_data_dir() / "RG1_J2KI.dcm")
    dataset.StudyInstanceUID, dataset.SOPInstanceUID = generate_uid(), generate_uid()
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    orthanc.upload(buffer.getvalue()[132:])  # no preamble, no "DICM"
    source = DicomwebStudySource(orthanc.dicomweb_url, username=orthanc.username, password=orthanc.password)
    (instance,) = source.find_instances(str(dataset.StudyInstanceUID))
    with pytest.raises(TriageError) as caught:
        source.retrieve_instance(instance)
    assert caught.value.code is ErrorCode.UNREADABLE_IMAGE and not caught.value.retryable
    assert str(dataset.StudyInstanceUID) not in str(caught.value)
    assert not source.breaker.is_open and source.breaker.failures == 0
