"""Drift: PSI, output and input drift against the model's evaluation, alerts to the log, table and a webhook."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from sqlalchemy import select

from radtriage.app.storage.monitoring_tables import image_observations, monitoring_alerts
from radtriage.model.artefact import read_manifest
from radtriage.model.registry import SHIPPED_DEFAULT
from radtriage.monitoring.drift import histogram, psi, reference_from_evaluation
from radtriage.monitoring.live import snapshot
from radtriage.monitoring.reports import FinalReport
from tests.monitoring.conftest import seed_result


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() -> None:
    reference = [50, 30, 10, 5, 5]
    assert psi(reference, [100, 60, 20, 10, 10]) == pytest.approx(0.0)
    small = psi(reference, [45, 32, 12, 6, 5])
    large = psi(reference, [5, 5, 10, 30, 50])
    assert 0 < small < 0.1 < 0.25 < large
    assert psi(reference, [0, 0, 0, 0, 0]) is None
    assert histogram([0.0, 0.05, 0.99, 1.0]) == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]


def test_the_reference_comes_from_the_shipped_evaluation(stack_factory) -> None:
    stack = stack_factory()
    reference = reference_from_evaluation(stack.monitoring.evaluation())
    assert set(reference["scores"]) >= set(read_manifest(SHIPPED_DEFAULT).labels)  # every assessed finding
    assert len(reference["scores"]["Pneumonia"]) == 10 and sum(reference["scores"]["Pneumonia"]) > 50
    assert {"PA", "AP"} <= set(reference["view"])


class _Webhook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers["Content-Length"])
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    received: list[dict] = []
    handler = type("Hook", (_Webhook,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", received
    server.shutdown()
    server.server_close()


def test_output_drift_and_a_performance_drop_raise_alerts_once(stack_factory, webhook, caplog) -> None:
    url, received = webhook
    stack = stack_factory(drift_min_cases=5, alert_webhook=url, performance_floor_sensitivity=0.9)
    labels = stack.monitoring.manifest().labels
    for n in range(1, 9):  # every probability near 1: nothing like the evaluation's distribution
        seed_result(stack, n, {label: 0.97 for label in labels})
        text = "Pneumonia." if n % 2 else "Normal chest."
        stack.monitoring.intake.receive(FinalReport("fhir", f"r{n}", "final", text,
                                                    accession_number=f"ACC{n}"))
    seed_result(stack, 9, {label: 0.01 for label in labels})  # a missed pneumonia: sensitivity 4/5 < 0.9
    stack.monitoring.intake.receive(FinalReport("fhir", "r9", "final", "Pneumonia.", accession_number="ACC9"))
    with caplog.at_level(logging.WARNING, logger="radtriage.monitoring.drift"):
        snap = snapshot(stack.monitoring, bootstrap=0)
    pneumonia = next(d for d in snap["drift"] if d["kind"] == "output-drift" and d["subject"] == "Pneumonia")
    assert pneumonia["value"] > 1.0 and pneumonia["alarming"]
    floor = next(d for d in snap["drift"] if d["kind"] == "performance-floor")
    assert floor["value"] == pytest.approx(0.8) and floor["alarming"]
    assert "Pneumonia" in snap["alerts"]["raised_now"] and "any-abnormality-sensitivity" in snap["alerts"]["raised_now"]
    assert any("monitoring alert: output-drift Pneumonia" in r.getMessage() for r in caplog.records)
    kinds = {(item["alert"]["kind"], item["alert"]["subject"]) for item in received}
    assert ("output-drift", "Pneumonia") in kinds and ("performance-floor", "any-abnormality-sensitivity") in kinds
    # The next check (a scrape a minute later) does not repeat them.
    again = snapshot(stack.monitoring, bootstrap=0)
    assert again["alerts"]["raised_now"] == []
    with stack.engine.connect() as conn:
        stored = conn.execute(select(monitoring_alerts.c.kind, monitoring_alerts.c.subject)).all()
    assert len(stored) == len(received)


def test_a_dead_webhook_does_not_stop_the_alert(stack_factory) -> None:
    stack = stack_factory(drift_min_cases=1, alert_webhook="http://127.0.0.1:9/nothing-listens-here")
    seed_result(stack, 1, {label: 0.99 for label in stack.monitoring.manifest().labels})
    snap = snapshot(stack.monitoring, bootstrap=0)
    assert snap["alerts"]["raised_now"]


def test_no_alert_below_the_minimum_number_of_cases(stack_factory) -> None:
    stack = stack_factory(drift_min_cases=50)
    seed_result(stack, 1, {label: 0.99 for label in stack.monitoring.manifest().labels})
    snap = snapshot(stack.monitoring, bootstrap=0)
    assert snap["alerts"]["raised_now"] == [] and not any(d["alarming"] for d in snap["drift"])


def test_scoring_records_the_image_and_input_drift_is_measured(stack_factory, archive) -> None:
    stack = stack_factory(drift_min_cases=1)
    stack.score(uid=archive.chest_uid)
    with stack.engine.connect() as conn:
        (row,) = conn.execute(select(image_observations)).mappings().all()
    assert (row["modality"], row["view_position"], row["photometric"]) == ("CR", "PA", "MONOCHROME1")
    assert 0.0 < row["pixel_mean"] < 1.0 and row["pixel_std"] > 0.0
    snap = snapshot(stack.monitoring, bootstrap=0)
    view = next(d for d in snap["drift"] if d["subject"] == "view-mix")
    # One PA study against a held-out set that is part AP: a measurable shift.
    assert view["value"] is not None and view["value"] > 0 and view["cases"] == 1
