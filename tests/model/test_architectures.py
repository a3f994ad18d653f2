"""Networks through torchxrayvision's own classes, and import of torchxrayvision's published weight files.

The published files cannot be downloaded here, so the tests make stand-ins in the same format: a randomly
initialised ``xrv.models.DenseNet`` saved whole with ``torch.save(model, path)``, in both PyTorch's current zip
format and the legacy format of files written before PyTorch 1.6.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.model import architectures
from radtriage.model._xrv import import_xrv
from radtriage.model.architectures import (
    build_network,
    import_xrv_published_weights,
    load_network,
    load_xrv_published_weights,
)
from radtriage.model.artefact import read_manifest
from radtriage.model.placeholder import placeholder_manifest
from radtriage.model.scorer import XrvScorer

xrv = import_xrv()


@pytest.fixture(scope="module")
def published_model() -> torch.nn.Module:
    """What torchxrayvision publishes: an 18-output DenseNet (random weights here) with non-trivial batch norm."""
    torch.manual_seed(7)
    model = xrv.models.DenseNet(num_classes=18)
    with torch.no_grad():  # make the running statistics non-default so a lost buffer would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module", params=["zip", "legacy"])
def published_file(request: pytest.FixtureRequest, published_model: torch.nn.Module, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("xrv") / f"densenet121-{request.param}.pt"
    torch.save(published_model, path, _use_new_zipfile_serialization=request.param == "zip")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_network_uses_torchxrayvision_densenet_with_one_logit_per_label() -> None:
    manifest = placeholder_manifest()
    network = build_network(manifest).eval()
    assert isinstance(network, xrv.models.DenseNet)
    assert network.targets == list(manifest.labels)
    with torch.no_grad():
        out = network(torch.zeros(2, 1, 64, 64))
    assert out.shape == (2, len(manifest.labels))
    assert not network.apply_sigmoid and network.op_threshs is None  # raw logits; the scorer applies sigmoid


def test_unknown_and_planned_architectures_are_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = dataclasses.replace(placeholder_manifest(), architecture="resnet-9000")
    with pytest.raises(TriageError) as caught:
        build_network(manifest)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "unknown architecture 'resnet-9000'" in caught.value.detail

    monkeypatch.setattr(architectures, "PLANNED_ARCHITECTURES", frozenset({"resnet-9000"}))
    with pytest.raises(TriageError, match="planned but not implemented"):
        build_network(manifest)


def test_weights_that_do_not_fit_the_manifest_are_refused() -> None:
    manifest = placeholder_manifest()
    fewer_labels = xrv.models.DenseNet(num_classes=3).state_dict()
    with pytest.raises(TriageError) as caught:
        load_network(manifest, fewer_labels)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "do not fit" in caught.value.detail


def test_load_network_is_frozen_and_in_eval_mode() -> None:
    manifest = placeholder_manifest()
    network = load_network(manifest, build_network(manifest).state_dict())
    assert not network.training
    assert not any(p.requires_grad for p in network.parameters())


# ------------------------------------------------------------------------------------ published weights


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything reaches torchxrayvision's download path."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torchxrayvision's download path was used")

    monkeypatch.setattr(xrv.models, "get_weights", refuse)
    monkeypatch.setattr(xrv.utils, "download", refuse)


def test_a_published_file_loads_as_the_same_state_dict(
    published_file: Path, published_model: torch.nn.Module, no_downloads: None
) -> None:
    state = load_xrv_published_weights(published_file, "densenet121-res224-all")
    expected = published_model.state_dict()
    assert state.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor), key


def test_importing_a_published_file_gives_an_artefact_that_scores_like_the_original(
    published_file: Path, published_model: torch.nn.Module, tmp_path: Path, no_downloads: None
) -> None:
    # "chex" leaves seven of the 18 outputs untrained (empty labels): the artefact must keep the right rows.
    spec = xrv.models.model_urls["densenet121-res224-chex"]
    manifest = import_xrv_published_weights(
        published_file,
        tmp_path / "chex",
        expected_sha256=sha256(published_file),
        weights_name="densenet121-res224-chex",
    )
    kept = [i for i, label in enumerate(spec["labels"]) if label]
    assert list(manifest.labels) == [spec["labels"][i] for i in kept]
    assert manifest.thresholds == {spec["labels"][i]: pytest.approx(spec["op_threshs"][i]) for i in kept}
    assert manifest.input_size == 224 and not manifest.placeholder
    assert read_manifest(tmp_path / "chex") == manifest

    scorer = XrvScorer.from_artefact(tmp_path / "chex", max_threads=None)
    image = np.random.default_rng(3).random((240, 200)).astype(np.float32)
    prepared = scorer.prepare_array(image)
    findings = scorer.score(prepared)
    with torch.no_grad():
        reference = torch.sigmoid(published_model(torch.from_numpy(prepared.pixels[None])))[0].numpy()
    assert [f.label for f in findings] == list(manifest.labels)
    np.testing.assert_allclose([f.probability for f in findings], reference[kept], rtol=1e-4, atol=1e-6)
    assert [f.threshold for f in findings] == [manifest.thresholds[label] for label in manifest.labels]


def test_a_published_file_with_the_wrong_checksum_is_refused_before_loading(
    published_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(TriageError) as caught:
        import_xrv_published_weights(published_file, tmp_path / "x", expected_sha256="ab" * 32)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "abababababab" in caught.value.detail and sha256(published_file)[:12] in caught.value.detail
    assert not (tmp_path / "x").exists()


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_published_file_that_would_run_code_is_refused(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model.payload = _RunsCodeWhenUnpickled(marker)  # type: ignore[assignment]
    torch.save(model, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(TriageError) as caught:
        import_xrv_published_weights(path, tmp_path / "x", expected_sha256=sha256(path))
    assert "io.open" in caught.value.detail
    assert not marker.exists() and not (tmp_path / "x").exists()


def test_a_file_holding_another_network_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), path)
    with pytest.raises(TriageError, match="does not fit"):
        load_xrv_published_weights(path)
    with pytest.raises(TriageError, match="cannot read"):
        load_xrv_published_weights(tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="unsupported torchxrayvision weights"):
        load_xrv_published_weights(path, "resnet50-res512-all")


def test_a_plain_state_dict_file_is_accepted_too(published_model: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    torch.save(published_model.state_dict(), path)
    state = load_xrv_published_weights(path)
    assert torch.equal(state["classifier.weight"], published_model.state_dict()["classifier.weight"])
