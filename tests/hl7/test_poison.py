"""Poison messages (issue 15 item 4): values longer than radtriage stores must get an answer (AE 102 at the
field), on PostgreSQL too, where an over-long value fails the insert, and the value must not reach the logs
through SQL parameters. Every frame gets exactly one answer; nothing already accepted is lost."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import DBAPIError

from radtriage.app.config import load_settings
from radtriage.app.factory import Components, build_components
from radtriage.app.storage import create_database_engine, migrate
from radtriage.app.storage.messaging_tables import hl7_message_log
from radtriage.hl7.door import HL7Door
from radtriage.hl7.mllp import send_messages
from tests.hl7.conftest import FAST, ack_code, start_door
from tests.hl7.messages import orm
from tests.hl7.test_receiver import err_fields, order_count

MARKER = "POISONVALUE"


@pytest.fixture
def pg_or_sqlite_components(database_url: str, tmp_path: Path) -> Iterator[Components]:
    built = build_components(load_settings(env={}, home=str(tmp_path), database_url=database_url, **FAST))
    yield built
    built.close()


@pytest.fixture
def poison_door(pg_or_sqlite_components: Components) -> Iterator[HL7Door]:
    door = start_door(pg_or_sqlite_components)
    yield door
    door.stop()


def long_value(n: int) -> str:
    """The marker at the end: log lines may show a sanitised, cut prefix of a value, never all of it."""
    return "X" * (n - len(MARKER)) + MARKER


@pytest.mark.parametrize(
    ("field", "make"),
    [
        ("MSH-3", lambda: orm("P1", sender=f"{long_value(300)}|HOSP", version="2.5.1")),
        ("MSH-4", lambda: orm("P2", sender=f"RIS|{long_value(300)}", version="2.5.1")),
        ("MSH-10", lambda: orm(long_value(250), version="2.5.1")),
    ],
)
def test_an_over_long_header_value_is_answered_ae_102_and_the_connection_lives(
    poison_door: HL7Door,
    pg_or_sqlite_components: Components,
    field: str,
    make: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    payload = make()  # type: ignore[operator]
    # The poison message, the same again (a store-and-forward sender resends), then a good order, on one connection.
    answers = send_messages(
        "127.0.0.1", poison_door.port, [payload, payload, orm("GOOD1", version="2.5.1")], timeout=10
    )
    assert [ack_code(a) for a in answers] == ["AE", "AE", "AA"]
    assert [(location, code) for location, code, _ in err_fields(answers[0])] == [(_err_location(field), "102")]
    assert order_count(pg_or_sqlite_components) == 1
    assert MARKER not in caplog.text


def _err_location(field: str) -> str:
    segment, position = field.split("-")
    return f"{segment}^1^{position}"


def test_sql_parameters_never_reach_error_messages(database_url: str) -> None:
    """Whatever a failed statement carried (here an over-long sender), its text does not quote the values."""
    engine = create_database_engine(database_url)
    migrate(engine)
    values = dict(
        sender=long_value(300), control_id="C1", message_code="ORM^O01", payload_sha256="0" * 64,
        ack_code="AA", ack="", received_at=None,
    )  # fmt: skip
    with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
        conn.execute(insert(hl7_message_log).values(values))  # received_at NULL fails on every database
    assert MARKER not in str(caught.value)
    engine.dispose()


def test_control_characters_from_a_sender_are_escaped_in_the_logs(
    poison_door: HL7Door, caplog: pytest.LogCaptureFixture
) -> None:
    """MSH-3/9/10 are logged; a terminal escape sequence in them must arrive in the log as text, not as control."""
    caplog.set_level(logging.INFO, logger="radtriage")
    payload = orm("C1\x1b[2J\x1b]0;x\x07", sender="R\x1b[31mIS|HOSP", version="2.5.1")
    (answer,) = send_messages("127.0.0.1", poison_door.port, [payload], timeout=10)
    assert ack_code(answer) in ("AA", "AE")
    hl7_lines = [r.getMessage() for r in caplog.records if r.name.startswith("radtriage.hl7")]
    assert any("C1\\x1b[2J\\x1b]0;x\\x07" in line and "R\\x1b[31mIS" in line for line in hl7_lines)
    assert not any("\x1b" in line or "\x07" in line for line in hl7_lines)
