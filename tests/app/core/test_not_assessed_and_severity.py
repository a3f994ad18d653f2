"""Issue 10: findings the policy names but the model cannot assess, and severity, through the real service and
store (SQLite and PostgreSQL), the untrained placeholder model and a folder archive of a pydicom-data chest CR."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from radtriage.app.config import Settings
from radtriage.app.core.domain import ImagingOrder, JobState, Priority
from radtriage.app.core.ports import PreparedImage
from radtriage.app.factory import Components, build_components
from radtriage.compliance.audit import FINDINGS_NOT_ASSESSED
from radtriage.imaging.folder_source import FolderStudySource
from radtriage.model.placeholder import ensure_placeholder
from radtriage.model.scorer import XrvScorer
from tests.support.data import pydicom_data_dir

#: A site policy: a rule for a finding the placeholder model has (Effusion) and two it has no output for.
POLICY = """
name = "site"
[[rules]]
findings = ["Tuberculosis", "Pneumothorax"]
priority = "stat"
[[rules]]
findings = ["Effusion", "Covid-19"]
priority = "urgent"
"""


class SeverityScorer(XrvScorer):
    """The placeholder with a severity output: a fixed function of the prepared pixels (0..8), so that the value
    the service stores can be checked against the image it scored. The shipped model's severity head is issue
    10's model part; this stands in for its output only."""

    def severity(self, image: PreparedImage) -> float | None:
        pixels = np.asarray(image.pixels, dtype=np.float64)  # type: ignore[attr-defined]
        return float(np.clip((pixels.mean() + 1024.0) / 2048.0 * 8.0, 0.0, 8.0))


