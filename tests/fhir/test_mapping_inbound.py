"""FHIR → ImagingOrder: what is read from where, and where each bad input is pointed at."""

from __future__ import annotations

from typing import Any

import pytest

from radtriage.app.core.domain import Priority
from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.fhir import inbound

UID = "1.2.826.0.1.3680043.8.498.1"
OTHER_UID = "1.2.826.0.1.3680043.8.498.2"
ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
PLAC = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]}
DCM_STUDY_UID = {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110180"}]}


def imaging_study(**changes: Any) -> dict[str, Any]:
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": "is-1",
        "status": "available",
        "subject": {"reference": "Patient/p1"},
        "identifier": [
            {"system": "urn:dicom:uid", "value": f"urn:oid:{UID}"},
            {"type": ACSN, "system": "urn:example:ris", "value": "ACC-77"},
        ],
    }
    study.update(changes)
    return {k: v for k, v in study.items() if v is not None}


def service_request(**changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": "sr-1",
        "status": "active",
        "intent": "order",
        "priority": "urgent",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "30745-4"}]},
        "requester": {"reference": "Practitioner/dr-1"},
        "identifier": [
            {"system": "urn:dicom:uid", "value": f"urn:oid:{UID}"},
            {"type": PLAC, "system": "urn:example:ehr", "value": "ORD-9"},
        ],
    }
    request.update(changes)
    return {k: v for k, v in request.items() if v is not None}


def refused(call: Any, *args: Any) -> TriageError:
    with pytest.raises(TriageError) as caught:
        call(*args)
    return caught.value


# ---------------------------------------------------------------------------------- ImagingStudy


def test_imaging_study_becomes_an_order() -> None:
    order = inbound.order_from_imaging_study(
        imaging_study(basedOn=[{"reference": "ServiceRequest/sr-7"}], referrer={"reference": "Practitioner/x"})
    )
    assert order.study_instance_uid == UID
    assert order.patient_ref == "Patient/p1"
    assert order.source == "fhir"
    assert order.source_key == "ImagingStudy/is-1"
    assert order.imaging_study_ref == "ImagingStudy/is-1"
    assert order.service_request_ref == "ServiceRequest/sr-7"
    assert order.accession_number == "ACC-77"
    assert order.ordering_provider == "Practitioner/x"
    assert order.requested_priority is Priority.ROUTINE  # an ImagingStudy carries no priority


def test_imaging_study_without_id_is_keyed_by_its_uid() -> None:
    order = inbound.order_from_imaging_study(imaging_study(id=None))
    assert order.source_key == f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{UID}"
    assert order.imaging_study_ref is None


@pytest.mark.parametrize("system", ["urn:ietf:rfc:3986", "urn:dietf:rfc:3986"])
def test_uri_identifier_systems_are_read_leniently(system: str) -> None:
    order = inbound.order_from_imaging_study(imaging_study(identifier=[{"system": system, "value": f"urn:oid:{UID}"}]))
    assert order.study_instance_uid == UID


def test_missing_study_uid_points_at_the_identifiers() -> None:
    error = refused(inbound.order_from_imaging_study, imaging_study(identifier=[{"system": "x", "value": "1"}]))
    assert error.code is ErrorCode.INVALID_INPUT
    assert error.location == "ImagingStudy.identifier"


@pytest.mark.parametrize(
    "value",
    ["urn:oid:1.02.3", "urn:oid:1.2.abc", "urn:oid:" + "1." * 32 + "1", "urn:oid:", "urn:oid:1..2"],
    ids=["leading-zero", "letters", "too-long", "empty", "empty-component"],
)
def test_malformed_study_uid_points_at_the_value(value: str) -> None:
    error = refused(
        inbound.order_from_imaging_study, imaging_study(identifier=[{"system": "urn:dicom:uid", "value": value}])
    )
    assert error.code is ErrorCode.INVALID_INPUT
    assert error.location == "ImagingStudy.identifier[0].value"


def test_two_different_study_uids_are_refused() -> None:
    identifiers = [
        {"system": "urn:dicom:uid", "value": f"urn:oid:{UID}"},
        {"system": "urn:dicom:uid", "value": f"urn:oid:{OTHER_UID}"},
    ]
    error = refused(inbound.order_from_imaging_study, imaging_study(identifier=identifiers))
    assert error.location == "ImagingStudy.identifier"


