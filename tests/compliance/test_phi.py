"""No patient data in logs: the redacting filter, and the collector PHI tests use."""

from __future__ import annotations

import logging

import pytest

from radtriage.compliance.phi import (
    REDACTED,
    PhiRedactingFilter,
    PhiRegistry,
    collect_logs,
    install_phi_filter,
    redact,
)

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
