"""Audit export: filters, formats, the chain proof, verification of an export on its own, and its own audit."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from radtriage.compliance import codes
from radtriage.compliance.audit import (
    AUTHENTICATION_FAILED,
    LOGIN,
    ORDER_RECEIVED,
    RESULT_READ,
    AuditContext,
    AuditOutcome,
    AuditRecord,
)
from radtriage.compliance.audit_store import AuditFilter, AuditLog, AuditQueryError
from radtriage.compliance.export import (
    ExportFormat,
    build_filter,
    export_audit,
    filter_from_fhir_search,
    parse_time,
    verify_export,
)
from tests.support.fhir_validation import assert_valid_fhir

DAY = datetime(2025, 3, 1, tzinfo=UTC)
OFFICER = AuditContext(user_id="os:carol", role="compliance", purpose_of_use="HCOMPL")


@pytest.fixture
def populated(audit_log: AuditLog) -> AuditLog:
    """Ten records over three days: orders from two clients for two patients, reads, log-ins, a failure."""
    rows: list[AuditRecord] = []
    for n in range(4):
        rows.append(
            AuditRecord(
                ORDER_RECEIVED,
                recorded=DAY + timedelta(hours=n),
                client_id="ehr" if n % 2 == 0 else "ris",
                peer_address="192.0.2.1",
                interaction="create",
                entities=(f"ServiceRequest/s{n}",),
                patient_ref="Patient/alice" if n < 2 else "Patient/bob",
            )
        )
    for n in range(3):
        rows.append(
            AuditRecord(
                RESULT_READ,
                recorded=DAY + timedelta(days=1, hours=n),
                client_id="ehr",
                peer_address="192.0.2.1",
                interaction="read",
                entities=(f"DiagnosticReport/r{n}",),
                patient_ref="Patient/bob",
            )
        )
    rows.append(AuditRecord(LOGIN, recorded=DAY + timedelta(days=2), client_id="ehr", peer_address="192.0.2.1"))
    rows.append(
        AuditRecord(
            AUTHENTICATION_FAILED,
            recorded=DAY + timedelta(days=2, hours=1),
            outcome=AuditOutcome.MINOR_FAILURE,
            peer_address="198.51.100.7",
        )
    )
    rows.append(
        AuditRecord(LOGIN, recorded=DAY + timedelta(days=2, hours=2), client_id="ris", peer_address="192.0.2.2")
    )
    for row in rows:
        audit_log.record(row)
    return audit_log


def export(log: AuditLog, fmt: str = "ndjson", **filters: Any) -> tuple[str, Any]:
    out = io.StringIO()
    summary = export_audit(log, out, fmt=fmt, context=OFFICER, **filters)
    return out.getvalue(), summary


def exported_ids(text: str, fmt: str) -> list[int]:
    if fmt == "csv":
        return [int(r["id"]) for r in csv.DictReader(io.StringIO(text)) if r["row_type"] == "record"]
    if fmt == "bundle":
        resources = [e["resource"] for e in json.loads(text)["entry"]]
    else:
        resources = [json.loads(line) for line in text.splitlines()]
    return [int(r["id"]) for r in resources if r["resourceType"] == "AuditEvent"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, list(range(1, 11))),
        ({"start": "2025-03-02"}, [5, 6, 7, 8, 9, 10]),
        ({"end": "2025-03-01"}, [1, 2, 3, 4]),
        ({"start": "2025-03-02", "end": "2025-03-02"}, [5, 6, 7]),
        ({"start": "2025-03-01T01:00:00Z", "end": "2025-03-01T02:00:00+00:00"}, [2, 3]),
        ({"patient": "Patient/alice"}, [1, 2]),
        ({"patient": "Patient/bob", "action": "R"}, [5, 6, 7]),
        ({"action": "c"}, [1, 2, 3, 4]),
        ({"kind": "login"}, [8, 10]),
        ({"client": "ris"}, [2, 4, 10]),
        ({"outcome": "4"}, [9]),
        ({"patient": "Patient/nobody"}, []),
    ],
)
def test_filters_select_exactly_the_matching_records(
    populated: AuditLog, filters: dict[str, str], expected: list[int]
) -> None:
    text, summary = export(populated, **filters)
    assert exported_ids(text, "ndjson") == expected
    assert summary.records == len(expected)
    assert verify_export(io.StringIO(text)).ok


@pytest.mark.parametrize("fmt", ["ndjson", "bundle", "csv"])
def test_each_format_carries_the_head_and_verifies_on_its_own(
    populated: AuditLog, fmt: str, tmp_path: Path, fhir_schema_path: Path
) -> None:
    head = populated.head()
    text, summary = export(populated, fmt, patient="Patient/bob")
    assert exported_ids(text, fmt) == [3, 4, 5, 6, 7]
    assert summary.head == head and summary.start_id == 3
    assert head.hash in text
    path = tmp_path / f"export.{fmt}"
    path.write_text(text, encoding="utf-8")
    result = verify_export(path, engine=populated.engine)
    assert result.ok and result.records == 5 and result.head == head
    if fmt == "bundle":
        bundle = json.loads(text)
        assert bundle["type"] == "collection"
        assert_valid_fhir(bundle, fhir_schema_path)
    if fmt == "ndjson":
        for line in text.splitlines():
            assert_valid_fhir(json.loads(line), fhir_schema_path)


def test_records_the_filter_left_out_appear_only_as_hashes(populated: AuditLog) -> None:
    text, _ = export(populated, patient="Patient/alice")
    proof = json.loads(text.splitlines()[-1])
    assert proof["resourceType"] == "Parameters" and proof["id"] == "audit-chain-proof"
    links = [p for p in proof["parameter"] if p["name"] == "link"]
    assert [p["part"][0]["valueInteger"] for p in links] == list(range(3, 11))
    assert "Patient/bob" not in text  # the excluded patients' data is not in the file


def test_exporting_is_itself_audited(populated: AuditLog) -> None:
    _, summary = export(populated, "csv", patient="Patient/alice", start="2025-03-01")
    stored = populated.get(summary.audit_record_id)
    assert stored is not None and stored.kind == "audit-exported" and stored.outcome == 0
    assert stored.patient_ref == "Patient/alice"
    details = {d["type"]: d["valueString"] for e in stored.resource()["entity"] for d in e.get("detail", [])}
    assert details == {"format": "csv", "records": "2", "head-id": "10", "head-hash": summary.head.hash}
    user = [a for a in stored.resource()["agent"] if a["who"].get("identifier", {}).get("value") == "os:carol"]
    assert user and user[0]["purposeOfUse"][0]["coding"][0]["code"] == "HCOMPL"
    assert populated.verify().ok


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"start": "2025-03-05", "end": "2025-03-01"}, "not after its start"),
        ({"start": "yesterday"}, "not a FHIR date"),
        ({"end": "2025-03-01T10:00:00"}, "no time zone"),
        ({"start": "2025-13-01"}, "not a FHIR date"),
        ({"action": "X"}, "action"),
        ({"outcome": "5"}, "outcome"),
        ({"kind": "no-such-kind"}, "kind"),
        ({"fmt": "xml"}, "format"),
    ],
)
def test_a_bad_request_is_refused_clearly_and_audited(
    populated: AuditLog, filters: dict[str, str], message: str
) -> None:
    with pytest.raises(AuditQueryError, match=message) as refused:
        export(populated, **filters)
    assert refused.value.code.value == "invalid-input"
    last = populated.get(populated.head().id)
    assert last is not None and last.kind == "audit-exported" and last.outcome == 4
    assert populated.verify().ok


def _ndjson(populated: AuditLog) -> list[dict[str, Any]]:
    text, _ = export(populated, patient="Patient/bob")
    return [json.loads(line) for line in text.splitlines()]


def _text(resources: list[dict[str, Any]]) -> io.StringIO:
    return io.StringIO("\n".join(json.dumps(r) for r in resources) + "\n")


def test_a_changed_exported_record_is_named(populated: AuditLog) -> None:
    resources = _ndjson(populated)
    resources[1]["action"] = "D"
    result = verify_export(_text(resources))
    assert not result.ok and result.first_broken_id == 4 and "changed" in (result.reason or "")


def test_a_changed_record_with_recomputed_content_hash_breaks_the_chain(populated: AuditLog) -> None:
    from radtriage.compliance.audit_store import canonical_json, content_sha256

    resources = _ndjson(populated)
    resources[1]["action"] = "D"
    chain = resources[1]["extension"][0]["extension"]
    original = {k: v for k, v in resources[1].items() if k != "extension"}
    chain[2]["valueString"] = content_sha256(canonical_json(original))
    result = verify_export(_text(resources))
    assert not result.ok and result.first_broken_id == 4


def test_a_removed_exported_record_is_named(populated: AuditLog) -> None:
    resources = _ndjson(populated)
    del resources[2]
    result = verify_export(_text(resources))
    assert not result.ok and result.first_broken_id == 5 and "missing" in (result.reason or "")


def test_reordered_records_in_an_export_are_detected(populated: AuditLog) -> None:
    resources = _ndjson(populated)
    for first, second in ((0, 1),):
        a, b = resources[first]["extension"][0]["extension"], resources[second]["extension"][0]["extension"]
        a[0]["valueInteger"], b[0]["valueInteger"] = b[0]["valueInteger"], a[0]["valueInteger"]
    assert not verify_export(_text(resources)).ok


def test_a_forged_head_is_detected_and_only_a_database_holding_the_head_confirms_it(
    populated: AuditLog, sqlite_engine: Engine
) -> None:
    resources = _ndjson(populated)
    proof = resources[-1]
    head_hash = next(p for p in proof["parameter"] if p["name"] == "head-hash")
    head_hash["valueString"] = "f" * 64
    result = verify_export(_text(resources))
    assert not result.ok and "head" in (result.reason or "")
    text, _ = export(populated)
    populated.record(AuditRecord(LOGIN, client_id="x"))  # the database moves on: the old head is still in the chain
    assert verify_export(io.StringIO(text), engine=populated.engine).ok
    other = AuditLog(sqlite_engine)  # another database, whose chain does not hold that head
    for n in range(12):
        other.record(AuditRecord(LOGIN, client_id=f"c{n}"))
    result = verify_export(io.StringIO(text), engine=other.engine)
    assert not result.ok and "not in the database" in (result.reason or "")


def test_a_changed_csv_column_is_detected(populated: AuditLog) -> None:
    text, _ = export(populated, "csv")
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0]
    rows[3][header.index("outcome")] = "12"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    result = verify_export(io.StringIO(out.getvalue()))
    assert not result.ok and "outcome" in (result.reason or "")


def test_garbage_is_not_an_export(tmp_path: Path) -> None:
    for content in ("", "hello\n", '{"resourceType": "Patient"}\n', "row_type,id\nrecord,1\n"):
        path = tmp_path / "x"
        path.write_text(content)
        assert not verify_export(path).ok


def test_an_empty_export_verifies(audit_log: AuditLog) -> None:
    text, summary = export(audit_log)
    assert summary.records == 0 and summary.head.id == 0
    assert verify_export(io.StringIO(text)).ok


def test_time_parsing_follows_fhir_precision() -> None:
    assert parse_time("2025", name="s") == datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_time("2025", name="e", end=True) == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time("2025-12", name="e", end=True) == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time("2025-02-28", name="e", end=True) == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_time("2025-03-01T10:00:00+02:00", name="s") == datetime(2025, 3, 1, 8, tzinfo=UTC)


def test_fhir_search_parameters_become_a_filter() -> None:
    result = filter_from_fhir_search(
        {
            "date": ["ge2025-03-01", "lt2025-03-03"],
            "patient": ["Patient/bob"],
            "action": ["r"],
            "subtype": [f"{codes.AUDIT_EVENT_SYSTEM}|result-read"],
            "agent": [f"{codes.CLIENT_ID_SYSTEM}|ehr"],
            "outcome": ["0"],
            "_count": ["10"],
        }
    )
    assert result == AuditFilter(
        start=DAY,
        end=DAY + timedelta(days=2),
        patient="Patient/bob",
        action="R",
        kind="result-read",
        client="ehr",
        outcome=0,
    )
    assert filter_from_fhir_search({"date": ["2025-03-01"]}) == AuditFilter(start=DAY, end=DAY + timedelta(days=1))
    with pytest.raises(AuditQueryError, match="unsupported"):
        filter_from_fhir_search({"entity-name": ["x"]})
    with pytest.raises(AuditQueryError, match="not after"):
        filter_from_fhir_search({"date": ["ge2025-03-05", "le2025-03-01"]})
    with pytest.raises(AuditQueryError, match="subtype"):
        filter_from_fhir_search({"subtype": ["http://other|login"]})


def test_build_filter_and_format_parse() -> None:
    assert build_filter(outcome=8).outcome == 8
    assert ExportFormat.parse(" CSV ") is ExportFormat.CSV and ExportFormat.BUNDLE.media_type == "application/fhir+json"


def test_the_user_filter_selects_records_naming_that_person_and_csv_has_a_user_column(audit_log: AuditLog) -> None:
    for user in ("rad", "radiologist2", "comp", "rad"):
        audit_log.record(AuditRecord(RESULT_READ, client_id="radtriage-web", user_id=user, interaction="read"))
    audit_log.record(AuditRecord(LOGIN, client_id="ehr"))
    text, summary = export(audit_log, "csv", user="rad")
    assert summary.records == 2  # not "radiologist2": the whole identifier value matches
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r["row_type"] == "record"]
    assert [r["user_id"] for r in rows] == ["rad", "rad"]
    assert verify_export(io.StringIO(text)).ok
    tampered = text.replace(",rad,", ",comp,", 1)
    result = verify_export(io.StringIO(tampered))
    assert not result.ok and "user_id" in (result.reason or "")
    # An export written before the user column existed still verifies.
    legacy = list(csv.reader(io.StringIO(text)))
    at = legacy[0].index("user_id")
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([row[:at] + row[at + 1 :] for row in legacy])
    assert verify_export(io.StringIO(out.getvalue())).ok


def test_a_truncated_or_junk_export_says_what_is_wrong_with_the_file(populated: AuditLog) -> None:
    text, _ = export(populated)
    cut_inside_a_line = text[: len(text) // 2]
    cut_between_lines = "\n".join(text.splitlines()[:3]) + "\n"
    reasons = {
        "empty": verify_export(io.StringIO("")).reason,
        "junk": verify_export(io.StringIO("hello, not an export\n")).reason,
        "inside": verify_export(io.StringIO(cut_inside_a_line)).reason,
        "between": verify_export(io.StringIO(cut_between_lines)).reason,
    }
    assert "empty" in (reasons["empty"] or "")
    assert "neither FHIR JSON" in (reasons["junk"] or "")
    assert "not a readable audit export" in (reasons["inside"] or "")
    assert "truncated" in (reasons["between"] or "")