def test_wrong_resource_type_is_invalid_input() -> None:
    error = refused(inbound.order_from_imaging_study, {"resourceType": "Patient", "id": "p1"})
    assert error.code is ErrorCode.INVALID_INPUT
    assert "expected a ImagingStudy" in error.detail and "'Patient'" in error.detail


@pytest.mark.parametrize("payload", [[], "ImagingStudy", 7, None])
def test_a_body_that_is_not_an_object_is_invalid_input(payload: Any) -> None:
    assert refused(inbound.order_from_imaging_study, payload).code is ErrorCode.INVALID_INPUT


@pytest.mark.parametrize(
    ("changes", "location"),
    [
        ({"identifier": [{"system": 42, "value": f"urn:oid:{UID}"}]}, "ImagingStudy.identifier[0].system"),
        (
            {"series": [{"uid": "1.2", "modality": {"code": "CR"}, "patientName": "Jane Doe"}]},
            "ImagingStudy.series[0].patientName",
        ),
        ({"subject": None}, "ImagingStudy.subject"),
        ({"started": "yesterday"}, "ImagingStudy.started"),
    ],
    ids=["wrong-type", "unknown-element", "missing-required", "bad-datetime"],
)
def test_structural_errors_carry_a_fhirpath_and_no_values(changes: dict[str, Any], location: str) -> None:
    error = refused(inbound.order_from_imaging_study, imaging_study(**changes))
    assert error.code is ErrorCode.INVALID_INPUT
    assert error.location == location
    assert "Jane Doe" not in error.detail and "yesterday" not in error.detail


def test_status_outside_the_value_set_is_invalid() -> None:
    error = refused(inbound.order_from_imaging_study, imaging_study(status="done"))
    assert (error.code, error.location) == (ErrorCode.INVALID_INPUT, "ImagingStudy.status")


def test_cancelled_study_is_not_triaged() -> None:
    error = refused(inbound.order_from_imaging_study, imaging_study(status="cancelled"))
    assert (error.code, error.location) == (ErrorCode.UNSUPPORTED, "ImagingStudy.status")


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ({"reference": "Patient/p1"}, "Patient/p1"),
        ({"reference": "https://ehr.example/fhir/Patient/p1/_history/3"}, "https://ehr.example/fhir/Patient/p1"),
        ({"identifier": {"system": "urn:example:mrn", "value": "MRN-1"}}, "urn:example:mrn|MRN-1"),
    ],
)
def test_subject_becomes_the_patient_ref(subject: dict[str, Any], expected: str) -> None:
    assert inbound.order_from_imaging_study(imaging_study(subject=subject)).patient_ref == expected


@pytest.mark.parametrize(
    ("subject", "location"),
    [
        ({"reference": "#contained-patient"}, "ImagingStudy.subject.reference"),
        ({"reference": "urn:uuid:0f0e6b5e-4a4c-4b8a-9d0a-1b2c3d4e5f60"}, "ImagingStudy.subject.reference"),
        ({"reference": "Group/g1"}, "ImagingStudy.subject.reference"),
        ({"type": "Device", "identifier": {"value": "d1"}}, "ImagingStudy.subject.type"),
    ],
)
def test_subjects_that_are_not_a_nameable_patient_are_refused(subject: dict[str, Any], location: str) -> None:
    error = refused(inbound.order_from_imaging_study, imaging_study(subject=subject))
    assert (error.code, error.location) == (ErrorCode.UNSUPPORTED, location)


def test_subject_without_reference_or_identifier_is_invalid() -> None:
    error = refused(inbound.order_from_imaging_study, imaging_study(subject={"display": "someone"}))
    assert (error.code, error.location) == (ErrorCode.INVALID_INPUT, "ImagingStudy.subject")


# ---------------------------------------------------------------------------------- ServiceRequest


def test_service_request_becomes_an_order() -> None:
    order = inbound.order_from_service_request(service_request(priority="stat"))
    assert order.study_instance_uid == UID
    assert order.requested_priority is Priority.STAT
    assert order.source_key == "ServiceRequest/sr-1"
    assert order.service_request_ref == "ServiceRequest/sr-1"
    assert order.placer_order_number == "ORD-9"
    assert order.procedure_code == "30745-4"
    assert order.ordering_provider == "Practitioner/dr-1"


def test_service_request_without_priority_is_routine() -> None:
    assert inbound.order_from_service_request(service_request(priority=None)).requested_priority is Priority.ROUTINE


def test_service_request_study_uid_by_dicom_identifier_type() -> None:
    request = service_request(identifier=[{"type": DCM_STUDY_UID, "value": UID}])
    assert inbound.order_from_service_request(request).study_instance_uid == UID


