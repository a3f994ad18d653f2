"""The default model shipped in the package: verified, documented, small, honest about what it cannot assess, and
its input gate refuses what is not an adult frontal chest film."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.model.artefact import read_manifest
from radtriage.model.evaluation.score_files import DEFAULT_MODEL_DIR
from radtriage.model.policy import default_policy
from radtriage.model.scorer import XrvScorer
from tests.support.data import pydicom_data_dir


@pytest.fixture(scope="module")
def default_scorer() -> XrvScorer:
    return XrvScorer.from_artefact(DEFAULT_MODEL_DIR, max_threads=None)  # verifies the SHA-256s


def test_the_default_model_is_a_documented_trained_artefact() -> None:
    manifest = read_manifest(DEFAULT_MODEL_DIR)
    assert not manifest.placeholder
    assert manifest.architecture == "efficientnet-lite0-frozen"
    assert "Pneumonia" in manifest.labels
    assert (DEFAULT_MODEL_DIR / "weights.pt").stat().st_size < 2 * 1024 * 1024  # heads only: keeps the repo sane
    card = (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text()
    assert manifest.weights_sha256 in card
    evaluation = json.loads((DEFAULT_MODEL_DIR / "evaluation.json").read_text())
    for source in ("nih", "covid", "jsrt", "tbx11k-tb"):
        assert source in evaluation["leave_one_source_out"] and source in evaluation["per_source_test"]
    assert {"before", "after"} <= set(evaluation["source_shortcut"])
    assert evaluation["severity"]["images"] == 94
    # The layout the web model page and the drift monitor read: per label, calibration bins on the test split.
    assert all(evaluation["held_out"]["groups"]["all"][label]["calibration"] for label in manifest.labels)
    assert all(entry["licence"] for entry in manifest.training_data)


def test_the_card_and_manifest_name_the_policy_findings_the_model_cannot_assess() -> None:
    manifest = read_manifest(DEFAULT_MODEL_DIR)
    missing = sorted(default_policy().labels_named() - set(manifest.labels))
    assert "Pneumothorax" in missing  # 12 NIH positives: not trainable, so not assessed
    assert manifest.evaluation is not None and manifest.evaluation["policy_findings_not_assessed"] == missing
    card = (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text()
    assert "NOT ASSESSED" in card and all(label in card for label in missing)


def test_operating_points_are_not_below_what_validation_supports() -> None:
    manifest = read_manifest(DEFAULT_MODEL_DIR)
    assert manifest.evaluation is not None
    for label in manifest.labels:
        point = manifest.evaluation["operating_points"][label]
        assert point["specificity"] >= 0.8 - 1e-9 and point["threshold"] == manifest.thresholds[label]


def test_the_default_model_scores_a_real_chest_dicom_with_severity(default_scorer: XrvScorer) -> None:
    dicom = (pydicom_data_dir() / "RG1_J2KI.dcm").read_bytes()  # adult chest CR, PA, from another hospital
    prepared = default_scorer.prepare(dicom)
    findings = default_scorer.score(prepared)
    assert [f.label for f in findings] == list(default_scorer.labels)
    assert all(0.0 <= f.probability <= 1.0 for f in findings)
    severity = default_scorer.severity(prepared)
    assert severity is not None and 0.0 <= severity <= 8.0


def _palette_face() -> np.ndarray:
    import skimage.data

    palette = Image.fromarray(skimage.data.astronaut()).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return np.asarray(palette.convert("L"), dtype=np.float32) / 255.0


@pytest.mark.parametrize("make", [
    lambda: np.random.default_rng(0).random((512, 512), dtype=np.float32),  # white noise
    _palette_face,  # a palette photograph of a face
], ids=["white-noise", "palette-face-photograph"])
def test_the_gate_refuses_noise_and_a_face_photograph(default_scorer: XrvScorer, make: object) -> None:
    with pytest.raises(TriageError) as refused:
        default_scorer.prepare_array(make())  # type: ignore[operator]
    assert refused.value.code in (ErrorCode.OUT_OF_DISTRIBUTION, ErrorCode.IMAGE_QUALITY)


def test_the_gate_refuses_an_inverted_film(default_scorer: XrvScorer) -> None:
    from radtriage.imaging.dicom_pixels import pixels_for_display, read_dataset

    chest = pixels_for_display(read_dataset((pydicom_data_dir() / "RG1_J2KI.dcm").read_bytes()))
    with pytest.raises(TriageError) as refused:
        default_scorer.prepare_array(1.0 - chest)
    assert refused.value.code in (ErrorCode.IMAGE_QUALITY, ErrorCode.OUT_OF_DISTRIBUTION)


@pytest.mark.shared_data
def test_other_hospitals_normal_films_are_mostly_not_urgent(default_scorer: XrvScorer, shared_data: Path) -> None:
    """JSRT non-nodule films (Japan, scanned film): a bounded sample through the real scorer and default policy."""
    import csv

    from radtriage.app.core.domain import Priority
    from radtriage.imaging.dicom_pixels import load_image_file

    folder = shared_data / "cxr" / "jsrt"
    with (folder / "labels.csv").open() as fh:
        normals = [row["image"] for row in csv.DictReader(fh) if row["Nodule"] == "0"][:30]
    policy, urgent, analysed = default_policy(), 0, 0
    for name in normals:
        try:
            prepared = default_scorer.prepare_array(load_image_file(folder / name))
        except TriageError:
            continue
        analysed += 1
        urgent += policy.decide(default_scorer.score(prepared), Priority.ROUTINE)[0] >= Priority.URGENT
    assert analysed >= 27  # the gate keeps adult frontal films from a hospital in the training data
    assert urgent / analysed < 0.3  # the previous model's failure mode was "everything urgent"
