"""Heatmaps are made by the worker, for the positive findings only, and stored with the result."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from radtriage.app.config import load_settings
from radtriage.app.core.domain import ImagingOrder, JobState
from radtriage.app.factory import build_components
from tests.support.data import pydicom_data_dir
from tests.support.models import flagging_default_model

RG1_STUDY = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"

pytestmark = pytest.mark.slow


@pytest.fixture
def components(tmp_path: Path):
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(pydicom_data_dir() / "RG1_J2KI.dcm", studies)
    model = str(flagging_default_model(tmp_path))  # the shipped model, flagging: there is something to explain
    built = build_components(load_settings(env={}, home=str(tmp_path), study_folder=str(studies), model=model))
    built.start()
    yield built
    built.close()


def order() -> ImagingOrder:
    return ImagingOrder(study_instance_uid=RG1_STUDY, patient_ref="Patient/h1", source="fhir", source_key="h1")


def test_each_positive_finding_gets_a_stored_overlay(components) -> None:
    _, job, _ = components.service.submit_order(order())
    assert components.queue.wait_idle(timeout=120)
    result = components.store.get_result(job.id)
    positives = [f.label for f in result.findings if f.positive]
    assert positives, "the flagging model flags every film; without a positive finding this test checks nothing"
    assert components.store.heatmap_labels(job.id) == positives
    for label in positives:
        picture = Image.open(io.BytesIO(components.store.heatmap_png(job.id, label)))
        assert picture.format == "PNG" and picture.mode == "RGB" and picture.size == (512, 512)
    negatives = [f.label for f in result.findings if not f.positive]
    assert all(components.store.heatmap_png(job.id, label) is None for label in negatives)


def test_a_failing_explanation_does_not_cost_the_study_its_triage(components, monkeypatch) -> None:
    scorer = components.service.scorer

    def broken(*_args, **_kwargs):
        raise RuntimeError("no gradients today")

    monkeypatch.setattr(scorer, "explain", broken)
    _, job, _ = components.service.submit_order(order())
    assert components.queue.wait_idle(timeout=120)
    assert components.store.get_job(job.id).state is JobState.COMPLETED
    assert components.store.get_result(job.id) is not None
    assert components.store.heatmap_labels(job.id) == []