def test_service_request_without_id_is_keyed_by_its_placer_identifier() -> None:
    order = inbound.order_from_service_request(service_request(id=None))
    assert order.source_key == "ServiceRequest?identifier=urn:example:ehr|ORD-9"
    assert order.service_request_ref is None


@pytest.mark.parametrize(
    ("changes", "code", "location"),
    [
        ({"priority": "emergency"}, ErrorCode.INVALID_INPUT, "ServiceRequest.priority"),
        ({"status": "finished"}, ErrorCode.INVALID_INPUT, "ServiceRequest.status"),
        ({"status": "revoked"}, ErrorCode.UNSUPPORTED, "ServiceRequest.status"),
        ({"intent": "orderly"}, ErrorCode.INVALID_INPUT, "ServiceRequest.intent"),
        ({"intent": "proposal"}, ErrorCode.UNSUPPORTED, "ServiceRequest.intent"),
        ({"doNotPerform": True}, ErrorCode.UNSUPPORTED, "ServiceRequest.doNotPerform"),
        ({"identifier": [{"type": PLAC, "value": "ORD-9"}]}, ErrorCode.INVALID_INPUT, "ServiceRequest.identifier"),
        ({"authoredOn": "last tuesday"}, ErrorCode.INVALID_INPUT, "ServiceRequest.authoredOn"),
    ],
)
def test_service_request_problems_are_located(changes: dict[str, Any], code: ErrorCode, location: str) -> None:
    error = refused(inbound.order_from_service_request, service_request(**changes))
    assert (error.code, error.location) == (code, location)


def test_service_request_with_its_study_takes_the_uid_from_the_study() -> None:
    request = service_request(identifier=[{"type": PLAC, "system": "urn:example:ehr", "value": "ORD-9"}])
    order = inbound.order_from_service_request(request, imaging_study())
    assert order.study_instance_uid == UID
    assert order.imaging_study_ref == "ImagingStudy/is-1"
    assert order.service_request_ref == "ServiceRequest/sr-1"
    assert order.accession_number == "ACC-77"
    assert order.requested_priority is Priority.URGENT


def test_service_request_and_study_must_agree_on_patient_and_uid() -> None:
    other_patient = imaging_study(subject={"reference": "Patient/p2"})
    error = refused(inbound.order_from_service_request, service_request(), other_patient)
    assert (error.code, error.location) == (ErrorCode.INVALID_INPUT, "ImagingStudy.subject")
    other_uid = imaging_study(identifier=[{"system": "urn:dicom:uid", "value": f"urn:oid:{OTHER_UID}"}])
    error = refused(inbound.order_from_service_request, service_request(), other_uid)
    assert (error.code, error.location) == (ErrorCode.INVALID_INPUT, "ImagingStudy.identifier")


# ---------------------------------------------------------------------------------- transaction Bundles


