"""The default model shipped in the package: verified, documented, small, and it scores real radiographs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radtriage.model.artefact import read_manifest
from radtriage.model.evaluation.score_files import DEFAULT_MODEL_DIR
from radtriage.model.scorer import XrvScorer
from tests.support.data import pydicom_data_dir


@pytest.fixture(scope="module")
def default_scorer() -> XrvScorer:
    return XrvScorer.from_artefact(DEFAULT_MODEL_DIR, max_threads=None)  # verifies the SHA-256


def test_the_default_model_is_a_documented_trained_artefact() -> None:
    manifest = read_manifest(DEFAULT_MODEL_DIR)
    assert not manifest.placeholder
    assert manifest.architecture == "efficientnet-lite0"
    assert "Pneumonia" in manifest.labels
    assert (DEFAULT_MODEL_DIR / "weights.pt").stat().st_size < 20 * 1024 * 1024
    card = (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text()
    assert manifest.weights_sha256 in card
    evaluation = json.loads((DEFAULT_MODEL_DIR / "evaluation.json").read_text())
    assert "source=nih" in evaluation["held_out"]["groups"]
    assert all(entry["licence"] for entry in manifest.training_data)


def test_the_default_model_scores_a_real_chest_dicom(default_scorer: XrvScorer) -> None:
    dicom = (pydicom_data_dir() / "RG1_J2KI.dcm").read_bytes()  # adult chest CR, PA
    findings = default_scorer.score(default_scorer.prepare(dicom))
    assert [f.label for f in findings] == list(default_scorer.labels)
    assert all(0.0 <= f.probability <= 1.0 for f in findings)


@pytest.mark.shared_data
def test_the_default_model_separates_held_out_pneumonia_from_normal(default_scorer: XrvScorer,
                                                                    shared_data: Path) -> None:
    """Scores a handful of NIH test-split images (patients the model never saw) and checks the ranking."""
    import csv

    from radtriage.imaging.dicom_pixels import load_image_file

    with (DEFAULT_MODEL_DIR / "split.csv").open() as fh:
        test_ids = [row["image_id"] for row in csv.DictReader(fh) if row["split"] == "test" and row["source"] == "nih"]
    with (shared_data / "cxr" / "nih" / "labels.csv").open() as fh:
        truth = {f"nih:{row['image']}": row["Pneumonia"] == "1" for row in csv.DictReader(fh)}
    from radtriage.app.core.errors import TriageError

    def prepared(ids: list[str]) -> list:
        """The analysable ones: the out-of-distribution gate turns away a few per cent of real films."""
        kept = []
        for image_id in ids:
            try:
                image = load_image_file(shared_data / "cxr" / "nih" / image_id.split(":", 1)[1])
                kept.append(default_scorer.prepare_array(image))
            except TriageError:
                pass
        return kept

    sick, well = prepared([i for i in test_ids if truth[i]][:10]), prepared([i for i in test_ids if not truth[i]][:10])
    assert len(sick) + len(well) >= 18
    index = default_scorer.labels.index("Pneumonia")
    positives = [f[index].probability for f in default_scorer.score_batch(sick)]
    negatives = [f[index].probability for f in default_scorer.score_batch(well)]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    assert wins / (len(positives) * len(negatives)) > 0.6  # AUROC here; the held-out figure is in evaluation.json
