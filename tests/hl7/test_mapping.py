"""Messages → imaging orders: what is read from where, for each version and convention."""

from __future__ import annotations

import pytest

from radtriage.app.core.domain import Priority
from radtriage.hl7 import er7
from radtriage.hl7.ack import ErrorCondition, Hl7Issue, Location
from radtriage.hl7.mapping import (
    DecodeError,
    OrderControl,
    OrderRequest,
    ReaderOptions,
    check_supported,
    decode_message,
    read_header,
    read_orders,
)
from tests.hl7.messages import omi, orm, segment

PRODUCTION = frozenset({"P"})


def read(payload: bytes, options: ReaderOptions | None = None) -> tuple[list[OrderRequest], list[Hl7Issue]]:
    text, _ = decode_message(payload)
    message = er7.parse(text)
    return read_orders(message, read_header(message), options or ReaderOptions())


def only_order(payload: bytes, options: ReaderOptions | None = None) -> OrderRequest:
    orders, issues = read(payload, options)
    assert issues == []
    assert len(orders) == 1
    return orders[0]


def test_ihe_orm_v231_with_zds() -> None:
    request = only_order(orm(priority="S"))
    order = request.order
    assert request.control is OrderControl.NEW
    assert order.source == "hl7"
    assert order.source_key == "RIS^HOSP|PL1001"
    assert order.study_instance_uid == "1.2.826.0.1.3680043.10.543.1001"
    assert order.patient_ref == "HOSP|PAT1001"
    assert order.accession_number == "ACC1001"  # OBR-18
    assert (order.placer_order_number, order.filler_order_number) == ("PL1001", "FL1001")
    assert order.procedure_code == "CXR"
    assert order.ordering_provider == "1234"
    assert order.requested_priority is Priority.STAT
    assert request.study_uid_location == Location("ZDS", 1)
    context = request.context
    assert context.placer_order_number == ("PL1001", "RIS")
    assert context.patient_identifiers == (("PAT1001", "", "", "HOSP", "MR"), ("99-PAT1001", "", "", "SSA", "SS"))
    assert (context.requested_procedure_id, context.scheduled_procedure_step_id, context.modality) == (
        "RP1",
        "SPS1",
        "CR",
    )


def test_ihe_omi_v251_with_ipc() -> None:
    request = only_order(omi(priority="A"))
    order = request.order
    assert order.study_instance_uid == "1.2.826.0.1.3680043.10.543.2001"
    assert order.accession_number == "ACC2001"  # IPC-1
    assert order.requested_priority is Priority.ASAP  # TQ1-9
    assert request.study_uid_location == Location("IPC", 3)
    assert request.context.version == "2.5.1"


@pytest.mark.parametrize(
    ("orc", "obr", "tq1", "expected"),
    [
        ("", "", "", Priority.ROUTINE),
        ("^^^^^S", "", "", Priority.STAT),
        ("", "^^^^^A", "", Priority.ASAP),
        ("^^^^^R", "^^^^^S", "", Priority.STAT),  # the higher wins
        ("^^^^^R~^^^^^T", "", "", Priority.URGENT),  # repeated TQ
        ("", "", "S^Stat^HL70485", Priority.STAT),
        ("^^^^^A", "", "R", Priority.ASAP),  # TQ kept for backward compatibility still counts
        ("^^^^^TM30", "", "", Priority.URGENT),  # timing critical within 30 minutes
    ],
)
def test_priority_fields(orc: str, obr: str, tq1: str, expected: Priority) -> None:
    segments = [
        "MSH|^~\\&|RIS|HOSP|||20261130||ORM^O01|C1|P|2.5",
        "PID|||P1^^^H^MR",
        segment("ORC", {1: "NW", 2: "PL1", 7: orc}),
        segment("TQ1", {9: tq1}),
        segment("OBR", {1: "1", 2: "PL1", 4: "CXR", 27: obr}),
        "ZDS|1.2.3.4",
    ]
    assert only_order("\r".join(segments).encode()).order.requested_priority is expected


def test_unknown_priority_code_is_an_error_not_routine() -> None:
    orders, issues = read(orm(priority="X"))
    assert [(i.condition, i.location) for i in issues] == [
        (ErrorCondition.TABLE_VALUE_NOT_FOUND, Location("ORC", 7, 6)),
        (ErrorCondition.TABLE_VALUE_NOT_FOUND, Location("OBR", 27, 6)),
    ]


def test_study_uid_field_is_configurable_for_orm() -> None:
    payload = orm(drop=("ZDS",)).replace(b"|RP1|SPS1|", b"|RP1|1.2.3.44|")  # OBR-20 carries the UID
    assert only_order(payload, ReaderOptions(study_uid_field="OBR-20")).order.study_instance_uid == "1.2.3.44"
    _, issues = read(payload)
    assert [(i.condition, i.location) for i in issues] == [(ErrorCondition.REQUIRED_FIELD_MISSING, Location("ZDS", 1))]