def transaction(*entries: dict[str, Any], bundle_type: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": bundle_type, "entry": list(entries)}


def post(resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


SR_URN = "urn:uuid:6f1c2a44-3c1b-4d1e-9a55-0b7d3f2e9c10"


def test_transaction_links_study_to_request_by_full_url() -> None:
    request = service_request(id=None, identifier=[{"type": PLAC, "system": "urn:example:ehr", "value": "ORD-9"}])
    study = imaging_study(basedOn=[{"reference": SR_URN}])
    [found] = inbound.orders_from_transaction(transaction(post(request, SR_URN), post(study)))
    assert found.entry_indexes == (0, 1)
    assert found.order.study_instance_uid == UID
    assert found.order.requested_priority is Priority.URGENT
    assert found.order.source_key == "ServiceRequest?identifier=urn:example:ehr|ORD-9"
    assert found.order.imaging_study_ref == "ImagingStudy/is-1"


def test_transaction_links_by_put_url_id() -> None:
    request = service_request(id=None, identifier=[])
    put = {"resource": request, "request": {"method": "PUT", "url": "ServiceRequest/sr-42"}}
    study = imaging_study(basedOn=[{"reference": "ServiceRequest/sr-42"}])
    [found] = inbound.orders_from_transaction(transaction(post(study), put))
    assert found.entry_indexes == (0, 1)
    assert found.order.source_key == "ServiceRequest/sr-42"


def test_unlinked_entries_are_separate_orders_in_entry_order() -> None:
    lone_study = imaging_study(id="is-9", identifier=[{"system": "urn:dicom:uid", "value": f"urn:oid:{OTHER_UID}"}])
    found = inbound.orders_from_transaction(transaction(post(lone_study), post(service_request())))
    assert [f.entry_indexes for f in found] == [(0,), (1,)]
    assert [f.order.study_instance_uid for f in found] == [OTHER_UID, UID]


@pytest.mark.parametrize(
    ("bundle", "code", "location"),
    [
        (transaction(post(imaging_study()), bundle_type="batch"), ErrorCode.UNSUPPORTED, "Bundle.type"),
        (transaction(), ErrorCode.INVALID_INPUT, "Bundle.entry"),
        (transaction(post({"resourceType": "Patient", "id": "p1"})), ErrorCode.UNSUPPORTED, "Bundle.entry[0].resource"),
        (
            transaction({"resource": imaging_study(), "request": {"method": "DELETE", "url": "ImagingStudy/is-1"}}),
            ErrorCode.UNSUPPORTED,
            "Bundle.entry[0].request.method",
        ),
        (transaction({"resource": imaging_study()}), ErrorCode.INVALID_INPUT, "Bundle.entry[0].request"),
        (
            transaction(post(service_request()), post(imaging_study(identifier=[]))),
            ErrorCode.INVALID_INPUT,
            "Bundle.entry[1].resource.identifier",
        ),
        (
            transaction(post(imaging_study(identifier=[{"system": 5}]))),
            ErrorCode.INVALID_INPUT,
            "Bundle.entry[0].resource.identifier[0].system",
        ),
        (
            transaction(post(service_request(priority="now"))),
            ErrorCode.INVALID_INPUT,
            "Bundle.entry[0].resource.priority",
        ),
    ],
    ids=["batch", "empty", "patient-entry", "delete", "no-request", "entry-without-uid", "entry-structure", "priority"],
)
def test_transaction_problems_are_located(bundle: dict[str, Any], code: ErrorCode, location: str) -> None:
    error = refused(inbound.orders_from_transaction, bundle)
    assert (error.code, error.location) == (code, location)


def test_two_studies_for_one_request_are_refused() -> None:
    first = imaging_study(basedOn=[{"reference": SR_URN}])
    second = imaging_study(id="is-2", basedOn=[{"reference": SR_URN}])
    error = refused(
        inbound.orders_from_transaction, transaction(post(service_request(), SR_URN), post(first), post(second))
    )
    assert (error.code, error.location) == (ErrorCode.UNSUPPORTED, "Bundle.entry[2].resource.basedOn[0]")


def test_one_bad_entry_refuses_the_whole_transaction() -> None:
    good = post(imaging_study())
    bad = post(imaging_study(id="is-2", identifier=[]))
    error = refused(inbound.orders_from_transaction, transaction(good, bad))
    assert error.location == "Bundle.entry[1].resource.identifier"


def test_non_bundle_is_refused_as_a_transaction() -> None:
    error = refused(inbound.orders_from_transaction, imaging_study())
    assert error.code is ErrorCode.INVALID_INPUT
    assert "expected a Bundle" in error.detail


# ---------------------------------------------------------------------------------- strict primitives (issue 13)


def test_a_string_is_never_a_fhir_integer_inside_a_transaction() -> None:
    study = imaging_study(numberOfSeries="2")
    error = refused(inbound.orders_from_transaction, transaction(post(study)))
    assert (error.code, error.location) == (ErrorCode.INVALID_INPUT, "Bundle.entry[0].resource.numberOfSeries")


@pytest.mark.parametrize(
    ("changes", "location"),
    [
        ({"numberOfInstances": 1.0}, "ImagingStudy.numberOfInstances"),  # 1.0 is a decimal, not an integer
        ({"numberOfSeries": True}, "ImagingStudy.numberOfSeries"),
        ({"series": [{"uid": "1.2.3", "modality": {"code": "CR"}, "number": "1"}]}, "ImagingStudy.series[0].number"),
    ],
)
def test_strict_primitives_in_nested_elements(changes: dict, location: str) -> None:
    error = refused(inbound.order_from_imaging_study, imaging_study(**changes))
    assert (error.code, error.location) == (ErrorCode.INVALID_INPUT, location)


def test_numbers_that_are_numbers_still_pass() -> None:
    study = imaging_study(numberOfSeries=1, series=[{"uid": "1.2.3", "modality": {"code": "CR"}, "number": 1}])
    assert inbound.order_from_imaging_study(study).study_instance_uid == UID
