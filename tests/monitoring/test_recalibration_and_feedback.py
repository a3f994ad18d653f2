"""Threshold recalibration from local labels (item 5) and the export of labelled studies for training (item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from radtriage.app.storage.monitoring_tables import report_labels, result_annotations, threshold_versions
from radtriage.model.datasets import DatabaseLabelledStudies, read_labelled_folder
from radtriage.monitoring.annotations import active_thresholds
from radtriage.monitoring.cli_commands import monitor_group
from radtriage.monitoring.feedback import export_training_set
from radtriage.monitoring.metrics import labelled_cases
from radtriage.monitoring.recalibration import (
    deactivate_local_thresholds,
    recalibrate,
    recalibrated_thresholds,
    store_threshold_version,
)
from radtriage.monitoring.reports import FinalReport
from tests.monitoring.conftest import seed_result


def seed_labelled(stack, scores_and_truth: list[tuple[float, bool]]) -> None:
    for n, (probability, present) in enumerate(scores_and_truth, start=1):
        seed_result(stack, n, {"Pneumonia": probability, "Effusion": 0.1})
        text = "Right lower lobe pneumonia." if present else "No pneumonia."
        stack.monitoring.intake.receive(FinalReport("fhir", f"r{n}", "final", text, accession_number=f"ACC{n}"))


def test_the_new_threshold_is_the_highest_that_reaches_the_target_sensitivity(stack_factory) -> None:
    stack = stack_factory()
    positives = [0.9, 0.8, 0.7, 0.6, 0.35]
    negatives = [0.5, 0.3, 0.2, 0.1, 0.05]
    seed_labelled(stack, [(p, True) for p in positives] + [(p, False) for p in negatives])
    cases = labelled_cases(stack.engine)
    thresholds, details = recalibrated_thresholds(cases, {"Pneumonia": 0.5, "Effusion": 0.4}, 0.8, min_positives=5)
    assert thresholds["Pneumonia"] == pytest.approx(0.6)  # 4 of 5 positives at or above it
    assert details["Pneumonia"]["sensitivity"] == pytest.approx(0.8)
    assert details["Pneumonia"]["specificity"] == pytest.approx(1.0)
    assert thresholds["Effusion"] == 0.4 and details["Effusion"]["kept_current"]  # no positives: unchanged


def test_versions_are_numbered_per_model_and_one_is_active(stack_factory) -> None:
    stack = stack_factory()
    seed_labelled(stack, [(0.9, True), (0.1, False)])
    model = stack.monitoring.manifest().identity
    first = recalibrate(stack.engine, model, {"Pneumonia": 0.5, "Effusion": 0.5}, target_sensitivity=0.9,
                        min_positives=1)
    second = store_threshold_version(stack.engine, model, {"Pneumonia": 0.4, "Effusion": 0.5})
    assert (first.version, second.version) == (1, 2)
    assert active_thresholds(stack.engine, model.sha256) == ("local-2", {"Pneumonia": 0.4, "Effusion": 0.5})
    with stack.engine.connect() as conn:
        rows = conn.execute(select(threshold_versions.c.version, threshold_versions.c.active)).all()
    assert sorted(rows) == [(1, False), (2, True)]
    deactivate_local_thresholds(stack.engine, model.sha256)
    assert active_thresholds(stack.engine, model.sha256) is None
    with pytest.raises(ValueError):
        store_threshold_version(stack.engine, model, {"Pneumonia": 1.5})


def test_scoring_uses_the_active_version_and_records_it(stack_factory, archive) -> None:
    stack = stack_factory()
    manifest = stack.monitoring.manifest()
    before = stack.score(1, uid=archive.chest_uid)
    store_threshold_version(stack.engine, manifest.identity, {label: 0.77 for label in manifest.labels})
    after = stack.score(2, uid=archive.chest_uid)
    service = stack.components.service
    manifest_thresholds = [manifest.thresholds[label] for label in manifest.labels]
    assert [f.threshold for f in service.result(before.id).findings] == manifest_thresholds
    assert {f.threshold for f in service.result(after.id).findings} == {0.77}
    with stack.engine.connect() as conn:
        query = select(result_annotations.c.job_id, result_annotations.c.thresholds_version)
        versions = {row.job_id: row.thresholds_version for row in conn.execute(query)}
    assert versions == {before.id: "manifest", after.id: "local-1"}


def test_labelled_studies_export_for_training(stack_factory, archive, tmp_path: Path) -> None:
    stack = stack_factory()
    job = stack.score(1, uid=archive.chest_uid)
    stack.monitoring.intake.receive(FinalReport("fhir", "r1", "final", "Left pleural effusion. Possible pneumonia.",
                                                accession_number="ACC1"))
    seed_result(stack, 2, {"Pneumonia": 0.1})  # labelled, but its image is not in the archive
    stack.monitoring.intake.receive(FinalReport("fhir", "r2", "final", "Normal chest.", accession_number="ACC2"))
    out = tmp_path / "export"
    summary = export_training_set(stack.engine, stack.components.service.source, out)
    assert (summary.studies, summary.exported, summary.failed) == (2, 1, {"study-not-found": 1})
    images = DatabaseLabelledStudies(stack.engine, out).labelled_images()
    (image,) = images
    assert image.path.is_file() and image.path.read_bytes()[128:132] == b"DICM"
    assert image.labels["Effusion"] == 1.0 and "Pneumonia" not in image.labels  # uncertain: left out
    assert image.abnormal == 1.0
    assert image.image_id == f"radtriage:{archive.chest_uid}" and "p1" not in image.patient_id
    from_csv = read_labelled_folder(out)
    assert len(from_csv) == 1 and from_csv[0].labels["Effusion"] == 1.0
    # Exporting again fetches nothing new.
    again = export_training_set(stack.engine, stack.components.service.source, out)
    assert (again.exported, again.already_there) == (0, 1)
    with stack.engine.connect() as conn:
        paths = {r.image_path for r in conn.execute(select(report_labels).where(report_labels.c.job_id == job.id))}
    assert len(paths) == 1 and paths.pop().startswith("images/")


def test_the_cli_recalibrates(stack_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = stack_factory()
    seed_labelled(stack, [(0.9, True), (0.7, True), (0.2, False)])
    settings = stack.components.settings
    monkeypatch.setenv("RADTRIAGE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RADTRIAGE_HOME", settings.home)
    result = CliRunner().invoke(monitor_group, ["recalibrate", "--min-positives", "2", "--target-sensitivity", "1.0"],
                                obj={"config": None, "verbose": False})
    assert result.exit_code == 0, result.output
    assert "stored and activated local-1" in result.output
    _, thresholds = active_thresholds(stack.engine, stack.monitoring.manifest().weights_sha256)
    assert thresholds["Pneumonia"] == pytest.approx(0.7)
