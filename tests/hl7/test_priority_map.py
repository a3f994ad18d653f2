"""The one priority table: FHIR ↔ HL7 table 0485 ↔ DICOM, its site overrides, and its one safety rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from radtriage.app.core.domain import Priority
from radtriage.hl7.priority_map import (
    DEFAULT_PRIORITY_MAP,
    PriorityMap,
    UnknownPriorityCode,
    load_priority_map,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "hl7-conformance.md"


@pytest.mark.parametrize(
    ("code", "priority"),
    [
        ("S", Priority.STAT),
        ("A", Priority.ASAP),
        ("R", Priority.ROUTINE),  # these three: HL7 v2-to-FHIR ConceptMap
        ("P", Priority.ASAP),
        ("C", Priority.ASAP),
        ("T", Priority.URGENT),
        ("TM30", Priority.URGENT),
        ("PRN", Priority.ROUTINE),
        ("", Priority.ROUTINE),
        (" s ", Priority.STAT),
        ("stat", Priority.STAT),
    ],
)
def test_hl7_codes_read(code: str, priority: Priority) -> None:
    assert DEFAULT_PRIORITY_MAP.from_hl7(code) is priority


@pytest.mark.parametrize("code", ["X", "TX5", "1", "HIGH"])
def test_unknown_codes_are_refused_not_guessed(code: str) -> None:
    with pytest.raises(UnknownPriorityCode):
        DEFAULT_PRIORITY_MAP.from_hl7(code)


def test_written_codes_read_back_exactly_by_default() -> None:
    for p in Priority:
        assert DEFAULT_PRIORITY_MAP.from_hl7(DEFAULT_PRIORITY_MAP.to_hl7(p)) is p
        assert DEFAULT_PRIORITY_MAP.from_dicom(DEFAULT_PRIORITY_MAP.to_dicom(p)) is p
        assert DEFAULT_PRIORITY_MAP.from_fhir(DEFAULT_PRIORITY_MAP.to_fhir(p)) is p
    assert [DEFAULT_PRIORITY_MAP.to_dicom(p) for p in sorted(Priority)] == ["ROUTINE", "MEDIUM", "HIGH", "STAT"]
    assert DEFAULT_PRIORITY_MAP.from_dicom("LOW") is Priority.ROUTINE


def test_site_overrides(tmp_path: Path) -> None:
    path = tmp_path / "priorities.toml"
    path.write_text('[hl7_read]\nU = "urgent"\nP = "stat"\n[hl7_write]\nurgent = "A"\n[dicom_write]\nasap = "STAT"\n')
    site = load_priority_map(path)
    assert site.from_hl7("U") is Priority.URGENT and site.from_hl7("P") is Priority.STAT
    assert site.to_hl7(Priority.URGENT) == "A"  # written higher than urgent: allowed, never lower
    assert site.to_dicom(Priority.ASAP) == "STAT"
    assert site.from_hl7("T") is Priority.URGENT  # everything else stays


@pytest.mark.parametrize(
    "toml",
    [
        '[hl7_write]\nstat = "R"\n',  # would tell the RIS a stat study is routine
        '[hl7_read]\nS = "routine"\n',  # S is what stat is written as: reading it back would lower it
        '[dicom_write]\nstat = "LOW"\n',
        '[dicom_write]\nstat = "URGENT"\n',  # not a DICOM value
        '[hl7_write]\nstat = "Q"\n',  # a code the table cannot read back
        '[colours]\nred = "stat"\n',
        '[hl7_read]\nX = "whenever"\n',
    ],
)
def test_tables_that_could_lower_a_priority_are_refused(tmp_path: Path, toml: str) -> None:
    path = tmp_path / "priorities.toml"
    path.write_text(toml)
    with pytest.raises(ValueError):
        load_priority_map(path)


@given(
    st.dictionaries(st.sampled_from(list(Priority)), st.sampled_from(["S", "A", "R", "P", "C", "T", "PRN"])),
)
def test_any_accepted_table_never_lowers_what_it_writes(writes: dict[Priority, str]) -> None:
    try:
        table = PriorityMap(hl7_write={**DEFAULT_PRIORITY_MAP.hl7_write, **writes})
    except ValueError:
        return
    for p in Priority:
        assert table.from_hl7(table.to_hl7(p)) >= p


def test_the_conformance_statement_shows_the_table_the_code_uses() -> None:
    text = DOC.read_text(encoding="utf-8")
    shown = text.split("<!-- priority-table")[1].split("-->", 1)[1].split("<!-- /priority-table -->")[0]
    assert shown.strip() == DEFAULT_PRIORITY_MAP.markdown_table()
