"""The model page's charts and drift table as people read them (issue 14): charts open full size, drift checks
with too few cases say so instead of "ok", an empty trend chart says "no data yet", and chart text renders."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from flask.testing import FlaskClient
from PIL import Image, ImageFont

from radtriage.app.factory import Components
from radtriage.model.evaluation.plots import Series
from radtriage.monitoring.report import trend_plot
from tests.web.conftest import Archive, order, sign_in, wait_terminal


def test_drift_rows_with_too_few_cases_say_so_and_charts_open_full_size(
    client: FlaskClient, components: Components, archive: Archive
) -> None:
    from radtriage.monitoring.reports import FinalReport

    _o, job = order(components, archive.chest, accession="LIVE1", patient="Patient/live-1")
    wait_terminal(components, job.id)
    components.monitoring.intake.receive(FinalReport("fhir", "live-1", "final", "Pneumonia.", accession_number="LIVE1"))
    sign_in(client, "admin")
    page = client.get("/model").get_data(as_text=True)
    table = page.split('id="drift-checks"', 1)[1].split("</table>", 1)[0]
    states = re.findall(r"<td>(?:<[^>]+>)?(ok|ALERT|too few cases \(\d+ of \d+ needed\))", table)
    assert states and all(s.startswith("too few cases") for s in states)  # one study: nothing can be judged yet
    assert "(1 of 30 needed)" in table
    links = re.findall(r'<a href="(/model/(?:live|plots)/[^"]+\.png)" target="_blank"', page)
    assert "/model/live/trend.png" in links
    assert client.get(links[0]).status_code == 200


def _ink(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    return int((np.asarray(image.convert("L").crop(box)) < 160).sum())


def test_an_empty_trend_chart_says_no_data_yet_and_its_text_has_no_missing_glyphs(tmp_path: Path) -> None:
    empty, full = tmp_path / "empty.png", tmp_path / "full.png"
    trend_plot(empty, "Any abnormality per 1.0 days of the window", [Series("sensitivity", [], [])])
    trend_plot(full, "Any abnormality per 1.0 days of the window", [Series("sensitivity", [0.5], [0.8], markers=True)])
    centre = (200, 160, 360, 200)
    assert _ink(Image.open(empty), centre) > 20 and _ink(Image.open(full), centre) == 0
    # The default bitmap font draws an empty box for characters it lacks; every label must be in its range.
    font = ImageFont.load_default()
    for text in ("window start to end", "no data yet", "Any abnormality per 1.0 days of the window"):
        assert all(ord(c) < 128 for c in text) and font.getbbox(text)[2] > 0
