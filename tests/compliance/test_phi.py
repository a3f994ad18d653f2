"""No patient data in logs: the redacting filter, and the collector PHI tests use."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from radtriage.compliance.phi import (
    REDACTED,
    PhiRedactingFilter,
    PhiRegistry,
    collect_logs,
    install_phi_filter,
    redact,
)
from tests.support.orthanc import OrthancServer

NAME, MRN, BIRTH = "Zyxwvuts^Marker", "MRN-9900771", "19471103"
PID = f"PID|1||{MRN}^^^HOSP^MR||{NAME}||{BIRTH}|F|||1 Main St^^Town"


@pytest.fixture
def registry() -> PhiRegistry:
    registry = PhiRegistry()
    registry.register(NAME, MRN, BIRTH, "F", None)
    return registry


def test_registered_values_and_phi_shapes_are_redacted(registry: PhiRegistry) -> None:
    assert redact(f"order for {MRN} born {BIRTH}", registry) == f"order for {REDACTED} born {REDACTED}"
    assert redact(f"name {NAME.lower()}", registry) == f"name {REDACTED}"  # case does not matter
    assert redact("MSH|^~\\&|RIS\rPID|1||X\rOBR|1", registry) == f"MSH|^~\\&|RIS\rPID|{REDACTED}\rOBR|1"
    assert redact("subject Patient/abc-123 read", registry) == f"subject Patient/{REDACTED} read"
    assert redact("sex F is too short to register", registry) == "sex F is too short to register"
    assert len(registry) == 3


def test_the_filter_rewrites_message_arguments_and_traceback(registry: PhiRegistry) -> None:
    logger = logging.getLogger("radtriage.test.phi")
    markers = [NAME, MRN, BIRTH, "Patient/p-77", "1 Main St"]
    with collect_logs(logger, redact_with=PhiRedactingFilter(registry)) as logs:
        logger.info("received %s for %s", "ORM", MRN)
        logger.warning("bad message: %r", PID)
        logger.debug("reading Patient/p-77")
        try:
            raise ValueError(f"cannot parse name {NAME}")
        except ValueError:
            logger.exception("parse failure for %s", MRN)
        logger.error("bad format %s %s", MRN)  # a broken format string must not leak its arguments either
    assert logs.lines, "nothing was collected"
    assert logs.containing(markers) == []
    assert any("Traceback" in line for line in logs.lines) and any(REDACTED in line for line in logs.lines)


def test_the_collector_without_the_filter_shows_what_would_leak() -> None:
    logger = logging.getLogger("radtriage.test.leak")
    with collect_logs(logger) as logs:
        logger.info("patient %s", MRN)
    assert logs.containing([MRN]) == [f"INFO radtriage.test.leak: patient {MRN}"]


def test_install_adds_the_filter_to_every_handler_once(registry: PhiRegistry) -> None:
    logger = logging.getLogger("radtriage.test.install")
    first, second = logging.NullHandler(), logging.NullHandler()
    logger.addHandler(first)
    logger.addHandler(second)
    try:
        phi_filter = PhiRedactingFilter(registry)
        install_phi_filter(logger, phi_filter)
        install_phi_filter(logger, phi_filter)
        assert first.filters == [phi_filter] and second.filters == [phi_filter]
    finally:
        logger.removeHandler(first)
        logger.removeHandler(second)


def test_the_registry_forgets_the_oldest_values_beyond_capacity() -> None:
    registry = PhiRegistry(capacity=2)
    registry.register("first-value", "second-value", "third-value")
    assert redact("first-value third-value", registry) == f"first-value {REDACTED}"


# ------------------------------------------------------------------ protocol values and third-party loggers (issue 15)


def test_logged_protocol_values_have_control_characters_escaped_and_are_cut() -> None:
    from radtriage.compliance.phi import MAX_LOGGED_VALUE, log_value

    hostile = "RIS\x1b[2J\x1b]0;owned\x07\r\nFAKE LOG LINE\x00\x9b"
    safe = log_value(hostile)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in safe)
    assert safe.startswith("RIS\\x1b[2J\\x1b]0;owned\\x07\\x0d\\x0aFAKE")
    long = log_value("A" * 300)
    assert long.startswith("A" * MAX_LOGGED_VALUE) and long.endswith("…(+236)") and len(long) < 80
    assert log_value(None) == "" and log_value("ORM^O01") == "ORM^O01"


def test_the_filter_escapes_control_characters_in_every_message(registry: PhiRegistry) -> None:
    logger = logging.getLogger("radtriage.test.controls")
    with collect_logs(logger, redact_with=PhiRedactingFilter(registry)) as logs:
        logger.warning("sender %s said %s", "RIS\x1b[31m", "two\rlines")
    assert logs.lines == ["WARNING radtriage.test.controls: sender RIS\\x1b[31m said two\\x0dlines"]


@pytest.fixture
def quiet_loggers() -> Iterator[None]:
    from radtriage.compliance.phi import THIRD_PARTY_LOG_LEVELS, quiet_third_party_loggers

    before = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOG_LEVELS}
    quiet_third_party_loggers()
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


def test_no_dicom_uid_reaches_the_logs_from_dicomweb(orthanc: OrthancServer, quiet_loggers: None) -> None:
    """dicomweb-client logs every UID it retrieves at INFO, retrying a traceback with the URL at WARNING: with the
    loggers configured as the CLI configures them, a retrieval and a failing request leave no UID in any log."""
    import io

    from pydicom import dcmread, dcmwrite
    from pydicom.uid import generate_uid

    from radtriage.app.core.errors import TriageError
    from radtriage.imaging.dicomweb_source import DicomwebStudySource
    from tests.support.data import pydicom_data_dir
    from tests.support.orthanc import free_loopback_port

    dataset = dcmread(pydicom_data_dir() / "RG1_J2KI.dcm")
    dataset.StudyInstanceUID, dataset.SOPInstanceUID = generate_uid(), generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    orthanc.upload(buffer.getvalue())
    uids = [str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID)]
    with collect_logs() as logs:
        source = DicomwebStudySource(orthanc.dicomweb_url, username=orthanc.username, password=orthanc.password)
        (instance,) = source.find_instances(uids[0])
        assert source.retrieve_instance(instance)
        dead = DicomwebStudySource(f"http://127.0.0.1:{free_loopback_port()}/dicom-web", timeout=1, attempts=2)
        with pytest.raises(TriageError):
            dead.find_instances(uids[0])
        logging.getLogger("radtriage.test.uids").info("done")  # the collector works
    assert logs.lines
    assert logs.containing(uids) == []
