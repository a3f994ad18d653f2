"""The radiologist's worklist (issue 14): waiting until taken, claim and mark read (audited), read studies hidden
or greyed, sorting, finding chips in reading order with thresholds and not-assessed findings."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from flask.testing import FlaskClient

from radtriage.app.core.domain import FindingScore, Priority
from radtriage.app.factory import Components
from radtriage.web.reading import ReadingLog
from radtriage.web.worklist_rows import finding_chips
from tests.support.data import copy_as_new_study, pydicom_data_dir
from tests.web.conftest import Archive, csrf_of, order, sign_in, wait_terminal
from tests.web.test_pages import records, user_of


def _rows(client: FlaskClient, query: str = "") -> list[dict]:  # type: ignore[type-arg]
    body = client.get(f"/worklist.json{query}").json
    assert body is not None
    return list(body["rows"])


def _act(client: FlaskClient, job_id: str, action: str) -> int:
    token = csrf_of(client, "/worklist")
    response = client.post(
        f"/studies/{job_id}/reading", data={"action": action, "csrf_token": token, "next": "/worklist"}
    )
    return response.status_code


def _age(components: Components, job_id: str, minutes: int) -> None:
    """Pretend the order arrived `minutes` ago (the clock cannot be moved inside the service)."""
    from sqlalchemy import update

    from radtriage.app.storage.tables import jobs, orders

    with components.engine.begin() as connection:
        order_id = connection.execute(jobs.select().where(jobs.c.id == job_id)).first().order_id  # type: ignore[union-attr]
        connection.execute(
            update(orders)
            .where(orders.c.id == order_id)
            .values(received_at=datetime.now(UTC) - timedelta(minutes=minutes))
        )


def test_waiting_runs_until_a_radiologist_claims_the_study_not_until_the_model_finished(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    _o, job = order(components, archive.extremity, priority=Priority.STAT, accession="W-1")
    wait_terminal(components, job.id)
    _age(components, job.id, 15)
    sign_in(client, "rad")
    row = _rows(client)[0]
    assert row["status"] == "not-analysed"  # the service is finished with it...
    assert 15 * 60 <= row["waiting_s"] < 16 * 60 and row["waiting"] == "15 min"  # ...but it is still waiting
    assert row["waiting_over"] is False

    assert _act(client, job.id, "claim") == 302
    row = _rows(client)[0]
    assert row["claimed_by"] == "rad" and row["waiting_over"] is True
    stopped = row["waiting_s"]
    _age(components, job.id, 30)  # time passes (arrival further back) but the claim time is fixed
    assert _rows(client)[0]["waiting_s"] > stopped  # measured from arrival to the claim...
    reading = ReadingLog(components.engine).get(job.id)
    assert reading.claimed_at is not None and reading.waiting_ended_at == reading.claimed_at


def test_claim_and_mark_read_are_audited_read_studies_are_hidden_or_greyed_and_claims_are_not_taken_over(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    _o, job = order(components, archive.extremity, accession="R-1", patient="Patient/r-1")
    second_study = copy_as_new_study(pydicom_data_dir() / "RG3_J2KI.dcm", archive.root)  # one live order per study
    _o, other = order(components, second_study, accession="R-2")
    wait_terminal(components, job.id)
    wait_terminal(components, other.id)
    sign_in(client, "rad")
    assert _act(client, job.id, "claim") == 302
    page = client.get("/worklist").get_data(as_text=True)
    assert "claimed by rad" in page

    client.post("/logout", data={"csrf_token": csrf_of(client, "/worklist")})
    sign_in(client, "admin")
    assert _act(client, job.id, "claim") == 409  # someone else holds it
    assert "already claimed by rad" in client.post(
        f"/studies/{job.id}/reading", data={"action": "claim", "csrf_token": csrf_of(client, "/worklist")}
    ).get_data(as_text=True)
    assert _act(client, job.id, "read") == 302  # reading it is still allowed (and recorded as the admin's read)
    assert [r["accession"] for r in _rows(client)] == ["R-2"]  # read studies are hidden by default
    shown = _rows(client, "?read=1")
    assert [r["accession"] for r in shown] == ["R-1", "R-2"] and shown[0]["read"] and shown[0]["read_by"] == "admin"
    assert 'class="prio-row-routine row-not-analysed row-read"' in client.get("/worklist?read=1").get_data(as_text=True)
    assert _act(client, job.id, "unread") == 302
    assert [r["accession"] for r in _rows(client)] == ["R-1", "R-2"]
    assert _act(client, job.id, "nonsense") == 400
    assert client.post(f"/studies/{job.id}/reading", data={"action": "read"}).status_code == 400  # no CSRF token

    claimed = records(components, kind="study-claimed", patient="Patient/r-1")
    marked = records(components, kind="study-marked-read", patient="Patient/r-1")
    assert [user_of(r) for r in claimed] == ["rad"]
    assert [user_of(r) for r in marked] == ["admin", "admin"]  # read, then unread


def test_the_compliance_role_cannot_claim(client: FlaskClient, components: Components, archive: Archive) -> None:
    _o, job = order(components, archive.extremity, accession="C-1")
    sign_in(client, "comp")
    assert _act(client, job.id, "claim") == 403


def test_columns_sort_and_the_default_is_priority_then_waiting(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    placed = [("B-OLD", Priority.ROUTINE, 50), ("A-STAT", Priority.STAT, 5), ("C-NEW", Priority.ROUTINE, 1)]
    for accession, priority, minutes in placed:
        _o, job = order(components, archive.extremity, priority=priority, accession=accession)
        wait_terminal(components, job.id)
        _age(components, job.id, minutes)
    sign_in(client, "rad")

    def accessions(query: str) -> list[str]:
        return [r["accession"] for r in _rows(client, query)]

    assert accessions("") == ["A-STAT", "B-OLD", "C-NEW"]
    assert accessions("?sort=priority&dir=desc") == ["B-OLD", "C-NEW", "A-STAT"]
    assert accessions("?sort=arrived") == ["C-NEW", "A-STAT", "B-OLD"]  # newest first
    assert accessions("?sort=arrived&dir=desc") == ["B-OLD", "A-STAT", "C-NEW"]
    assert accessions("?sort=waiting") == ["B-OLD", "A-STAT", "C-NEW"]  # longest waiting first
    assert accessions("?sort=accession") == ["A-STAT", "B-OLD", "C-NEW"]
    assert accessions("?sort=accession&dir=desc") == ["C-NEW", "B-OLD", "A-STAT"]
    assert accessions("?sort=nonsense") == ["A-STAT", "B-OLD", "C-NEW"]  # ignored, not an error
    page = client.get("/worklist?sort=arrived").get_data(as_text=True)
    assert 'aria-sort="ascending"><a class="sort-link" href="/worklist?sort=arrived&amp;dir=desc"' in page


def test_chips_flagged_first_with_thresholds_then_the_rest_then_not_assessed() -> None:
    findings = (
        FindingScore("Nodule", 0.12, 0.5),
        FindingScore("Effusion", 0.61, 0.4),
        FindingScore("Atelectasis", 0.05, 0.03),  # a low score flagged by a low threshold: says so
        FindingScore("Mass", 0.30, 0.5),
        FindingScore("Edema", 0.01, 0.5),
    )
    chips, more = finding_chips(findings, ("Pneumothorax",), others=2)
    assert [c.text for c in chips] == [
        "Effusion 0.61 ≥ 0.40",
        "Atelectasis 0.05 ≥ 0.03",
        "Mass 0.30",
        "Nodule 0.12",
        "+1 more",
        "Pneumothorax: not assessed",
    ]
    assert more == 1 and [c.kind for c in chips][-1] == "not-assessed"


def test_a_scored_row_and_the_study_page_show_chips_severity_and_not_assessed_findings(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    _o, job = order(components, archive.chest, accession="S-1")
    wait_terminal(components, job.id)
    result = components.store.get_result(job.id)
    assert result is not None
    # Whatever this model assesses, the page must show what it does not: store a result that says so.
    from sqlalchemy import update

    from radtriage.app.storage.tables import results

    with components.engine.begin() as connection:
        connection.execute(
            update(results).where(results.c.job_id == job.id).values(not_assessed=["Pneumothorax"], severity=3.24)
        )
    sign_in(client, "rad")
    row = _rows(client)[0]
    kinds = [c["kind"] for c in row["chips"]]
    assert kinds == sorted(kinds, key=["flagged", "other", "more", "not-assessed"].index)
    assert row["chips"][-1]["text"] == "Pneumothorax: not assessed" and row["severity"] == 3.2
    flagged = [c["text"] for c in row["chips"] if c["kind"] == "flagged"]
    scores = [float(re.search(r" (\d\.\d\d) ≥", t).group(1)) for t in flagged]  # type: ignore[union-attr]
    assert flagged and scores == sorted(scores, reverse=True)
    page = client.get(f"/studies/{job.id}").get_data(as_text=True)
    assert "Pneumothorax: not assessed" in page and "severity 3.2 of 8" in page
    assert 'id="wl-width-number"' in page and 'id="wl-level-number"' in page
    colours = re.findall(r'class="legend-swatch" data-colour="(#[0-9a-f]{6})"', page)
    assert len(colours) == len(result.positive_findings) and len(set(colours)) == len(colours)


def test_in_shadow_mode_a_row_says_what_the_model_would_have_set_without_applying_it(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    from sqlalchemy import update

    from radtriage.app.storage.tables import results

    _o, job = order(components, archive.chest, accession="SH-1")
    wait_terminal(components, job.id)
    with components.engine.begin() as connection:  # as the service stores a shadow-mode result
        connection.execute(
            update(results)
            .where(results.c.job_id == job.id)
            .values(shadow=True, priority=int(Priority.ROUTINE), model_priority=int(Priority.URGENT))
        )
        from radtriage.app.storage.tables import jobs

        connection.execute(update(jobs).where(jobs.c.id == job.id).values(priority=int(Priority.ROUTINE)))
    sign_in(client, "rad")
    row = _rows(client)[0]
    assert row["priority"] == "routine" and row["shadow_priority"] == "urgent"
    assert "shadow: model says URGENT" in client.get("/worklist").get_data(as_text=True)
    with components.engine.begin() as connection:
        connection.execute(update(results).where(results.c.job_id == job.id).values(shadow=False))
    assert _rows(client)[0]["shadow_priority"] is None
