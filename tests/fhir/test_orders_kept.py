"""Issue 13, FHIR defects 3, 4 and 6: the ServiceRequest an order came as is kept and served, every reference to
it resolves, the usual FHIR ways of naming the study are read, and an EHR reads the heatmap a report links."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from PIL import Image

from radtriage.app.core.domain import Heatmap
from radtriage.app.factory import Components

from .conftest import Studies
from .test_access import EHR, RIS, Secured, secured  # noqa: F401 - the fixture
from .test_api import fhir_json, get, imaging_study, poll_task, post, service_request

IDENTIFIER = {"system": "urn:oid:2.16.840.1.113883.3.9999.1", "value": "ORD-778"}


def unnamed_request(uid: str | None, **extra: Any) -> dict[str, Any]:
    """A ServiceRequest as EHRs create them: no id (the server assigns one), a placer identifier."""
    request = service_request(uid, **extra)
    del request["id"]
    request["identifier"] = [IDENTIFIER, *request.get("identifier", [])]
    return request


def test_a_service_request_without_an_id_is_kept_and_every_basedon_resolves(
    client: FlaskClient, studies: Studies, fhir_schema_path: Path
) -> None:
    task = fhir_json(post(client, "/ServiceRequest", unnamed_request(studies.chest)), 201, fhir_schema_path)
    [based_on] = task["basedOn"]  # used to be absent: nothing to point at
    kept = get(client, f"/fhir/{based_on['reference']}", fhir_schema_path)
    assert kept["resourceType"] == "ServiceRequest" and kept["identifier"][0] == IDENTIFIER
    assert f"ServiceRequest/{kept['id']}" == based_on["reference"]

    task = poll_task(client, task["id"], fhir_schema_path)
    assert task["status"] == "completed"
    report = get(client, f"/fhir/DiagnosticReport/{task['id']}", fhir_schema_path)
    assert report["basedOn"] == [based_on]

    by_identifier = get(client, f"/fhir/ServiceRequest?identifier={IDENTIFIER['system']}|ORD-778", fhir_schema_path)
    by_value = get(client, "/fhir/ServiceRequest?identifier=ORD-778", fhir_schema_path)
    by_patient = get(client, "/fhir/ServiceRequest?patient=Patient/p1", fhir_schema_path)
    elsewhere = get(client, "/fhir/ServiceRequest?patient=p2", fhir_schema_path)
    assert by_identifier["total"] == by_value["total"] == by_patient["total"] == 1
    assert by_identifier["entry"][0]["resource"] == kept
    assert elsewhere["total"] == 0
    found = get(client, f"/fhir/Task?based-on={based_on['reference']}", fhir_schema_path)
    assert [e["resource"]["id"] for e in found["entry"]] == [task["id"]]

    again = fhir_json(post(client, "/ServiceRequest", unnamed_request(studies.chest)), 200, fhir_schema_path)
    assert again["id"] == task["id"] and again["basedOn"] == [based_on]  # the same order, the same request
    assert get(client, "/fhir/ServiceRequest?identifier=ORD-778", fhir_schema_path)["total"] == 1


def transaction(*entries: tuple[str | None, dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                **({"fullUrl": full_url} if full_url else {}),
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
            for full_url, resource in entries
        ],
    }


def test_a_service_request_names_its_study_by_supporting_info_in_the_transaction(
    client: FlaskClient, components: Components, studies: Studies, fhir_schema_path: Path
) -> None:
    study_url = f"urn:uuid:{uuid.uuid4()}"
    request = unnamed_request(None, priority="urgent")
    request["supportingInfo"] = [{"reference": study_url}]
    study = imaging_study(studies.chest)
    del study["id"]
    response = post(client, "", transaction((None, request), (study_url, study)))
    bundle = fhir_json(response, 200, fhir_schema_path)  # used to be 400 "no Study Instance UID"

    request_location, study_location = (e["response"]["location"] for e in bundle["entry"])
    assert request_location.startswith("ServiceRequest/") and study_location.startswith("ImagingStudy/")
    request_ref = request_location.removesuffix("/_history/1")
    study_ref = study_location.removesuffix("/_history/1")
    kept_request = get(client, f"/fhir/{request_ref}", fhir_schema_path)
    assert kept_request["supportingInfo"] == [{"reference": study_ref}]  # the urn:uuid now names the kept study
    [task] = get(client, f"/fhir/Task?based-on={request_ref}", fhir_schema_path)["entry"]
    assert task["resource"]["priority"] == "urgent"
    assert task["resource"]["input"][0]["valueReference"]["reference"] == study_ref
    components.queue.wait_idle(60)


def test_a_service_request_names_its_study_by_identifier(
    client: FlaskClient, studies: Studies, fhir_schema_path: Path
) -> None:
    request = unnamed_request(None)
    request["supportingInfo"] = [
        {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{studies.chest}"}}
    ]
    task = fhir_json(post(client, "/ServiceRequest", request), 201, fhir_schema_path)
    assert task["input"][0]["valueReference"]["identifier"]["value"] == f"urn:oid:{studies.chest}"


def test_a_study_based_on_a_request_by_its_absolute_full_url(
    client: FlaskClient, studies: Studies, fhir_schema_path: Path
) -> None:
    full_url = "https://ehr.example/fhir/ServiceRequest/order-55"
    request = service_request(None, request_id="order-55")
    study = imaging_study(studies.chest, study_id="is-55", basedOn=[{"reference": "ServiceRequest/order-55"}])
    bundle = fhir_json(post(client, "", transaction((full_url, request), (None, study))), 200, fhir_schema_path)
    assert [e["response"]["location"] for e in bundle["entry"]] == [
        "ServiceRequest/order-55/_history/1",
        "ImagingStudy/is-55/_history/1",
    ]


def test_two_different_studies_named_for_one_request_are_refused(
    client: FlaskClient, studies: Studies, fhir_schema_path: Path
) -> None:
    request = unnamed_request(f"{studies.chest}")
    request["supportingInfo"] = [
        {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}}
    ]
    outcome = fhir_json(post(client, "/ServiceRequest", request), 400, fhir_schema_path)
    assert outcome["issue"][0]["expression"] == ["ServiceRequest.supportingInfo"]


# ---------------------------------------------------------------------------------------------- access (defect 6)


def test_an_ehr_reads_the_heatmap_a_report_links_and_its_order(secured: Secured, studies: Studies) -> None:  # noqa: F811
    scopes = "system/ServiceRequest.crs system/Task.rs system/DiagnosticReport.rs system/Binary.r"
    token = EHR.token(secured.http, scopes)  # system/Binary.r used to be refused: 400 invalid_scope
    task = secured.post("/fhir/ServiceRequest", unnamed_request(studies.chest), token)
    task = secured.poll(task["id"], token)
    assert task["status"] == "completed"
    picture = io.BytesIO()
    Image.new("RGB", (8, 8)).save(picture, format="PNG")
    # The placeholder model flags nothing, so the heatmap a flagging model would have made is stored directly.
    secured.components.store.add_heatmaps(task["id"], [Heatmap("Effusion", picture.getvalue())])

    report = secured.fhir("GET", f"/fhir/DiagnosticReport/{task['id']}", token)
    [form] = [f for f in report["presentedForm"] if f["contentType"] == "image/png"]
    assert form["url"] == f"http://localhost/fhir/Binary/heatmap-{task['id']}-1"
    png = secured.call("GET", form["url"].removeprefix("http://localhost"), token, headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.data == picture.getvalue()
    order = secured.fhir("GET", f"/fhir/{report['basedOn'][0]['reference']}", token)
    assert order["identifier"][0] == IDENTIFIER

    ris_token = RIS.token(secured.http, "system/DiagnosticReport.rs system/Binary.r")
    assert secured.call("GET", form["url"].removeprefix("http://localhost"), ris_token).status_code == 200
    reads = {
        e for r in secured.records(kind="result-read") for e in json.dumps(r.resource()).split('"') if "Binary/" in e
    }
    assert f"Binary/heatmap-{task['id']}-1" in reads  # the picture's read is audited like the report's
