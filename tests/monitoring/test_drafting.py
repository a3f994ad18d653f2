"""Draft reports for routine studies: the pure rule, and the wiring into the FHIR DiagnosticReport."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import select

from radtriage.app.core.domain import FindingScore, JobState, ModelIdentity
from radtriage.app.storage.monitoring_tables import result_annotations
from radtriage.model.drafting import (
    DRAFT_HEADLINE,
    draft_performance,
    draft_report,
    is_draftable,
    margin_for_npv,
    parse_margins,
    wilson_interval,
)
from radtriage.monitoring.recalibration import store_threshold_version
from radtriage.monitoring.settings import MonitoringSettings
from tests.monitoring.conftest import monitored_app

MODEL = ModelIdentity("radtriage-cxr-triage", "2026.11.30", "a" * 64)
PLACEHOLDER = ModelIdentity("placeholder", "0", "b" * 64, placeholder=True)


def findings(*probabilities: float, threshold: float = 0.5) -> list[FindingScore]:
    return [FindingScore(f"F{i}", p, threshold) for i, p in enumerate(probabilities)]


def test_margins_parse_global_and_per_finding() -> None:
    assert parse_margins("0.05") == {"*": 0.05}
    assert parse_margins("Effusion=0.02, *=0.1") == {"Effusion": 0.02, "*": 0.1}
    assert parse_margins("Effusion=0.02") == {"Effusion": 0.02, "*": 0.0}
    with pytest.raises(ValueError, match="not a number"):
        parse_margins("Effusion=lots")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        parse_margins("1.5")


def test_a_study_is_drafted_only_when_every_finding_is_below_threshold_minus_margin() -> None:
    margins = parse_margins("0.1")
    assert is_draftable(findings(0.1, 0.39), margins)
    assert not is_draftable(findings(0.1, 0.4), margins)  # exactly threshold - margin is too close
    assert not is_draftable(findings(0.1, 0.6), margins)
    assert not is_draftable([], margins)  # nothing checked is nothing to vouch for
    per_finding = parse_margins("F1=0.3, *=0.0")
    assert not is_draftable(findings(0.45, 0.25), per_finding)
    assert is_draftable(findings(0.45, 0.15), per_finding)


def test_the_draft_names_the_model_and_every_finding_checked_and_is_never_final() -> None:
    draft = draft_report(findings(0.1, 0.2), MODEL, parse_margins("0.05"))
    assert draft is not None
    assert DRAFT_HEADLINE in draft.text and "NOT SIGNED" in draft.text
    assert "radtriage-cxr-triage 2026.11.30" in draft.text
    assert "F0, F1" in draft.text and draft.labels_checked == ("F0", "F1")
    assert "final report" in draft.text  # "it is not a final report"
    assert draft_report(findings(0.1, 0.6), MODEL, parse_margins("0")) is None


def test_the_placeholder_model_never_drafts() -> None:
    assert draft_report(findings(0.0, 0.0), PLACEHOLDER, parse_margins("0")) is None


def test_the_margin_for_a_target_npv_is_the_smallest_that_reaches_it() -> None:
    thresholds = [0.5]
    # Abnormal cases at 0.45 and 0.3 sit just under the threshold; normal ones lower.
    probabilities = [[0.45], [0.3], [0.1], [0.05], [0.02], [0.2], [0.15]]
    abnormal = [1, 1, 0, 0, 0, 0, 0]
    at_zero = draft_performance(abnormal, probabilities, thresholds, 0.0)
    assert (at_zero.drafted, at_zero.drafted_abnormal) == (7, 2)
    chosen = margin_for_npv(abnormal, probabilities, thresholds, 1.0)
    assert chosen is not None
    assert chosen.npv == 1.0 and chosen.drafted == 5
    # 0.3 stops being drafted once 0.3 < 0.5 - margin fails: at 0.2 on the 0.005 grid (0.195 still drafts it).
    assert chosen.margin == pytest.approx(0.2)
    assert margin_for_npv([1, 1], [[0.0], [0.0]], thresholds, 0.9) is None


def test_wilson_interval_brackets_the_proportion() -> None:
    low, high = wilson_interval(45, 50)
    assert low < 0.9 < high and 0.75 < low and high < 0.97
    assert wilson_interval(0, 0) == (None, None)


def test_settings_refuse_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="drafting_mode"):
        MonitoringSettings(drafting_mode="always")
    assert MonitoringSettings.from_settings(None, env={"RADTRIAGE_DRAFTING_MODE": "shadow"}).drafting_mode == "shadow"
    assert MonitoringSettings.from_settings(None, env={}).drafting_mode == "off"


# ------------------------------------------------------------------------------------------- wired


def _routine_thresholds(stack) -> None:
    """Local operating points that make every finding of any study routine (recalibration's table)."""
    manifest = stack.monitoring.manifest()
    store_threshold_version(stack.engine, manifest.identity, {label: 1.0 for label in manifest.labels})


def test_mode_on_sends_the_draft_as_conclusion_and_presented_form(stack_factory, archive) -> None:
    stack = stack_factory(drafting_mode="on", drafting_margin="0.001")
    _routine_thresholds(stack)
    job = stack.score(uid=archive.chest_uid)
    assert job.state is JobState.COMPLETED
    report = monitored_app(stack).test_client().get(f"/fhir/DiagnosticReport/{job.id}").get_json()
    assert report["status"] == "preliminary"
    assert report["conclusion"].startswith("PRELIMINARY DRAFT - NOT SIGNED. " + DRAFT_HEADLINE)
    (form,) = report["presentedForm"]
    assert form["contentType"].startswith("text/plain")
    text = base64.b64decode(form["data"]).decode("utf-8")
    assert DRAFT_HEADLINE in text and stack.monitoring.manifest().version in text
    with stack.engine.connect() as conn:
        row = conn.execute(select(result_annotations).where(result_annotations.c.job_id == job.id)).one()
    assert row.thresholds_version == "local-1" and row.draft_mode == "on"


def test_shadow_mode_records_the_draft_but_never_sends_it(stack_factory, archive) -> None:
    stack = stack_factory(drafting_mode="shadow", drafting_margin="0.001")
    _routine_thresholds(stack)
    job = stack.score(uid=archive.chest_uid)
    report = monitored_app(stack).test_client().get(f"/fhir/DiagnosticReport/{job.id}").get_json()
    assert "presentedForm" not in report and DRAFT_HEADLINE not in report["conclusion"]
    with stack.engine.connect() as conn:
        row = conn.execute(select(result_annotations).where(result_annotations.c.job_id == job.id)).one()
    assert row.draft_mode == "shadow" and DRAFT_HEADLINE in row.draft_text


def drafts_in(report: dict) -> list[dict]:
    """The report's text forms (drafts); heatmap pictures are presented forms too."""
    return [form for form in report.get("presentedForm", []) if form["contentType"].startswith("text/plain")]


def test_no_draft_when_a_finding_is_near_its_threshold(stack_factory, archive) -> None:
    stack = stack_factory(drafting_mode="on", drafting_margin="0.01")
    job = stack.score(uid=archive.chest_uid)  # the manifest's thresholds
    result = stack.components.service.result(job.id)
    expected_draft = all(f.probability < f.threshold - 0.01 for f in result.findings)
    report = monitored_app(stack).test_client().get(f"/fhir/DiagnosticReport/{job.id}").get_json()
    assert bool(drafts_in(report)) is expected_draft
    # And with every threshold at 0 nothing can be drafted.
    manifest = stack.monitoring.manifest()
    store_threshold_version(stack.engine, manifest.identity, {label: 0.0 for label in manifest.labels})
    second = stack.score(2, uid=archive.chest_uid)
    report = monitored_app(stack).test_client().get(f"/fhir/DiagnosticReport/{second.id}").get_json()
    assert not drafts_in(report)
    with stack.engine.connect() as conn:
        row = conn.execute(select(result_annotations).where(result_annotations.c.job_id == second.id)).one()
    assert row.thresholds_version == "local-1" and row.draft_text is None


def test_mode_off_is_the_default_and_makes_no_draft(stack_factory, archive) -> None:
    stack = stack_factory()
    _routine_thresholds(stack)
    job = stack.score(uid=archive.chest_uid)
    with stack.engine.connect() as conn:
        row = conn.execute(select(result_annotations).where(result_annotations.c.job_id == job.id)).one()
    assert row.draft_mode == "off" and row.draft_text is None


def test_an_order_that_arrived_urgent_is_never_drafted(stack_factory, archive) -> None:
    from radtriage.app.core.domain import Priority

    stack = stack_factory(drafting_mode="on", drafting_margin="0.001")
    _routine_thresholds(stack)
    job = stack.score(uid=archive.chest_uid, requested_priority=Priority.STAT)
    report = monitored_app(stack).test_client().get(f"/fhir/DiagnosticReport/{job.id}").get_json()
    assert "presentedForm" not in report