@pytest.fixture(scope="module")
def placeholder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_placeholder(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("archive")
    shutil.copy(pydicom_data_dir() / "RG1_J2KI.dcm", root / "RG1_J2KI.dcm")
    return root, str(dcmread(root / "RG1_J2KI.dcm", stop_before_pixels=True).StudyInstanceUID)


def build(tmp_path: Path, database_url: str, archive: tuple[Path, str], scorer: XrvScorer) -> Components:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")
    settings = Settings(home=str(tmp_path), database_url=database_url, policy=str(policy), shadow_mode="off")
    return build_components(settings, scorer_factory=lambda: scorer, study_source=FolderStudySource(archive[0]))


def audit_details(components: Components, kind: str) -> list[dict[str, str]]:
    """The details of every audit record of `kind`, oldest first."""
    events, _ = components.audit.search(limit=1000)
    return [
        {d["type"]: d["valueString"] for e in event.resource().get("entity", []) for d in e.get("detail", [])}
        for event in reversed(events)
        if event.kind == kind
    ]


def order(uid: str, n: int = 1, priority: Priority = Priority.ROUTINE) -> ImagingOrder:
    return ImagingOrder(
        study_instance_uid=uid, patient_ref="Patient/p1", source="fhir", source_key=f"ImagingStudy/s{n}",
        requested_priority=priority,
    )  # fmt: skip


def test_not_assessed_and_severity_are_computed_stored_and_read_back(
    tmp_path: Path, database_url: str, archive: tuple[Path, str], placeholder_path: Path
) -> None:
    scorer = SeverityScorer.from_artefact(placeholder_path, max_threads=None)
    components = build(tmp_path, database_url, archive, scorer)
    try:
        _, job, _ = components.service.submit_order(order(archive[1]))
        done = components.service.run_job(job.id)
        assert done.state is JobState.COMPLETED
        result = components.store.get_result(job.id)
        assert result is not None
        # Policy findings minus the model's labels: the placeholder has Effusion and Pneumothorax.
        assert result.not_assessed == ("Covid-19", "Tuberculosis")
        assert set(result.not_assessed).isdisjoint(f.label for f in result.findings)
        image = scorer.prepare((archive[0] / "RG1_J2KI.dcm").read_bytes())
        assert result.severity == pytest.approx(scorer.severity(image))
        assert 0.0 <= result.severity <= 8.0
    finally:
        components.close()


def test_a_model_without_a_severity_output_stores_none(
    tmp_path: Path, database_url: str, archive: tuple[Path, str], placeholder_path: Path
) -> None:
    components = build(tmp_path, database_url, archive, XrvScorer.from_artefact(placeholder_path, max_threads=None))
    try:
        _, job, _ = components.service.submit_order(order(archive[1]))
        components.service.run_job(job.id)
        result = components.store.get_result(job.id)
        assert result is not None and result.severity is None
        assert result.not_assessed == ("Covid-19", "Tuberculosis")
    finally:
        components.close()


def test_a_failing_severity_never_costs_the_study_its_triage(
    tmp_path: Path, archive: tuple[Path, str], placeholder_path: Path
) -> None:
    class BrokenSeverity(XrvScorer):
        def severity(self, image: PreparedImage) -> float | None:
            raise RuntimeError("severity head exploded")

    scorer = BrokenSeverity.from_artefact(placeholder_path, max_threads=None)
    components = build(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}", archive, scorer)
    try:
        _, job, _ = components.service.submit_order(order(archive[1]))
        assert components.service.run_job(job.id).state is JobState.COMPLETED
        assert components.store.get_result(job.id).severity is None  # type: ignore[union-attr]
    finally:
        components.close()


def test_start_up_warns_and_audits_when_the_policy_names_findings_the_model_lacks(
    tmp_path: Path, archive: tuple[Path, str], placeholder_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scorer = XrvScorer.from_artefact(placeholder_path, max_threads=None)
    components = build(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}", archive, scorer)
    with caplog.at_level(logging.WARNING, logger="radtriage.app.factory"):
        components.start()
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("CANNOT ASSESS" in w and "Covid-19, Tuberculosis" in w for w in warnings), warnings
        audited = audit_details(components, FINDINGS_NOT_ASSESSED.code)
        assert len(audited) == 1
        assert audited[0]["not-assessed"] == "Covid-19, Tuberculosis"
        assert audited[0]["model-sha256"] == scorer.identity.sha256
    finally:
        components.close()


def test_the_shipped_model_and_default_policy_report_pneumothorax_not_assessed(tmp_path: Path) -> None:
    """The product as shipped: the default policy's STAT rule is for a finding the shipped model lacks."""
    from radtriage.model.policy import default_policy
    from radtriage.model.registry import SHIPPED_DEFAULT

    scorer = XrvScorer.from_artefact(SHIPPED_DEFAULT, max_threads=None)
    if "Pneumothorax" in scorer.labels:
        pytest.skip("the shipped model now assesses Pneumothorax")
    missing = default_policy().labels_named() - set(scorer.labels)
    assert "Pneumothorax" in missing


def test_the_worklist_orders_by_priority_then_severity_then_waiting_time(
    tmp_path: Path, database_url: str, archive: tuple[Path, str], placeholder_path: Path
) -> None:
    """Four studies of one image: severity is set per study by a scorer that reads it from a queue."""
    severities = iter([2.0, 6.0, None, 6.0])

    class Queued(XrvScorer):
        def severity(self, image: PreparedImage) -> float | None:
            return next(severities)

    components = build(tmp_path, database_url, archive, Queued.from_artefact(placeholder_path, max_threads=None))
    try:
        ids = []
        for n in range(4):
            _, job, _ = components.service.submit_order(order(archive[1], n))
            components.service.run_job(job.id)
            ids.append(job.id)
        # An urgent order (no severity yet: not scored) goes above every routine one.
        _, urgent, _ = components.service.submit_order(order(archive[1], 9, Priority.URGENT))
        listed, total = components.store.list_jobs()
        assert total == 5
        # routine: severity 6.0 (older), 6.0 (newer), 2.0, then the one without a severity.
        assert [j.id for j in listed] == [urgent.id, ids[1], ids[3], ids[0], ids[2]]
    finally:
        components.close()
