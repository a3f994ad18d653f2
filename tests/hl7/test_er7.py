"""The ER7 codec: lenient reading of what real systems send, exact round trips of what radtriage writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import given
from hypothesis import strategies as st

from radtriage.hl7 import er7

MSG = (
    "MSH|^~\\&|RIS|HOSP|RADTRIAGE||20261130080000||ORM^O01|C1|P|2.3.1",
    "PID|||PAT1^^^HOSP^MR~X9^^^SSA^SS||Doe^John",
    "ZDS|1.2.3^100^Application^DICOM",
)


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n", "\r\r\n\n"])
def test_any_line_break_separates_segments(separator: str) -> None:
    message = er7.parse(separator.join(MSG) + separator)
    assert [s.name for s in message] == ["MSH", "PID", "ZDS"]
    assert message.msh.value(9, 2) == "O01"
    assert message.msh.value(10) == "C1"
    assert message.msh.value(12) == "2.3.1"


def test_msh_fields_are_numbered_from_the_field_separator() -> None:
    msh = er7.parse("\r".join(MSG)).msh
    assert msh.value(1) == "|"
    assert msh.value(2) == "^~\\&"
    assert msh.value(3) == "RIS"
    assert msh.value(7) == "20261130080000"


def test_repetitions_components_and_z_segments() -> None:
    message = er7.parse("\r".join(MSG))
    pid = message.first("PID")
    assert pid is not None
    assert [r.component(1) for r in pid.repetitions(3)] == ["PAT1", "X9"]
    assert pid.repetitions(3)[1].component(5) == "SS"
    zds = message.first("ZDS")
    assert zds is not None and zds.value(1, 1) == "1.2.3" and zds.value(1, 4) == "DICOM"
    assert pid.value(99) == "" and pid.value(5, 9) == ""


def test_declared_delimiters_are_used() -> None:
    text = "MSH*#!@$*RIS*HOSP*****ORM#O01*C2*P*2.3.1\rPID****A@S@B#C$D"
    message = er7.parse(text)
    pid = message.first("PID")
    assert pid is not None
    assert message.msh.value(9, 2) == "O01"
    assert pid.value(4, 1) == "A#B"  # @S@ is the escaped component separator
    assert pid.value(4, 2, 2) == "D"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world",
        "PID|1||x",
        "MSH|^~\\&",  # nothing after MSH-2
        "MSH|^^\\&|RIS",  # a repeated encoding character
        "MSH|abcd|RIS",  # letters as delimiters
        "MSH|^~\\|RIS",  # three encoding characters
    ],
)
def test_text_without_a_usable_msh_is_refused(text: str) -> None:
    with pytest.raises(er7.Er7Error):
        er7.parse(text)


def test_lines_that_are_not_segments_are_reported() -> None:
    message = er7.parse("\r".join([*MSG, "this is a wrapped continuation", "pv1|lowercase is read"]))
    assert message.bad_lines == (4,)
    assert message.segments[-1].name == "PV1"


def test_unescape_reads_standard_and_formatting_escapes() -> None:
    assert er7.unescape(r"a\F\b\S\c\T\d\R\e\E\f") == "a|b^c&d~e\\f"
    assert er7.unescape(r"line\.br\next\H\bold\N\ \X0D0A\x") == "line\nnextbold \r\nx"
    assert er7.unescape("dangling \\ escape") == "dangling \\ escape"
    assert er7.unescape(r"\Q\unknown") == r"\Q\unknown"


CUSTOM = er7.Delimiters("*", "#", "!", "@", "$")


@given(st.text())
def test_escaping_round_trips(text: str) -> None:
    for d in (er7.STANDARD, CUSTOM):
        escaped = er7.escape(text, d)
        assert not set(escaped) & {d.field, d.component, d.repetition, d.subcomponent, "\r", "\n", "\x0b", "\x1c"}
        assert er7.unescape(escaped, d) == text


components = st.lists(st.text(min_size=1), min_size=1, max_size=4)


@given(st.lists(components, min_size=1, max_size=3))
def test_written_fields_read_back_exactly(repetitions: list[list[str]]) -> None:
    """What radtriage writes, its reader reads back to the same values (repetitions and components)."""
    segment = er7.encode_segment("ZZZ", [[tuple(r) for r in repetitions]])
    message = er7.parse("MSH|^~\\&|A\r" + segment)
    zzz = message.first("ZZZ")
    assert zzz is not None
    read = [list(r.components()) for r in zzz.repetitions(1)]
    # A repetition with nothing but white space in it counts as empty and is skipped, as HL7 readers do.
    assert read == [r for r in repetitions if "".join(er7.escape(c) for c in r).strip()]


@given(st.text(alphabet=st.characters(codec="latin-1"), min_size=1).filter(lambda s: s.strip()))
def test_python_hl7_reads_what_radtriage_writes(value: str) -> None:
    """An independent reader (python-hl7) gets the same value back."""
    msh = er7.encode_segment("MSH", ["A", None, None, None, "20261130", None, ("ADT", "A08"), "1", "P", "2.5"])
    text = er7.encode_message([msh, er7.encode_segment("NTE", ["1", None, value, "end"])])
    parsed = hl7.parse(text)
    assert parsed.unescape(str(parsed.segment("NTE")(3))) == value


def test_hl7apy_reads_the_structure_radtriage_writes() -> None:
    text = er7.encode_message(
        [
            er7.encode_segment(
                "MSH",
                ["RADTRIAGE", None, "RIS", "HOSP", "20261130080000", None, ("ACK", "O01", "ACK"), "X", "P", "2.5"],
            ),
            er7.encode_segment("MSA", ["AA", "C|1"]),
        ]
    )
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.msa.msa_2.to_er7() == "C\\F\\1"
    assert message.validate()


def test_timestamps_are_utc_with_an_offset() -> None:
    moment = datetime(2026, 11, 30, 9, 30, 5, tzinfo=timezone(timedelta(hours=1)))
    assert er7.timestamp(moment) == "20261130083005+0000"
    assert er7.timestamp(datetime(2026, 11, 30, 8, 0, tzinfo=UTC)) == "20261130080000+0000"
