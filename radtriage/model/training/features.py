"""Frozen-backbone features, computed once per image and variant and cached, so that every later step is cheap.

The triage model is a frozen ImageNet EfficientNet-Lite0 (`radtriage.model.networks.efficientnet_lite0`) and small
heads on its pooled 1280-channel features. Only the heads are trained, so the network's expensive part runs once per
image and *variant* (the image as the shared preprocessing gives it, or an acquisition-chain augmented copy of it)
and the result is cached under ``var/`` as one ``.npz`` per variant. Training the shipped model, the four
leave-one-source-out models, the calibration, the gates and the severity head then take seconds each.

The cache key holds the preprocessing version, the variant and every image's path, size and modification time: a
changed image or another preprocessing never reuses stale features.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from tqdm import tqdm

from ..datasets import DatasetError, LabelledImage
from ..networks.efficientnet_lite0 import EfficientNetLite0, pretrained_efficientnet_lite0
from ..ood import shrink
from ..preprocessing import PREPROCESSING_VERSION, to_model_input
from .acquisition import acquisition_augment, equalise

CLEAN: Final = "clean"
#: Histogram-equalised before preprocessing (a site normalisation that was measured; see the model card).
EQUALISED: Final = "equalised"
FEATURE_SIZE: Final = 1280
Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class FeatureSet:
    """Features of `image_ids` (rows in the same order) for one variant; `thumbs` are the 64x64 OOD vectors."""

    variant: str
    image_ids: tuple[str, ...]
    features: Floats  # (N, 1280)
    thumbs: Floats | None  # (N, 4096) for the clean variant only
    seconds: float


def backbone() -> EfficientNetLite0:
    """The frozen ImageNet EfficientNet-Lite0 (eval mode, no gradients)."""
    network = pretrained_efficientnet_lite0(1)
    network.eval()
    network.requires_grad_(False)
    return network


def pooled_features(network: EfficientNetLite0, batch: torch.Tensor) -> torch.Tensor:
    """(N, 1280): the head's feature maps averaged over space, as the classifier sees them."""
    with torch.inference_mode():
        return torch.flatten(F.adaptive_avg_pool2d(network.features(batch), 1), 1)


def _key(images: Sequence[LabelledImage], variant: str, size: int) -> str:
    digest = hashlib.sha256(f"{PREPROCESSING_VERSION}|{size}|{variant}".encode())
    for image in images:
        stat = image.path.stat()
        digest.update(f"|{image.image_id}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _variant_seed(variant: str) -> int:
    return int.from_bytes(hashlib.sha256(variant.encode()).digest()[:4], "little")


def _model_input(image: LabelledImage, variant: str, size: int, rng: np.random.Generator) -> Floats:
    from radtriage.app.core.errors import TriageError
    from radtriage.imaging.dicom_pixels import load_image_file

    try:
        pixels = load_image_file(image.path)
        if variant not in (CLEAN, EQUALISED):
            pixels = acquisition_augment(pixels, rng)
        if variant.startswith(EQUALISED):  # the site normalisation comes after the (imitated) acquisition chain
            pixels = equalise(pixels)
        return to_model_input(pixels, size)
    except (TriageError, ValueError) as exc:
        raise DatasetError(f"{image.path}: cannot be used ({exc})") from exc


def extract(images: Sequence[LabelledImage], variant: str, cache_dir: str | os.PathLike[str], *,
            size: int = 224, network: EfficientNetLite0 | None = None, batch_size: int = 8) -> FeatureSet:
    """Features for `images` in `variant` ("clean" or any other name: an augmented copy seeded by the name)."""
    path = Path(cache_dir) / f"features-{variant}-{_key(images, variant, size)}.npz"
    ids = tuple(image.image_id for image in images)
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            thumbs = stored["thumbs"] if stored["thumbs"].size else None
            return FeatureSet(variant, ids, stored["features"], thumbs, float(stored["seconds"]))
    network = network or backbone()
    rng = np.random.default_rng(_variant_seed(variant))
    started = time.perf_counter()
    features = np.empty((len(images), FEATURE_SIZE), dtype=np.float32)
    thumbs = np.empty((len(images), 64 * 64), dtype=np.float32) if variant == CLEAN else None
    for start in tqdm(range(0, len(images), batch_size), desc=f"features {variant}", unit="batch", mininterval=5.0):
        chunk = [_model_input(image, variant, size, rng) for image in images[start:start + batch_size]]
        features[start:start + len(chunk)] = pooled_features(network, torch.from_numpy(np.stack(chunk))).numpy()
        if thumbs is not None:
            thumbs[start:start + len(chunk)] = np.stack([shrink(x) for x in chunk])
    seconds = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial.npz")
    np.savez(partial, features=features, thumbs=thumbs if thumbs is not None else np.empty(0), seconds=seconds)
    os.replace(partial, path)
    return FeatureSet(variant, ids, features, thumbs, seconds)


__all__ = ["CLEAN", "FEATURE_SIZE", "FeatureSet", "backbone", "extract", "pooled_features"]
