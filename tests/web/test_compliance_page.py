"""The compliance page as a compliance officer reads it (issue 14): filter by user, pages beyond the newest 100,
what was viewed, actions in words, web sign-ins shown as sign-ins, and the user in CSV exports."""

from __future__ import annotations

import csv
import io
import re

from flask.testing import FlaskClient

from radtriage.app.factory import Components
from radtriage.compliance.audit import LOGIN, RESULT_READ, AuditRecord
from tests.web.conftest import Archive, csrf_of, order, sign_in, wait_terminal


def _result_rows(html: str) -> list[str]:
    table = html.split('id="audit-results"', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)


def test_search_by_user_shows_what_was_viewed_in_words_and_sign_ins_as_sign_ins(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    _o, job = order(components, archive.chest, accession="CP-1", patient="Patient/cp-1")
    wait_terminal(components, job.id)
    sign_in(client, "rad")
    client.get(f"/studies/{job.id}")
    client.post("/logout", data={"csrf_token": csrf_of(client, "/worklist")})
    components.audit.record(AuditRecord(LOGIN, client_id="ris-main"))  # a machine's token, for contrast
    sign_in(client, "comp")

    html = client.get("/compliance?search=1&user=rad").get_data(as_text=True)
    rows = _result_rows(html)
    assert rows and all("<td>rad</td>" in r for r in rows)  # only records naming rad
    assert "cp-1" in html and "study page" in html and "Task/" in html  # what was viewed
    assert "Signed in (web pages)" in html and "Signed out" in html
    assert ">Read</abbr>" in html and ">Execute</abbr>" in html and "<td>R</td>" not in html
    machine = client.get("/compliance?search=1&client=ris-main").get_data(as_text=True)
    assert "Access token issued" in machine and "Signed in (web pages)" not in machine


def test_results_page_beyond_the_newest_hundred(client: FlaskClient, components: Components) -> None:
    for n in range(130):
        components.audit.record(
            AuditRecord(RESULT_READ, client_id="ehr", interaction="read", entities=(f"DiagnosticReport/r{n}",))
        )
    sign_in(client, "comp")
    first = client.get("/compliance?search=1&client=ehr").get_data(as_text=True)
    assert "130 records, 1–100 shown" in first and len(_result_rows(first)) == 100
    assert "DiagnosticReport/r129" in first and "DiagnosticReport/r29<" not in first
    older = re.search(r'id="audit-older" href="([^"]+)"', first)
    assert older and 'id="audit-newer"' not in first
    second = client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert "101–130" in second and len(_result_rows(second)) == 30
    assert "DiagnosticReport/r0<" in second and 'id="audit-older"' not in second and 'id="audit-newer"' in second


def test_the_csv_export_has_a_user_column_and_respects_the_user_filter(
    client: FlaskClient, components: Components
) -> None:
    for user in ("rad", "admin", "rad"):
        components.audit.record(AuditRecord(RESULT_READ, client_id="radtriage-web", user_id=user, interaction="read"))
    sign_in(client, "comp")
    token = csrf_of(client, "/compliance")
    response = client.post(
        "/compliance/export", data={"csrf_token": token, "format": "csv", "user": "rad", "client": "radtriage-web"}
    )
    assert response.status_code == 200
    rows = [r for r in csv.DictReader(io.StringIO(response.get_data(as_text=True))) if r["row_type"] == "record"]
    assert [r["user_id"] for r in rows] == ["rad", "rad"]
