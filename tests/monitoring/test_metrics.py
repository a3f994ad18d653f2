"""Live metrics against final reports, served as JSON and Prometheus text, and the markdown report."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from radtriage.app.core.domain import JobState
from radtriage.app.core.pipeline import advance
from radtriage.monitoring.cli_commands import monitor_group
from radtriage.monitoring.live import snapshot
from radtriage.monitoring.metrics import ANY_ABNORMALITY, labelled_cases, performance
from radtriage.monitoring.report import write_report
from radtriage.monitoring.reports import FinalReport
from tests.monitoring.conftest import monitored_app, seed_result

#: (pneumonia probability, the radiologist's report); Effusion is 0.1 everywhere (never called).
CASES = [
    (0.9, "Right lower lobe pneumonia."),  # TP
    (0.8, "No pneumonia. Lungs are clear."),  # FP
    (0.1, "Left lower lobe pneumonia."),  # FN
    (0.2, "No acute cardiopulmonary abnormality."),  # TN
    (0.3, "Possible early pneumonia."),  # uncertain: left out
    (0.05, "Heart size normal. Lungs are clear."),  # TN
]


def seed_cases(stack, *, at: datetime | None = None) -> list[str]:
    jobs = []
    for n, (pneumonia, text) in enumerate(CASES, start=1):
        jobs.append(seed_result(stack, n, {"Pneumonia": pneumonia, "Effusion": 0.1}, at=at))
        stack.monitoring.intake.receive(FinalReport("fhir", f"r{n}", "final", text, accession_number=f"ACC{n}"))
    return jobs


def test_counts_rates_and_auroc_per_finding(stack_factory) -> None:
    stack = stack_factory()
    seed_cases(stack)
    measured = performance(labelled_cases(stack.engine), bootstrap=100)
    pneumonia = measured["findings"]["Pneumonia"]
    outcomes = tuple(pneumonia[k] for k in ("tp", "fp", "tn", "fn", "uncertain"))
    assert outcomes == (1, 1, 2, 1, 1)
    assert pneumonia["sensitivity"]["value"] == 0.5
    assert pneumonia["specificity"]["value"] == pytest.approx(2 / 3)
    assert pneumonia["ppv"]["value"] == 0.5 and pneumonia["npv"]["value"] == pytest.approx(2 / 3)
    low, high = pneumonia["sensitivity"]["ci95"]
    assert low < 0.5 < high
    # Positives 0.9 and 0.1 against negatives 0.8, 0.2, 0.05: 4 of 6 pairs ordered right.
    assert pneumonia["auroc"]["value"] == pytest.approx(4 / 6)
    effusion = measured["findings"]["Effusion"]
    assert (effusion["n"], effusion["positives"], effusion["sensitivity"]["value"]) == (6, 0, None)
    anything = measured["findings"][ANY_ABNORMALITY]
    assert (anything["tp"], anything["fp"], anything["tn"], anything["fn"]) == (1, 1, 2, 1)
    assert measured["groups"]["door=fhir"][ANY_ABNORMALITY]["n"] == 5


def test_an_amendment_changes_the_metrics(stack_factory) -> None:
    stack = stack_factory()
    seed_cases(stack)
    stack.monitoring.intake.receive(FinalReport("fhir", "r2", "amended", "Right lower lobe pneumonia.",
                                                accession_number="ACC2"))
    pneumonia = performance(labelled_cases(stack.engine), bootstrap=0)["findings"]["Pneumonia"]
    assert (pneumonia["tp"], pneumonia["fp"]) == (2, 0)


def test_the_window_selects_studies_by_scoring_time(stack_factory) -> None:
    stack = stack_factory()
    old = datetime.now(UTC) - timedelta(days=60)
    seed_result(stack, 1, {"Pneumonia": 0.9}, at=old)
    stack.monitoring.intake.receive(FinalReport("fhir", "r1", "final", "Pneumonia.", accession_number="ACC1"))
    assert len(labelled_cases(stack.engine, since=datetime.now(UTC) - timedelta(days=30))) == 0
    assert len(labelled_cases(stack.engine, since=old - timedelta(days=1))) == 1


def test_operational_figures(stack_factory) -> None:
    stack = stack_factory()
    seed_cases(stack)
    stack.order(20, uid="1.2.826.0.1.3680043.10.99.20")  # waiting in the queue
    _, failing = stack.order(21, uid="1.2.826.0.1.3680043.10.99.21")
    stack.components.store.record_transition(
        advance(failing, JobState.FAILED, datetime.now(UTC), reason_code="pacs-unavailable", data={"retryable": "true"})
    )
    ops = snapshot(stack.monitoring, bootstrap=0)["operations"]
    assert ops["queue_length"] == 1
    assert ops["failures_by_reason"] == {"pacs-unavailable": 1}
    assert ops["notifications"] == len(CASES)
    assert 0 <= ops["time_to_notification_seconds"]["p50"] < 60


def test_metrics_json_and_prometheus_endpoints(stack_factory) -> None:
    stack = stack_factory()
    seed_cases(stack)
    stack.monitoring.intake.receive(FinalReport("fhir", "lost", "final", "Pneumonia.", accession_number="NOWHERE"))
    client = monitored_app(stack).test_client()
    body = client.get("/monitoring/metrics.json?days=7").get_json()
    assert body["performance"]["cases"] == len(CASES)
    assert body["reports"]["match:unmatched"] == 1
    assert body["model"]["version"] == stack.monitoring.manifest().version
    text = client.get("/metrics").get_data(as_text=True)
    assert 'radtriage_finding_sensitivity{finding="Pneumonia"} 0.5' in text
    assert 'radtriage_final_reports{kind="match:unmatched"} 1' in text
    assert "# TYPE radtriage_queue_length gauge" in text
    assert "Patient/" not in text and "pneumonia." not in text.lower()  # aggregates only
    assert client.get("/metrics?days=-1").status_code == 400


def test_the_report_writes_markdown_and_plots(stack_factory, tmp_path: Path) -> None:
    stack = stack_factory()
    seed_cases(stack)
    path = write_report(stack.monitoring, tmp_path / "report", days=7)
    text = path.read_text()
    assert "| Pneumonia | 5 | 2 | 1 | 0.500" in text
    for name in ("trend.png", "roc_Pneumonia.png", "calibration_Pneumonia.png", "roc_any_abnormality.png"):
        assert f"plots/{name}" in text
        with Image.open(tmp_path / "report" / "plots" / name) as image:
            assert image.format == "PNG" and image.width > 100
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["performance"]["cases"] == len(CASES)


def test_the_cli_report_command(stack_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = stack_factory()
    seed_cases(stack)
    settings = stack.components.settings
    monkeypatch.setenv("RADTRIAGE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RADTRIAGE_HOME", settings.home)
    result = CliRunner().invoke(monitor_group, ["report", "--out", str(tmp_path / "cli"), "--days", "7"],
                                obj={"config": None, "verbose": False})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "monitoring-report.md").exists()


def test_shadow_drafts_are_measured_against_the_final_reports(stack_factory) -> None:
    stack = stack_factory(drafting_mode="shadow", drafting_margin="0.15")
    seed_cases(stack)  # threshold 0.5: studies 3 (0.1), 4 (0.2), 6 (0.05) are drafted; 5 (0.3) is too close
    drafts = snapshot(stack.monitoring, bootstrap=0)["drafts"]
    # Study 3 was a pneumonia the radiologist reported: one of three drafts was wrong.
    assert (drafts["labelled"], drafts["drafted"]) == (5, 3)
    assert drafts["share"] == pytest.approx(3 / 5)
    assert drafts["npv"]["value"] == pytest.approx(2 / 3)
    assert drafts["mode"] == "shadow"
