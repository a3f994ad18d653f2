"""The web pages through Flask's test client: sign-in, roles, each page, what is audited, and bad input."""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from radtriage.app.config import Settings
from radtriage.app.core.domain import Priority
from radtriage.app.factory import Components, build_components, create_app
from radtriage.compliance.audit_store import AuditFilter
from radtriage.compliance.export import verify_export
from radtriage.imaging.folder_source import FolderStudySource
from radtriage.model.scorer import XrvScorer
from tests.web.conftest import Archive, csrf_of, order, sign_in, wait_terminal

MISSING_STUDY = "1.2.826.0.1.3680043.10.543.404"


def records(components: Components, **filters: str) -> list[dict]:  # type: ignore[type-arg]
    events, _ = components.audit.search(AuditFilter(**filters), limit=500)  # type: ignore[arg-type]
    return [e.resource() for e in events]


def user_of(resource: dict) -> str | None:  # type: ignore[type-arg]
    for agent in resource["agent"]:
        identifier = agent.get("who", {}).get("identifier", {})
        if "user" in identifier.get("system", ""):
            return str(identifier["value"])
    return None


def view_of(resource: dict) -> str | None:  # type: ignore[type-arg]
    for entity in resource.get("entity", []):
        for detail in entity.get("detail", []):
            if detail["type"] == "view":
                return str(detail["valueString"])
    return None


# ---------------------------------------------------------------------------------------------- sign-in


def test_pages_need_a_session_and_json_says_so_without_redirecting(client: FlaskClient) -> None:
    page = client.get("/worklist?status=done")
    assert page.status_code == 302
    assert page.headers["Location"].startswith("/login?next=/worklist?status%3Ddone")
    data = client.get("/worklist.json")
    assert data.status_code == 401 and data.json == {"error": "signed-out", "message": "Sign in to continue."}
    assert client.get("/").headers["Location"] == "/login"


def test_sign_in_is_audited_and_a_wrong_password_is_refused_and_audited(
    client: FlaskClient, components: Components
) -> None:
    token = csrf_of(client, "/login")
    refused = client.post("/login", data={"username": "rad", "password": "wrong", "csrf_token": token})
    assert refused.status_code == 401
    assert "not right" in refused.get_data(as_text=True)
    assert client.get("/worklist").status_code == 302
    failed = records(components, kind="authentication-failed")
    assert len(failed) == 1 and user_of(failed[0]) == "rad" and failed[0]["outcome"] == "4"

    sign_in(client, "rad")
    assert client.get("/").headers["Location"] == "/worklist"
    logins = records(components, kind="login")
    assert [user_of(r) for r in logins] == ["rad"]
    assert logins[0]["agent"][0]["who"]["identifier"]["value"] == "radtriage-web"


def test_sign_in_refuses_a_form_without_its_csrf_token_and_never_redirects_off_site(client: FlaskClient) -> None:
    assert client.post("/login", data={"username": "rad", "password": "x"}).status_code == 400
    token = csrf_of(client, "/login")
    from tests.web.conftest import PASSWORD

    response = client.post(
        "/login", data={"username": "rad", "password": PASSWORD, "csrf_token": token, "next": "//evil.example/"}
    )
    assert response.headers["Location"] == "/"


def test_each_role_sees_only_its_pages(client: FlaskClient, components: Components, archive: Archive) -> None:
    _o, job = order(components, archive.extremity, accession="ACC-1")
    wait_terminal(components, job.id)
    expected = {
        "rad": {"/worklist": 200, f"/studies/{job.id}": 200, "/compliance": 403, "/model": 200},
        "comp": {"/worklist": 403, f"/studies/{job.id}": 403, "/worklist.json": 403, "/compliance": 200, "/model": 200},
        "admin": {"/worklist": 200, f"/studies/{job.id}": 200, "/compliance": 200, "/model": 200},
    }
    for username, pages in expected.items():
        client.post("/logout", data={"csrf_token": csrf_of(client, "/login")})
        sign_in(client, username)
        for path, status in pages.items():
            assert client.get(path).status_code == status, (username, path)
        nav = client.get("/model").get_data(as_text=True)
        assert ('href="/compliance"' in nav) is (username != "rad")
        assert ('href="/worklist"' in nav) is (username != "comp")