def test_missing_and_malformed_fields_are_all_reported_with_their_location() -> None:
    payload = omi(patient_id="", study_uid="1.2.abc").replace(b"PAT2001", b"")
    orders, issues = read(payload)
    assert {(i.condition, i.location) for i in issues} == {
        (ErrorCondition.REQUIRED_FIELD_MISSING, Location("PID", 3)),
        (ErrorCondition.DATA_TYPE_ERROR, Location("IPC", 3)),
    }
    _, issues = read(omi(drop=("PID",)))
    assert [(i.condition, i.location) for i in issues] == [(ErrorCondition.SEGMENT_SEQUENCE_ERROR, Location("PID"))]
    _, issues = read(omi(drop=("ORC",)))
    assert {i.location for i in issues} == {Location("OBR"), Location("IPC"), Location("TQ1"), Location("ORC")}
    _, issues = read(omi(placer="", filler=""))
    assert [(i.condition, i.location) for i in issues] == [(ErrorCondition.REQUIRED_FIELD_MISSING, Location("ORC", 2))]
    _, issues = read(omi(control="ZZ"))
    assert [(i.condition, i.location) for i in issues] == [(ErrorCondition.TABLE_VALUE_NOT_FOUND, Location("ORC", 1))]
    _, issues = read(omi(accession="A" * 65))
    assert [(i.condition, i.location) for i in issues] == [(ErrorCondition.DATA_TYPE_ERROR, Location("IPC", 1))]


def test_issue_texts_never_contain_field_values() -> None:
    _, issues = read(omi(study_uid="1.2.SECRET", priority="SECRETCODE", accession="SECRET" * 20))
    assert issues and not any("SECRET" in i.text for i in issues)


def test_a_cancel_needs_only_the_order_number() -> None:
    request = only_order(orm(control="CA", study_uid="", drop=("PID",)))
    assert request.control is OrderControl.CANCEL and request.order.source_key == "RIS^HOSP|PL1001"


def test_filler_number_keys_an_order_without_a_placer_number() -> None:
    assert only_order(omi(placer="")).order.source_key == "RIS^HOSP|filler:FL2001"


def test_several_orders_in_one_message() -> None:
    second = [
        "ORC|NW|PL1002^RIS|FL1002^PACS||SC||^^^^^A",
        "OBR|2|PL1002^RIS|FL1002^PACS|CXR^Chest X-ray PA^L",
        "ZDS|1.2.826.0.1.3680043.10.543.1002^100^Application^DICOM",
    ]
    orders, issues = read(orm(extra=second))
    assert issues == []
    assert [(o.order.source_key, o.order.requested_priority) for o in orders] == [
        ("RIS^HOSP|PL1001", Priority.ROUTINE),
        ("RIS^HOSP|PL1002", Priority.ASAP),
    ]


def test_z_segments_and_unknown_segments_are_tolerated() -> None:
    request = only_order(orm(extra=["ZXY|local^stuff|x", "NTE|1||a note"]))
    assert request.order.study_instance_uid == "1.2.826.0.1.3680043.10.543.1001"


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"])
def test_segment_separators(separator: str) -> None:
    assert only_order(omi(separator=separator)).order.accession_number == "ACC2001"


@pytest.mark.parametrize(("charset", "name"), [("8859/1", "Müller^Jürgen"), ("UNICODE UTF-8", "Łukasiewicz^Zoë")])
def test_character_sets(charset: str, name: str) -> None:
    payload = omi(charset=charset, patient_name=name, patient_id="ÄÖ-1")
    text, note = decode_message(payload)
    assert note is None
    pid = er7.parse(text).first("PID")
    assert pid is not None and pid.value(5, 1) + "^" + pid.value(5, 2) == name
    assert only_order(payload).order.patient_ref == "HOSP|ÄÖ-1"


def test_8bit_text_in_a_message_declared_ascii_is_read_leniently() -> None:
    # No MSH-18 means ASCII; senders that say so and send 8-bit text send UTF-8 or Windows-1252.
    text, note = decode_message(omi().replace(b"Roe^Jane", "Müller^Jane".encode()))
    assert "Müller" in text and note is not None and "UTF-8" in note
    text, note = decode_message(omi().replace(b"Roe^Jane", "Müller^Jane".encode("cp1252")))
    assert "Müller" in text and note is not None and "CP1252" in note


def test_an_unknown_character_set_is_refused() -> None:
    payload = omi().replace(b"2.5.1||||||", b"2.5.1||||||ISO IR87")
    with pytest.raises(DecodeError) as caught:
        decode_message(payload)
    assert caught.value.issue.location == Location("MSH", 18)


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        (orm(), None),
        (orm(version="2.3"), None),
        (orm(version="2.4"), None),
        (omi(), None),
        (omi(version="2.5"), None),
        (orm(version="2.2"), ErrorCondition.UNSUPPORTED_VERSION_ID),
        (omi(version="2.4"), ErrorCondition.UNSUPPORTED_VERSION_ID),
        (orm(version="garbage"), ErrorCondition.UNSUPPORTED_VERSION_ID),
        (orm().replace(b"ORM^O01", b"ADT^A01"), ErrorCondition.UNSUPPORTED_MESSAGE_TYPE),
        (orm().replace(b"ORM^O01", b"OMI^O99"), ErrorCondition.UNSUPPORTED_EVENT_CODE),
        (orm().replace(b"|P|2.3.1", b"|T|2.3.1"), ErrorCondition.UNSUPPORTED_PROCESSING_ID),
        (orm().replace(b"ORM^O01", b""), ErrorCondition.REQUIRED_FIELD_MISSING),
    ],
)
def test_supported_types_versions_and_processing_ids(payload: bytes, condition: ErrorCondition | None) -> None:
    header = read_header(er7.parse(payload.decode("latin-1")))
    issue = check_supported(header, PRODUCTION)
    assert (issue.condition if issue else None) is condition


def test_orm_without_a_trigger_event_is_read_as_o01() -> None:
    header = read_header(er7.parse(orm().replace(b"ORM^O01", b"ORM").decode()))
    assert header.trigger_event == "O01" and check_supported(header, PRODUCTION) is None
