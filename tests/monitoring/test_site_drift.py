"""Issue 10, the site gate: when this site's recent scores depart from its validation sample, the service says
so (alert, model page) and, with site_drift_action = "shadow", falls back to shadow mode (audited). Real service,
SQLite, the untrained placeholder model (every probability 0.05, so every abnormality score is in the first bin)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from radtriage.app.config import Settings
from radtriage.app.core.domain import ImagingOrder, JobState, Priority, TriageResult
from radtriage.app.factory import Components, build_components, create_app
from radtriage.app.storage.monitoring_tables import monitoring_alerts
from radtriage.imaging.folder_source import FolderStudySource
from radtriage.model.placeholder import ensure_placeholder
from radtriage.model.scorer import XrvScorer
from radtriage.monitoring.site_drift import SiteDrift
from radtriage.monitoring.site_gate import SiteAcceptance
from tests.app.core.test_not_assessed_and_severity import audit_details
from tests.support.data import pydicom_data_dir
from tests.web.conftest import sign_in, users_directory

POLICY = '[[rules]]\nfindings = ["Effusion"]\nmin_probability = 0.01\npriority = "urgent"\n'
LOW_SCORES = [100] + [0] * 9  # a validation sample that scored like the placeholder does here
HIGH_SCORES = [0] * 9 + [100]  # one that scored nothing like it


@pytest.fixture(scope="module")
def placeholder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, XrvScorer]:
    path = ensure_placeholder(tmp_path_factory.mktemp("models"))
    return path, XrvScorer.from_artefact(path, max_threads=None)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("archive")
    shutil.copy(pydicom_data_dir() / "RG1_J2KI.dcm", root / "RG1_J2KI.dcm")
    return root, str(dcmread(root / "RG1_J2KI.dcm", stop_before_pixels=True).StudyInstanceUID)


def build(tmp_path: Path, archive: tuple[Path, str], placeholder: tuple[Path, XrvScorer], action: str) -> Components:
    (tmp_path / "policy.toml").write_text(POLICY, encoding="utf-8")
    settings = Settings(
        home=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", policy=str(tmp_path / "policy.toml"),
        model=str(placeholder[0]), site_drift_action=action, drift_min_cases=3,
    )  # fmt: skip
    scorer = placeholder[1]
    return build_components(settings, scorer_factory=lambda: scorer, study_source=FolderStudySource(archive[0]))


@pytest.fixture
def shadow_on_drift(tmp_path: Path, archive, placeholder) -> Iterator[Components]:
    built = build(tmp_path, archive, placeholder, "shadow")
    yield built
    built.close()


def triage(components: Components, uid: str, n: int) -> TriageResult:
    order = ImagingOrder(uid, "Patient/p1", "fhir", f"ImagingStudy/s{n}", requested_priority=Priority.ROUTINE)
    _, job, _ = components.service.submit_order(order)
    assert components.service.run_job(job.id).state is JobState.COMPLETED
    result = components.store.get_result(job.id)
    assert result is not None
    return result


def validate(components: Components, histogram: list[int]) -> None:
    model = components.service.scorer.identity
    SiteAcceptance(components.engine).record_validation(
        model, by="physicist", n=100, metrics={"score_histogram": histogram}
    )
    assert components.gate is not None
    components.gate.forget()


def alerts(components: Components) -> list[str]:
    with components.engine.connect() as conn:
        return [row.kind for row in conn.execute(select(monitoring_alerts))]


def test_drift_from_the_validation_falls_back_to_shadow_mode_audited_and_alerted(
    shadow_on_drift: Components, archive: tuple[Path, str]
) -> None:
    components = shadow_on_drift
    validate(components, HIGH_SCORES)
    first = [triage(components, archive[1], n) for n in range(3)]
    assert not any(r.shadow for r in first)  # fewer than drift_min_cases results before each of these
    assert components.gate is not None
    components.gate.forget()
    drifted = triage(components, archive[1], 9)
    assert drifted.shadow and drifted.priority is Priority.ROUTINE and drifted.model_priority is Priority.URGENT
    assert "site drift fallback: abnormality-score PSI" in drifted.priority_reason
    [audited] = [a for a in audit_details(components, "shadow-mode-changed") if a["by"] == "site drift fallback"]
    assert audited["shadow"] == "on"
    assert alerts(components) == ["site-drift"]


def test_alert_only_keeps_the_model_acting(tmp_path: Path, archive, placeholder) -> None:
    components = build(tmp_path, archive, placeholder, "alert")
    try:
        validate(components, HIGH_SCORES)
        for n in range(3):
            triage(components, archive[1], n)
        assert components.gate is not None
        components.gate.forget()
        assert not triage(components, archive[1], 9).shadow
        assert alerts(components) == ["site-drift"]
        assert audit_details(components, "shadow-mode-changed") == []
    finally:
        components.close()


def test_a_site_that_looks_like_its_validation_does_not_drift(
    shadow_on_drift: Components, archive: tuple[Path, str]
) -> None:
    validate(shadow_on_drift, LOW_SCORES)
    for n in range(4):
        assert not triage(shadow_on_drift, archive[1], n).shadow
    drift = SiteDrift(shadow_on_drift.engine, SiteAcceptance(shadow_on_drift.engine), min_cases=3)
    status = drift.status(shadow_on_drift.service.scorer.identity)
    assert status.cases == 4 and status.psi is not None and status.psi < 0.01 and not status.drifting
    assert alerts(shadow_on_drift) == []


def test_the_model_page_shows_shadow_mode_and_drift(
    shadow_on_drift: Components, archive: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    users = tmp_path / "users.json"
    users.write_text(json.dumps({"users": [u.to_dict() for u in users_directory()]}), "utf-8")
    monkeypatch.setenv("RADTRIAGE_WEB_USERS", str(users))
    monkeypatch.setenv("RADTRIAGE_WEB_SECRET_KEY", "test-secret-" + "x" * 40)
    client = create_app(components=shadow_on_drift).test_client()
    sign_in(client, "admin")
    page = client.get("/model").get_data(as_text=True)
    assert 'id="shadow-banner"' in page and "no site validation recorded" in page
    assert 'id="site-drift-banner"' not in page
    validate(shadow_on_drift, HIGH_SCORES)
    for n in range(3):
        triage(shadow_on_drift, archive[1], n)
    page = client.get("/model").get_data(as_text=True)
    assert 'id="site-drift-banner"' in page and "fallen back to shadow mode" in page
    assert "site drift fallback" in page