def test_a_session_ends_after_the_idle_timeout_with_a_message(client: FlaskClient) -> None:
    sign_in(client, "rad")
    assert client.get("/worklist").status_code == 200
    with client.session_transaction() as session:
        session["last_seen"] = int(time.time()) - 31 * 60
    page = client.get("/worklist")
    assert page.status_code == 302 and "reason=expired" in page.headers["Location"]
    assert "Your session has expired" in client.get(page.headers["Location"]).get_data(as_text=True)
    assert client.get("/worklist.json").status_code == 401  # and it stays over


def test_background_polls_do_not_keep_an_unattended_session_alive(client: FlaskClient) -> None:
    sign_in(client, "rad")
    with client.session_transaction() as session:
        session["last_seen"] = int(time.time()) - 29 * 60
    poll = {"X-Radtriage-Background": "1"}
    assert client.get("/worklist.json", headers=poll).status_code == 200
    with client.session_transaction() as session:
        assert int(time.time()) - session["last_seen"] >= 29 * 60  # the poll did not count as activity
    assert client.get("/worklist.json").status_code == 200  # a person's request does
    with client.session_transaction() as session:
        assert int(time.time()) - session["last_seen"] < 60


def test_an_expired_session_on_a_background_request_answers_401_json(client: FlaskClient) -> None:
    sign_in(client, "rad")
    with client.session_transaction() as session:
        session["signed_in_at"] = int(time.time()) - 13 * 3600
    response = client.get("/worklist.json")
    assert response.status_code == 401 and response.json["error"] == "expired"  # type: ignore[index]


def test_a_user_removed_from_the_users_file_is_signed_out_at_the_next_request(
    client: FlaskClient, users_file: Path
) -> None:
    sign_in(client, "rad")
    data = json.loads(users_file.read_text())
    data["users"] = [u for u in data["users"] if u["username"] != "rad"]
    users_file.write_text(json.dumps(data))
    import os

    os.utime(users_file, (time.time() + 5, time.time() + 5))  # a new mtime even within the same second
    response = client.get("/worklist")
    assert response.status_code == 302 and "reason=unknown-user" in response.headers["Location"]


# ---------------------------------------------------------------------------------------------- worklist


