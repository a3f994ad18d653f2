"""Fixtures of the HL7 door tests: the real service on a throwaway SQLite database, the door on a free
loopback port with short timeouts, and a test RIS."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import hl7
import pytest

from radtriage.app.config import Settings, load_settings
from radtriage.app.factory import Components, build_components
from radtriage.hl7.door import HL7Door, build_hl7_door
from tests.hl7.ris import RisPeer

#: Short limits so that the timeout tests take a fraction of a second.
FAST: dict[str, Any] = {
    "mllp_idle_timeout": 1.5,
    "mllp_read_timeout": 0.4,
    "mllp_max_message_bytes": 32 * 1024,
    "hl7_retry_base": 0.05,
    "hl7_retry_max": 0.2,
    "ris_timeout": 1.0,
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(env={}, home=str(tmp_path), **FAST)


@pytest.fixture
def components(settings: Settings) -> Iterator[Components]:
    """The real service, its workers not started: orders stay queued, so a test sees exactly what the door
    committed. (The end-to-end test starts the workers.)"""
    built = build_components(settings)
    yield built
    built.close()


def start_door(components: Components, **overrides: Any) -> HL7Door:
    door = build_hl7_door(components, replace(components.settings, **overrides), listen_port=0)
    door.start()
    return door


@pytest.fixture
def door(components: Components) -> Iterator[HL7Door]:
    started = start_door(components)
    yield started
    started.stop()


@pytest.fixture
def ris() -> Iterator[RisPeer]:
    peer = RisPeer().start()
    yield peer
    peer.stop()


def parse_ack(raw: bytes) -> hl7.Message:
    """An ACK as python-hl7 reads it (MLLP framing stripped)."""
    return hl7.parse(raw.strip(b"\x0b\x1c\r\n").decode("latin-1"))


def ack_code(raw: bytes) -> str:
    return str(parse_ack(raw).segment("MSA")(1))
