"""The frozen-backbone architecture as an artefact: heads-only weights, the scorer's gate, severity, Grad-CAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.imaging.dicom_pixels import pixels_for_display, read_dataset
from radtriage.model.artefact import ModelManifest, write_artefact
from radtriage.model.networks.frozen_triage import FrozenTriageNetwork, cam_forward
from radtriage.model.preprocessing import PREPROCESSING_VERSION
from radtriage.model.scorer import XrvScorer
from tests.support.data import pydicom_data_dir

LABELS = ("Pneumonia", "Lung Opacity")


def _artefact(root: Path, name: str, **buffers: torch.Tensor) -> Path:
    torch.manual_seed(0)
    network = FrozenTriageNetwork(len(LABELS))
    state = network.state_dict()
    state["severity.bias"] = torch.tensor([3.0])
    state.update(buffers)
    manifest = ModelManifest(
        name="test-frozen", version=name, architecture="efficientnet-lite0-frozen", labels=LABELS,
        thresholds={"Pneumonia": 0.5, "Lung Opacity": 0.5}, input_size=224, preprocessing_version=PREPROCESSING_VERSION,
        intended_use="tests", limitations=["tests"], training_data=[{"name": "none", "licence": "none"}],
    )
    write_artefact(root / name, manifest, state)
    return root / name


@pytest.fixture(scope="module")
def chest() -> np.ndarray:
    return pixels_for_display(read_dataset((pydicom_data_dir() / "RG1_J2KI.dcm").read_bytes()))


def test_weights_hold_the_heads_only_and_refuse_backbone_tensors(tmp_path: Path) -> None:
    network = FrozenTriageNetwork(2)
    state = network.state_dict()
    assert state and not any(key.startswith("backbone.") for key in state)
    assert sum(t.numel() for t in state.values()) < 100_000  # a few hundred kilobytes, not the 13 MB backbone
    with pytest.raises(RuntimeError, match="backbone"):
        network.load_state_dict({**state, "backbone.stem.conv.weight": torch.zeros(32, 1, 3, 3)})
    path = _artefact(tmp_path, "v1")
    assert (path / "weights.pt").stat().st_size < 1024 * 1024


def test_an_artefact_without_the_inverted_detector_loads_with_it_disabled() -> None:
    network = FrozenTriageNetwork(2)
    state = {k: v for k, v in network.state_dict().items() if not k.startswith("inverted_")}
    network.load_state_dict(state)
    assert float(network.inverted_probability(torch.ones(1, 64 * 64))[0]) < 1e-6


def test_scorer_gates_scores_and_grades_severity_from_one_backbone_pass(tmp_path: Path, chest: np.ndarray) -> None:
    scorer = XrvScorer.from_artefact(_artefact(tmp_path, "v1"), max_threads=None)
    prepared = scorer.prepare_array(chest)
    assert prepared.features is not None and prepared.features.shape == (1280,)
    findings = scorer.score(prepared)
    assert [f.label for f in findings] == list(LABELS)
    with torch.inference_mode():  # the cached features give what a full forward pass gives
        full = torch.sigmoid(scorer._network(torch.from_numpy(prepared.pixels[None]))).numpy()[0]
    np.testing.assert_allclose([f.probability for f in findings], full, rtol=1e-4, atol=1e-5)
    severity = scorer.severity(prepared)
    assert severity is not None and 0.0 <= severity <= 8.0
    heatmap = scorer.heatmap(prepared, "Pneumonia")
    assert heatmap.shape == (224, 224) and 0.0 <= heatmap.min() and heatmap.max() <= 1.0


def test_cam_forward_matches_the_network(tmp_path: Path, chest: np.ndarray) -> None:
    scorer = XrvScorer.from_artefact(_artefact(tmp_path, "v1"), max_threads=None)
    x = torch.from_numpy(scorer.prepare_array(chest).pixels[None])
    with torch.inference_mode():
        maps, logits = cam_forward(scorer._network, x)
        assert maps.shape[1] == 1280
        torch.testing.assert_close(logits, scorer._network(x))


@pytest.mark.parametrize(("buffers", "code"), [
    ({"gate_limits": torch.tensor([0.0, 0.0])}, ErrorCode.OUT_OF_DISTRIBUTION),
    ({"child_limit": torch.tensor(0.0)}, ErrorCode.OUTSIDE_INTENDED_USE),
    ({"inverted_bias": torch.tensor(50.0)}, ErrorCode.IMAGE_QUALITY),
])
def test_the_artefact_gate_refuses_with_its_reason(tmp_path: Path, chest: np.ndarray, buffers: dict,
                                                   code: ErrorCode) -> None:
    scorer = XrvScorer.from_artefact(_artefact(tmp_path, "gated", **buffers), max_threads=None)
    with pytest.raises(TriageError) as refused:
        scorer.prepare_array(chest)
    assert refused.value.code is code