def test_the_worklist_is_in_priority_order_then_waiting_time_with_patients_masked(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    # Not-a-chest studies keep their ordered priority (the model does not score them), so the order is the order's.
    placed = [
        ("R-OLD", Priority.ROUTINE),
        ("STAT", Priority.STAT),
        ("R-NEW", Priority.ROUTINE),
        ("ASAP", Priority.ASAP),
    ]
    for accession, priority in placed:
        _o, job = order(
            components, archive.extremity, priority=priority, accession=accession, patient=f"Patient/secret-{accession}"
        )
        wait_terminal(components, job.id)
    sign_in(client, "rad")
    data = client.get("/worklist.json").json
    assert data is not None
    assert [r["accession"] for r in data["rows"]] == ["STAT", "ASAP", "R-OLD", "R-NEW"]
    assert [r["priority"] for r in data["rows"]] == ["stat", "asap", "routine", "routine"]
    first = data["rows"][0]
    assert first["status"] == "not-analysed" and first["reason"] == "not a chest examination"
    assert first["patient"].startswith("PT-") and len(first["patient"]) == 11
    page = client.get("/worklist").get_data(as_text=True)
    assert "secret-" not in page and "secret-" not in json.dumps(data)
    assert page.index(">STAT<") < page.index(">ASAP<") < page.index(">R-OLD<") < page.index(">R-NEW<")


def test_worklist_filters_and_search(client: FlaskClient, components: Components, archive: Archive) -> None:
    _o, chest = order(components, archive.chest, accession="CHEST-7")
    _o, other = order(components, archive.extremity, priority=Priority.ASAP, accession="LEG-9")
    wait_terminal(components, chest.id)
    wait_terminal(components, other.id)
    sign_in(client, "rad")

    def accessions(query: str) -> list[str]:
        body = client.get(f"/worklist.json?{query}").json
        assert body is not None
        return [r["accession"] for r in body["rows"]]

    assert accessions("q=chest") == ["CHEST-7"]
    assert accessions("q=%25") == []  # LIKE wildcards are searched for literally
    assert accessions("status=not-analysed") == ["LEG-9"]
    assert accessions("status=done") == ["CHEST-7"]
    assert accessions("priority=asap") == ["LEG-9"]
    assert accessions("flagged=1") == ["CHEST-7"]
    assert accessions("status=nonsense&priority=nonsense") == ["LEG-9", "CHEST-7"]  # ignored, not an error
    done = client.get("/worklist.json?status=done").json
    assert done is not None
    row = done["rows"][0]
    assert row["findings"] and all(f["positive"] for f in row["findings"])
    assert {f["label"] for f in row["findings"]} >= {"Pneumonia"}


def test_polling_an_unchanged_worklist_adds_no_audit_record_but_a_change_does(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    _o, job = order(components, archive.extremity, accession="A1")
    wait_terminal(components, job.id)
    sign_in(client, "rad")
    for _ in range(3):
        client.get("/worklist.json")
    shown = [r for r in records(components, kind="result-read") if view_of(r) == "worklist"]
    assert len(shown) == 1 and user_of(shown[0]) == "rad"
    assert not any(e.get("role", {}).get("code") == "1" for e in shown[0]["entity"])  # no patient: masked
    _o, second = order(components, archive.extremity, accession="A2")
    wait_terminal(components, second.id)
    client.get("/worklist.json")
    assert len([r for r in records(components, kind="result-read") if view_of(r) == "worklist"]) == 2


def test_revealing_a_patient_needs_a_post_with_the_csrf_token_and_is_audited(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    _o, job = order(components, archive.extremity, accession="A1", patient="Patient/who-1")
    sign_in(client, "rad")
    assert client.get(f"/studies/{job.id}/patient.json").status_code == 405
    assert client.post(f"/studies/{job.id}/patient.json").status_code == 400
    token = csrf_of(client, "/worklist")
    response = client.post(f"/studies/{job.id}/patient.json", headers={"X-CSRF-Token": token})
    assert response.json == {"patient": "Patient/who-1"}
    reads = [r for r in records(components, patient="Patient/who-1") if view_of(r) == "patient-identifier"]
    assert len(reads) == 1 and user_of(reads[0]) == "rad"


# ---------------------------------------------------------------------------------------------- study view


def test_a_scored_study_shows_scores_thresholds_model_and_its_audit_history_and_the_view_is_audited(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    _o, job = order(components, archive.chest, priority=Priority.STAT, accession="ACC-S", patient="Patient/s-1")
    wait_terminal(components, job.id)
    result = components.store.get_result(job.id)
    assert result is not None
    sign_in(client, "rad")
    page = client.get(f"/studies/{job.id}").get_data(as_text=True)
    assert "Accession ACC-S" in page and result.model.version in page
    for finding in result.findings:
        assert finding.label in page and f"{finding.threshold:.2f}" in page
    assert page.count("heatmap-toggle") == len(result.positive_findings) >= 1
    assert "Order received" in page or "Imaging order received" in page  # the audit history of this study
    assert "Patient/s-1" not in page
    reads = [r for r in records(components, patient="Patient/s-1") if view_of(r) == "study"]
    assert len(reads) == 1 and user_of(reads[0]) == "rad"
    assert reads[0]["entity"][1]["what"]["reference"] == f"Task/{job.id}"


def test_a_failed_study_says_why_and_still_shows_its_image(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    _o, job = order(components, archive.extremity, accession="LEG")
    wait_terminal(components, job.id)
    sign_in(client, "rad")
    page = client.get(f"/studies/{job.id}").get_data(as_text=True)
    assert "Not analysed: not a chest examination" in page and "heatmap-toggle" not in page
    assert client.get(f"/studies/{job.id}/image.png").status_code == 200
    heatmap = client.get(f"/studies/{job.id}/heatmaps/Pneumonia.png")
    assert heatmap.status_code == 404 and heatmap.json == {
        "error": "not-scored",
        "message": "This study has not been scored yet.",
    }


def test_a_study_the_archive_does_not_have_gives_a_message_not_an_error(
    client: FlaskClient, components: Components
) -> None:
    _o, job = order(components, MISSING_STUDY, accession="GONE")
    wait_terminal(components, job.id)
    sign_in(client, "rad")
    assert "the image archive does not have the study" in client.get(f"/studies/{job.id}").get_data(as_text=True)
    image = client.get(f"/studies/{job.id}/image.png")
    assert image.status_code == 404
    assert image.json == {"error": "image-unavailable", "message": "The image archive does not have this study."}


def test_unknown_or_malformed_study_ids_are_a_not_found_page(client: FlaskClient) -> None:
    sign_in(client, "rad")
    for path in ("/studies/" + "0" * 32, "/studies/../../etc/passwd", "/studies/x'%20OR%201=1"):
        response = client.get(path)
        assert response.status_code == 404, path
    body = client.get("/studies/" + "0" * 32).get_data(as_text=True)
    assert "There is no such page or study." in body and "Traceback" not in body


def test_images_are_downscaled_for_display_and_full_resolution_on_demand(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    _o, job = order(components, archive.chest, accession="IMG")
    wait_terminal(components, job.id)
    sign_in(client, "rad")
    display = client.get(f"/studies/{job.id}/image.png")
    assert display.mimetype == "image/png" and display.headers["X-Image-Downscaled"] == "1"
    shown = Image.open(io.BytesIO(display.data))
    assert max(shown.size) == 1024 and shown.mode == "L"
    full = client.get(f"/studies/{job.id}/image.png?full=1")
    width, height = (int(v) for v in full.headers["X-Image-Size"].split("x"))
    assert Image.open(io.BytesIO(full.data)).size == (width, height) and max(width, height) > 1024
    assert full.headers["X-Image-Downscaled"] == "0"
    assert {view_of(r) for r in records(components, kind="result-read")} >= {"image", "image-full"}


def test_a_heatmap_is_a_transparent_overlay_of_the_display_size_coloured_inside_the_models_square(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    _o, job = order(components, archive.chest, accession="HM")
    wait_terminal(components, job.id)
    result = components.store.get_result(job.id)
    assert result is not None and result.positive_findings
    label = result.positive_findings[0].label
    sign_in(client, "rad")
    display = Image.open(io.BytesIO(client.get(f"/studies/{job.id}/image.png").data))
    response = client.get(f"/studies/{job.id}/heatmaps/{label}.png")
    assert response.status_code == 200
    overlay = np.asarray(Image.open(io.BytesIO(response.data)))
    assert overlay.shape == (display.size[1], display.size[0], 4)
    alpha = overlay[..., 3]
    assert alpha.max() > 100  # something is coloured
    width, height = display.size
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    outside = np.ones_like(alpha, dtype=bool)
    outside[top : top + side, left : left + side] = False
    assert not alpha[outside].any()  # nothing outside the square the model saw
    assert client.get(f"/studies/{job.id}/heatmaps/Cardiomegaly.png").json == {
        "error": "heatmap-unavailable",
        "message": "This model has no such finding.",
    }
    cached = list((Path(components.settings.home) / "cache" / "web").glob("*.png"))
    assert len(cached) >= 2  # the display image and the heatmap, kept for the next viewer


def test_a_huge_image_is_downscaled_even_at_full_resolution_and_says_so(
    components: Components, archive: Archive, users_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADTRIAGE_WEB_USERS", str(users_file))
    # A browser that takes only 0.25 megapixels.
    components.settings = dataclasses.replace(components.settings, web_image_max_pixels=250_000)
    client = create_app(components=components).test_client()
    _o, job = order(components, archive.chest, accession="BIG")
    wait_terminal(components, job.id)
    sign_in(client, "rad")
    full = client.get(f"/studies/{job.id}/image.png?full=1")
    image = Image.open(io.BytesIO(full.data))
    assert image.size[0] * image.size[1] <= 250_000 and full.headers["X-Image-Downscaled"] == "1"


@pytest.fixture
def idle_app(
    tmp_path: Path, archive: Archive, web_scorer: XrvScorer, users_file: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Flask, Components]]:
    """The service with its worker NOT running: orders stay queued."""
    monkeypatch.setenv("RADTRIAGE_WEB_USERS", str(users_file))
    settings = Settings(home=str(tmp_path / "idle"), database_url=f"sqlite:///{tmp_path / 'idle.sqlite3'}")
    built = build_components(settings, scorer_factory=lambda: web_scorer, study_source=FolderStudySource(archive.root))
    try:
        yield create_app(components=built), built
    finally:
        built.engine.dispose()


def test_a_study_still_waiting_says_so_and_refreshes(idle_app: tuple[Flask, Components], archive: Archive) -> None:
    app, components = idle_app
    client = app.test_client()
    _o, job = order(components, archive.chest, accession="WAIT")
    sign_in(client, "rad")
    page = client.get(f"/studies/{job.id}").get_data(as_text=True)
    assert "This study is queued" in page and 'data-reload-ms="5000"' in page
    row = client.get("/worklist.json").json["rows"][0]  # type: ignore[index]
    assert row["status"] == "queued" and row["findings"] == [] and not row["scored"]
    assert client.get(f"/studies/{job.id}/heatmaps/Pneumonia.png").status_code == 404


def test_an_unexpected_error_is_a_friendly_page_without_a_stack_trace(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sign_in(client, "rad")

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom with Patient/" + "leak-" + str(1))  # built so that no source line holds it

    monkeypatch.setattr("radtriage.web.views.worklist", broken)
    page = client.get("/worklist")
    assert page.status_code == 500
    text = page.get_data(as_text=True)
    assert "Something went wrong" in text and "Traceback" not in text and "leak-1" not in text
    assert client.get("/worklist.json").json == {"error": "internal", "message": "Something went wrong on the server."}
    assert "leak-1" not in caplog.text  # the log gets the type and frames, not the message


# ---------------------------------------------------------------------------------------------- compliance


def test_audit_search_shows_matching_records_and_is_itself_audited(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    _o, job = order(components, archive.extremity, accession="A", patient="Patient/c-9")
    wait_terminal(components, job.id)
    sign_in(client, "comp")
    page = client.get("/compliance?search=1&kind=order-received&patient=Patient/c-9").get_data(as_text=True)
    assert "1 record" in page and "Patient/c-9" in page and "Imaging order received" in page
    searches = records(components, kind="audit-read")
    assert len(searches) == 1 and user_of(searches[0]) == "comp"
    assert any(e.get("role", {}).get("code") == "1" for e in searches[0]["entity"])  # names whose data was sought
    bad = client.get("/compliance?search=1&start=yesterday")
    assert bad.status_code == 200 and "start is not a FHIR date or date-time" in bad.get_data(as_text=True)


def test_an_export_downloads_a_verifiable_file_and_an_empty_one_is_explained(
    client: FlaskClient, components: Components, archive: Archive, tmp_path: Path
) -> None:
    _o, job = order(components, archive.extremity, accession="A")
    wait_terminal(components, job.id)
    sign_in(client, "comp")
    token = csrf_of(client, "/compliance")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    form = {"csrf_token": token, "start": today, "end": today, "kind": "order-received", "format": "csv"}
    response = client.post("/compliance/export", data=form)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"] and response.headers["X-Audit-Records"] == "1"
    path = tmp_path / "export.csv"
    path.write_bytes(response.data)
    assert verify_export(path, engine=components.engine).ok
    exported = records(components, kind="audit-exported")
    assert len(exported) == 1 and user_of(exported[0]) == "comp"

    empty = client.post("/compliance/export", data={**form, "client": "nobody"})
    assert empty.status_code == 200 and "nothing to export" in empty.get_data(as_text=True)
    assert client.post("/compliance/export", data={**form, "csrf_token": "forged"}).status_code == 400
    assert client.post("/compliance/export", data={**form, "format": "xml"}).status_code == 400


def test_verification_of_the_chain_and_of_an_uploaded_export(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    _o, job = order(components, archive.extremity, accession="A")
    wait_terminal(components, job.id)
    sign_in(client, "comp")
    token = csrf_of(client, "/compliance")
    chain = client.post("/compliance/verify", data={"csrf_token": token}).get_data(as_text=True)
    assert "✓ Verified" in chain and "The audit chain in the database" in chain
    export = client.post("/compliance/export", data={"csrf_token": token, "kind": "order-received"}).data
    good = client.post(
        "/compliance/verify", data={"csrf_token": token, "export_file": (io.BytesIO(export), "a.ndjson")}
    )
    assert "✓ Verified" in good.get_data(as_text=True)
    tampered = export.replace(b"order-received", b"order-receivex", 1)
    bad = client.post(
        "/compliance/verify", data={"csrf_token": token, "export_file": (io.BytesIO(tampered), "b.ndjson")}
    )
    assert "✗ Verification failed" in bad.get_data(as_text=True)
    binary = client.post(
        "/compliance/verify", data={"csrf_token": token, "export_file": (io.BytesIO(b"\xff\xfe\x00"), "c.bin")}
    )
    assert binary.status_code == 400 and "not a text audit export" in binary.get_data(as_text=True)
    outcomes = [r["outcome"] for r in records(components, kind="audit-verified")]
    assert sorted(outcomes) == ["0", "0", "8"]


# ---------------------------------------------------------------------------------------------- model


def test_the_model_page_shows_the_active_model_its_card_plots_and_operations(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    from radtriage.model.artefact import read_manifest
    from radtriage.model.registry import SHIPPED_DEFAULT

    for study in (archive.chest, archive.extremity):
        _o, job = order(components, study)
        wait_terminal(components, job.id)
    sign_in(client, "comp")
    page = client.get("/model").get_data(as_text=True)
    manifest = read_manifest(SHIPPED_DEFAULT)
    assert manifest.version in page and "<h3>Intended use</h3>" in page
    assert "not a chest examination" in page  # failures by reason
    assert 'id="kpi-queue">0<' in page
    assert "Live performance against radiologists" in page  # figures, or why there are none yet
    plot = client.get("/model/plots/roc_Pneumonia.png")
    assert plot.status_code == 200 and plot.data.startswith(b"\x89PNG")
    assert page.index("roc_Pneumonia.png") < page.index("calibration_Pneumonia.png")
    assert client.get("/model/plots/..%2Fmanifest.json").status_code == 404
    assert client.get("/model/plots/missing.png").status_code == 404


def test_the_model_page_charts_live_performance_and_drift(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    """Scored studies with radiologists' final reports: the page shows drift checks and live charts that load."""
    from radtriage.monitoring.reports import FinalReport

    for n, text in enumerate(("Right lower lobe pneumonia.", "No acute cardiopulmonary abnormality."), start=1):
        _o, job = order(components, archive.chest, accession=f"LIVE{n}", patient=f"Patient/live-{n}")
        wait_terminal(components, job.id)
        report = FinalReport("fhir", f"live-{n}", "final", text, accession_number=f"LIVE{n}")
        components.monitoring.intake.receive(report)
    sign_in(client, "admin")
    page = client.get("/model").get_data(as_text=True)
    assert 'id="drift-checks"' in page
    assert 'id="live-charts"' in page
    charts = [part.split('"')[0] for part in page.split('src="/model/live/')[1:]]
    assert "trend.png" in charts
    picture = client.get(f"/model/live/{charts[0]}")
    assert picture.status_code == 200 and picture.mimetype == "image/png"
    assert client.get("/model/live/..%2Fmetrics.json").status_code == 404
