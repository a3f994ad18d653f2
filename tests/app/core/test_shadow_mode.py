"""Issue 10, shadow mode: a model this site has not validated is scored, stored and shown, but raises no priority
and sends no priority update. Real service, store, placeholder model and FHIR mapping; the site policy makes the
placeholder's constant 0.05 Effusion score "urgent" (min_probability 0.01) so that there is a priority to raise."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from radtriage.app.config import Settings
from radtriage.app.core.domain import ImagingOrder, JobState, Priority
from radtriage.app.factory import Components, build_components
from radtriage.compliance.audit import SHADOW_MODE_CHANGED
from radtriage.fhir import mapping
from radtriage.imaging.folder_source import FolderStudySource
from radtriage.model.placeholder import ensure_placeholder
from radtriage.model.scorer import XrvScorer
from radtriage.monitoring.site_gate import SiteAcceptance
from tests.app.core.test_not_assessed_and_severity import audit_details
from tests.support.data import pydicom_data_dir
from tests.support.fhir_validation import assert_valid_fhir

POLICY = '[[rules]]\nfindings = ["Effusion"]\nmin_probability = 0.01\npriority = "urgent"\n'


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> XrvScorer:
    return XrvScorer.from_artefact(ensure_placeholder(tmp_path_factory.mktemp("models")), max_threads=None)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("archive")
    shutil.copy(pydicom_data_dir() / "RG1_J2KI.dcm", root / "RG1_J2KI.dcm")
    return root, str(dcmread(root / "RG1_J2KI.dcm", stop_before_pixels=True).StudyInstanceUID)


def components_with(tmp_path: Path, archive: tuple[Path, str], scorer: XrvScorer, **settings: str) -> Components:
    tmp_path.mkdir(parents=True, exist_ok=True)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    configured = Settings(
        home=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", policy=str(policy), **settings
    )
    return build_components(configured, scorer_factory=lambda: scorer, study_source=FolderStudySource(archive[0]))


@pytest.fixture
def auto(tmp_path: Path, archive: tuple[Path, str], scorer: XrvScorer) -> Iterator[Components]:
    """The default settings: shadow_mode "auto"."""
    built = components_with(tmp_path, archive, scorer)
    yield built
    built.close()


def triage(components: Components, uid: str, n: int, priority: Priority = Priority.ROUTINE):
    order = ImagingOrder(uid, "Patient/p1", "fhir", f"ImagingStudy/s{n}", requested_priority=priority)
    stored, job, _ = components.service.submit_order(order)
    job = components.service.run_job(job.id)  # a started worker may be running it too: then wait for it
    deadline = time.monotonic() + 60
    while not job.state.is_terminal and time.monotonic() < deadline:
        time.sleep(0.1)
        job = components.service.job(job.id)
    assert job.state is JobState.COMPLETED
    result = components.store.get_result(job.id)
    assert result is not None
    return stored, job, result


def test_the_default_is_auto() -> None:
    assert Settings().shadow_mode == "auto"


def test_auto_without_a_site_validation_is_shadow(
    auto: Components, archive: tuple[Path, str], fhir_schema_path: Path | None
) -> None:
    order, job, result = triage(auto, archive[1], 1)
    assert result.shadow
    assert (result.priority, job.priority) == (Priority.ROUTINE, Priority.ROUTINE)
    assert result.model_priority is Priority.URGENT
    assert result.priority_reason.startswith("SHADOW MODE (no site validation recorded for model")
    assert "would have set URGENT" in result.priority_reason
    # The Task keeps the order's priority and says what the model would have set, and why not.
    task = mapping.task_resource(job, order, result)
    assert task["priority"] == "routine"
    would = [o["valueCode"] for o in task["output"] if "valueCode" in o]
    assert would == ["urgent"]
    assert any("SHADOW MODE" in note["text"] and "URGENT" in note["text"] for note in task["note"])
    report = mapping.diagnostic_report(order, job, result)
    assert "SHADOW MODE: the model would have set priority URGENT" in report["conclusion"]
    assert_valid_fhir(task, fhir_schema_path)
    assert_valid_fhir(report, fhir_schema_path)


def test_shadow_never_lowers_the_order_s_priority(auto: Components, archive: tuple[Path, str]) -> None:
    _, job, result = triage(auto, archive[1], 1, Priority.STAT)
    assert result.shadow and result.priority is Priority.STAT and job.priority is Priority.STAT
    assert result.model_priority is Priority.STAT  # the policy never suggests below the order either


def test_a_recorded_site_validation_makes_the_model_active(auto: Components, archive: tuple[Path, str]) -> None:
    _, _, before = triage(auto, archive[1], 1)
    assert before.shadow
    site = SiteAcceptance(auto.engine, auto.audit)
    site.record_validation(before.model, by="physicist", n=200, metrics={"summary": {"auroc": "0.91"}})
    assert auto.gate is not None
    auto.gate.forget()  # the gate caches its answer for 30 s
    _, job, after = triage(auto, archive[1], 2)
    assert not after.shadow
    assert (after.priority, job.priority) == (Priority.URGENT, Priority.URGENT)
    [audited] = audit_details(auto, "site-validation-recorded")
    assert audited["model-sha256"] == before.model.sha256 and audited["auroc"] == "0.91"


def test_a_validation_of_another_model_does_not_count(auto: Components, archive: tuple[Path, str]) -> None:
    from radtriage.app.core.domain import ModelIdentity

    other = ModelIdentity("other", "1", "ef" * 32)
    SiteAcceptance(auto.engine).record_validation(other, by="x", n=10, metrics={})
    assert triage(auto, archive[1], 1)[2].shadow


def test_operator_overrides_are_explicit_and_audited(auto: Components, archive: tuple[Path, str]) -> None:
    assert auto.gate is not None
    site = SiteAcceptance(auto.engine, auto.audit)
    model = triage(auto, archive[1], 1)[2].model
    with pytest.raises(ValueError, match="reason"):
        site.record_override(model, "off", reason="  ", by="ops")
    site.record_override(model, "off", reason="validated on paper, go-live approved", by="ops")
    auto.gate.forget()
    assert not triage(auto, archive[1], 2)[2].shadow
    site.record_override(model, "on", reason="RIS migration weekend", by="ops")
    auto.gate.forget()
    shadowed = triage(auto, archive[1], 3)
    assert "operator override by ops on " in shadowed[2].priority_reason
    assert "RIS migration" not in shadowed[2].priority_reason  # free text stays in the audit trail
    scored = [a for a in audit_details(auto, "study-scored") if a.get("shadow") == "true"]
    assert scored and scored[-1]["model-priority"] == "urgent" and scored[-1]["priority"] == "routine"
    site.record_override(model, "auto", reason="back to the rule", by="ops")
    auto.gate.forget()
    assert triage(auto, archive[1], 4)[2].shadow  # still no validation
    audited = audit_details(auto, SHADOW_MODE_CHANGED.code)
    assert [(a["shadow"], a["by"]) for a in audited] == [
        ("off", "operator override"), ("on", "operator override"), ("auto", "operator override"),
    ]  # fmt: skip
    assert audited[0]["reason"] == "validated on paper, go-live approved"


def test_the_settings_override_the_rule_and_are_audited_at_start_up(
    tmp_path: Path, archive: tuple[Path, str], scorer: XrvScorer
) -> None:
    off = components_with(tmp_path / "off", archive, scorer, shadow_mode="off")
    off.start()
    try:
        assert not triage(off, archive[1], 1)[2].shadow
        assert audit_details(off, SHADOW_MODE_CHANGED.code) == [{"shadow": "off", "by": "setting shadow_mode"}]
    finally:
        off.close()
    on = components_with(tmp_path / "on", archive, scorer, shadow_mode="on")
    try:
        SiteAcceptance(on.engine).record_validation(scorer.identity, by="x", n=10, metrics={})
        result = triage(on, archive[1], 1)[2]
        assert result.shadow and "shadow_mode setting is on" in result.priority_reason
    finally:
        on.close()


def test_an_unknown_shadow_mode_is_refused(tmp_path: Path, archive: tuple[Path, str], scorer: XrvScorer) -> None:
    with pytest.raises(ValueError, match="shadow_mode must be one of on, off, auto"):
        components_with(tmp_path, archive, scorer, shadow_mode="maybe")
