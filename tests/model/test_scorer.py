"""XrvScorer end to end on real DICOM files: decode, check, preprocess, score, explain."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.imaging.dicom_pixels import load_image_file
from radtriage.model.architectures import build_network
from radtriage.model.artefact import read_manifest, write_artefact
from radtriage.model.placeholder import PLACEHOLDER_PROBABILITY, placeholder_manifest
from radtriage.model.scorer import XrvPreparedImage, XrvScorer
from tests.support.data import pydicom_data_dir


def dicom_bytes(name: str) -> bytes:
    return (pydicom_data_dir() / name).read_bytes()


@pytest.fixture(scope="module")
def chest_image(placeholder_scorer: XrvScorer) -> XrvPreparedImage:
    return placeholder_scorer.prepare(dicom_bytes("RG1_J2KI.dcm"))


def random_model_artefact(dest: Path, *, seed: int, head_scale: float = 1e-3, bias: float = 0.0) -> Path:
    """A non-placeholder model whose scores depend on the image: random features, a damped classifier head."""
    manifest = dataclasses.replace(placeholder_manifest(), name="random-test-model", placeholder=False)
    torch.manual_seed(seed)
    state = build_network(manifest).state_dict()
    state["classifier.weight"] = state["classifier.weight"] * head_scale
    state["classifier.bias"] = torch.full_like(state["classifier.bias"], bias)
    write_artefact(dest, manifest, state)
    return dest


@pytest.fixture(scope="module")
def random_scorer(tmp_path_factory: pytest.TempPathFactory) -> XrvScorer:
    directory = random_model_artefact(tmp_path_factory.mktemp("random") / "m", seed=5)
    return XrvScorer.from_artefact(directory, max_threads=None, batch_size=2)


def test_identity_is_the_placeholder_artefact(placeholder_scorer: XrvScorer, placeholder_dir: Path) -> None:
    identity = placeholder_scorer.identity
    manifest = read_manifest(placeholder_dir)
    assert identity.placeholder is True
    assert identity.name == manifest.name and identity.version == manifest.version
    assert identity.sha256 == manifest.weights_sha256


def test_a_jpeg2000_chest_radiograph_is_scored(placeholder_scorer: XrvScorer, chest_image: XrvPreparedImage) -> None:
    assert chest_image.pixels.shape == (1, 224, 224)
    assert chest_image.pixels.dtype == np.float32
    assert -1024 <= chest_image.pixels.min() < chest_image.pixels.max() <= 1024
    findings = placeholder_scorer.score(chest_image)
    assert [f.label for f in findings] == list(placeholder_scorer.labels)
    assert all(0.0 <= f.probability <= 1.0 for f in findings)
    assert all(f.threshold == 0.5 for f in findings)
    # The placeholder gives every label the same low probability: it never reports a finding.
    assert all(f.probability == pytest.approx(PLACEHOLDER_PROBABILITY) and not f.positive for f in findings)


def test_scores_depend_on_the_pixels(random_scorer: XrvScorer) -> None:
    prepared = random_scorer.prepare(dicom_bytes("RG1_J2KI.dcm"))
    flipped = XrvPreparedImage(pixels=np.ascontiguousarray(prepared.pixels[:, ::-1, :]), size=prepared.size)
    upright = [f.probability for f in random_scorer.score(prepared)]
    upside_down = [f.probability for f in random_scorer.score(flipped)]
    assert not np.allclose(upright, upside_down, atol=1e-4)
    assert upright == [f.probability for f in random_scorer.score(prepared)]  # deterministic


def lateral_view_of_rg1() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes("RG1_J2KI.dcm")))
    ds.ViewPosition = "LL"
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("make_bytes", "code"),
    [
        (lambda: dicom_bytes("RG3_J2KI.dcm"), ErrorCode.NOT_A_CHEST),
        (lambda: dicom_bytes("MR2_J2KI.dcm"), ErrorCode.NOT_A_RADIOGRAPH),
        (lateral_view_of_rg1, ErrorCode.LATERAL_ONLY),
        (lambda: b"not a DICOM file at all", ErrorCode.UNREADABLE_IMAGE),
    ],
    ids=["extremity", "mr", "lateral", "garbage"],
)
def test_studies_that_are_not_frontal_chest_radiographs_are_refused(
    placeholder_scorer: XrvScorer, make_bytes, code: ErrorCode
) -> None:
    with pytest.raises(TriageError) as caught:
        placeholder_scorer.prepare(make_bytes())
    assert caught.value.code is code
    assert not caught.value.retryable


def test_a_batch_scores_like_single_images_in_order(random_scorer: XrvScorer) -> None:
    rng = np.random.default_rng(11)
    images = [random_scorer.prepare_array(rng.random((120, 100))) for _ in range(3)]
    batch = [images[0], images[1], images[2], images[0], images[1]]  # batch_size 2: three forward passes
    together = random_scorer.score_batch(batch)
    assert len(together) == len(batch)
    for image, scored in zip(batch, together, strict=True):
        alone = random_scorer.score(image)
        assert [f.label for f in scored] == [f.label for f in alone]
        np.testing.assert_allclose([f.probability for f in scored], [f.probability for f in alone], atol=1e-5)
    assert random_scorer.score_batch([]) == []


def test_non_dicom_images_are_prepared_through_the_same_preprocessing(random_scorer: XrvScorer) -> None:
    image = np.random.default_rng(2).random((300, 250))
    prepared = random_scorer.prepare_array(image)
    assert prepared.pixels.shape == (1, 224, 224)
    with pytest.raises(TriageError) as caught:
        random_scorer.prepare_array(np.full((10, 10), np.nan))
    assert caught.value.code is ErrorCode.UNREADABLE_IMAGE


def test_images_not_prepared_for_this_model_are_a_programming_error(random_scorer: XrvScorer) -> None:
    with pytest.raises(TypeError):
        random_scorer.score(np.zeros((1, 224, 224), dtype=np.float32))
    with pytest.raises(ValueError, match="224"):
        random_scorer.score(XrvPreparedImage(pixels=np.zeros((1, 64, 64), dtype=np.float32), size=64))
    with pytest.raises(ValueError, match="xrv-v0"):
        random_scorer.score(
            XrvPreparedImage(pixels=np.zeros((1, 224, 224), np.float32), size=224, preprocessing_version="xrv-v0")
        )


def test_a_model_producing_non_finite_scores_is_unavailable_not_guessed(tmp_path: Path) -> None:
    directory = random_model_artefact(tmp_path / "nan", seed=1, bias=float("nan"))
    scorer = XrvScorer.from_artefact(directory, max_threads=None)
    with pytest.raises(TriageError) as caught:
        scorer.score(scorer.prepare_array(np.random.default_rng(0).random((64, 64))))
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE


def test_from_artefact_caps_torch_threads(placeholder_dir: Path) -> None:
    before = torch.get_num_threads()
    try:
        XrvScorer.from_artefact(placeholder_dir, max_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------ Grad-CAM


def reference_class_activation_map(scorer: XrvScorer, image: XrvPreparedImage, label: str) -> np.ndarray:
    """Grad-CAM worked out by hand for torchxrayvision's DenseNet head, logit = W . mean(M) + b with M = relu(A).

    d logit / d M[c, i, j] = W[k, c] / (h * w) everywhere, so Grad-CAM's channel weights are W[k, c] / (h * w) and
    the map is relu(sum_c W[k, c] * M[c]) up to scale: the class activation map of Zhou et al. (2016).
    """
    network = scorer._network
    k = scorer.labels.index(label)
    with torch.no_grad():
        maps = F.relu(network.features(torch.from_numpy(image.pixels[None])))[0]  # (C, h, w)
        cam = F.relu((network.classifier.weight[k][:, None, None] * maps).sum(0))
        cam = F.interpolate(cam[None, None], size=(image.size, image.size), mode="bilinear", align_corners=False)[0, 0]
    return (cam / cam.max()).numpy()


def test_the_grad_cam_forward_pass_is_the_network_forward_pass(random_scorer: XrvScorer) -> None:
    x = torch.from_numpy(random_scorer.prepare_array(np.random.default_rng(8).random((90, 90))).pixels[None])
    with torch.no_grad():
        _, logits = random_scorer._cam_forward(random_scorer._network, x)
        torch.testing.assert_close(logits, random_scorer._network(x))


def test_heatmap_is_grad_cam_over_the_last_feature_maps(random_scorer: XrvScorer) -> None:
    image = random_scorer.prepare(dicom_bytes("RG1_J2KI.dcm"))
    heatmap = random_scorer.heatmap(image, "Effusion")
    assert heatmap.shape == (224, 224) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0)
    np.testing.assert_allclose(heatmap, reference_class_activation_map(random_scorer, image, "Effusion"), atol=1e-4)
    other = random_scorer.heatmap(image, "Cardiomegaly")
    assert not np.allclose(heatmap, other, atol=1e-3)  # each label has its own map


def test_heatmap_leaves_the_network_as_it_was(random_scorer: XrvScorer) -> None:
    image = random_scorer.prepare_array(np.random.default_rng(4).random((64, 64)))
    before = random_scorer.score(image)
    random_scorer.heatmap(image, "Pneumothorax")
    assert all(p.grad is None and not p.requires_grad for p in random_scorer._network.parameters())
    assert random_scorer.score(image) == before
    with pytest.raises(ValueError, match="not one of this model's labels"):
        random_scorer.heatmap(image, "Broken heart")


def test_the_placeholder_heatmap_is_empty(placeholder_scorer: XrvScorer, chest_image: XrvPreparedImage) -> None:
    # Its classifier ignores the image, so nothing in the image raised any logit.
    assert not placeholder_scorer.heatmap(chest_image, "Pneumothorax").any()


# ------------------------------------------------------------------------------------ real images


def test_real_png_and_jpeg_chest_images_are_scored(random_scorer: XrvScorer, shared_data: Path) -> None:
    pictures = [next((shared_data / "cxr" / "nih" / "images").glob("*.png"))]
    pictures.append(next((shared_data / "cxr" / "covid" / "images").glob("*.jpg")))
    for picture in pictures:
        findings = random_scorer.score(random_scorer.prepare_array(load_image_file(picture)))
        assert len(findings) == len(random_scorer.labels)
        assert all(0.0 <= f.probability <= 1.0 for f in findings)
