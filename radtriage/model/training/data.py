"""From labelled images to tensors: preprocessing (cached on disk), label matrices, and augmentation.

Preprocessing is `radtriage.model.preprocessing.to_model_input`, the very function the scorer calls, applied to
`radtriage.imaging.dicom_pixels.load_image_file`, the very reader ``radtriage score`` uses. On two CPU cores
reading, cropping and resizing an image costs about as much as a training step, so each result is cached as a
``.npy`` file keyed by the preprocessing version, the size and the file's path, size and modification time: a
changed image or a new preprocessing version never reuses a stale tensor.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import torch
from tqdm import tqdm

from ..datasets import DatasetError, LabelledImage
from ..preprocessing import PREPROCESSING_VERSION, XRV_RANGE, to_model_input

AUGMENTATIONS: Final = ("none", "light", "strong")


def _cache_path(cache_dir: Path, image: LabelledImage, size: int) -> Path:
    stat = image.path.stat()
    key = f"{PREPROCESSING_VERSION}|{size}|{image.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return cache_dir / f"{PREPROCESSING_VERSION}-{size}" / f"{digest}.npy"


def model_input(image: LabelledImage, size: int, cache_dir: str | os.PathLike[str] | None = None) -> np.ndarray:
    """The network input for one image, (1, size, size) float32; read from / written to the cache when given."""
    from radtriage.app.core.errors import TriageError
    from radtriage.imaging.dicom_pixels import load_image_file

    cached = _cache_path(Path(cache_dir), image, size) if cache_dir is not None else None
    if cached is not None and cached.exists():
        stored: np.ndarray = np.load(cached)
        return stored
    try:
        array = to_model_input(load_image_file(image.path), size)
    except (TriageError, ValueError) as exc:
        raise DatasetError(f"{image.path}: cannot be used ({exc})") from exc
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.partial.npy")
        np.save(partial, array)
        os.replace(partial, cached)  # never leave half a file under the final name
    return array


def load_inputs(images: Sequence[LabelledImage], size: int, cache_dir: str | os.PathLike[str] | None = None,
                *, description: str = "preprocessing") -> torch.Tensor:
    """(N, 1, size, size) float32 for all `images`, with a progress bar."""
    batch = torch.empty((len(images), 1, size, size), dtype=torch.float32)
    for index, image in enumerate(tqdm(images, desc=description, unit="img", leave=False, mininterval=2.0)):
        batch[index] = torch.from_numpy(model_input(image, size, cache_dir))
    return batch


def label_matrix(images: Sequence[LabelledImage], labels: Sequence[str]) -> torch.Tensor:
    """(N, len(labels)) float32: 1 present, 0 absent, NaN unknown (the loss ignores those entries)."""
    matrix = torch.full((len(images), len(labels)), math.nan, dtype=torch.float32)
    for row, image in enumerate(images):
        for column, label in enumerate(labels):
            if label in image.labels:
                matrix[row, column] = float(image.labels[label])
    return matrix


def view_balancing_weights(images: Sequence[LabelledImage]) -> torch.Tensor:
    """Per-image loss weights under which view (PA / AP / other) says nothing about normal vs abnormal.

    In the NIH subset normals are mostly AP and abnormals mostly PA, so a network can score well by recognising
    the view. Weighting each (view, abnormal) cell to the same total removes that shortcut from the training
    objective; it does not remove view cues from the images, which is why the evaluation reports each view.
    Weights average 1 over the images.
    """
    cells = [(image.view_group, image.abnormal) for image in images]
    counts: dict[tuple[str, float | None], int] = {}
    for cell in cells:
        counts[cell] = counts.get(cell, 0) + 1
    raw = torch.tensor([1.0 / counts[cell] for cell in cells], dtype=torch.float32)
    return raw * (len(images) / raw.sum())


def augment(batch: torch.Tensor, strength: str, generator: torch.Generator) -> torch.Tensor:
    """Random small rotations, shifts, zooms and contrast changes, drawn from `generator` (reproducible).

    No horizontal flips: the heart's side is anatomy, and a flipped film is a different (rare) finding.
    Pixels moved in from outside the image are black (-1024), as the collimated border of a radiograph is.
    """
    if strength == "none":
        return batch
    if strength not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {strength!r} (known: {', '.join(AUGMENTATIONS)})")
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    degrees, shift, zoom, contrast = (5.0, 0.04, 0.05, 0.1) if strength == "light" else (10.0, 0.08, 0.1, 0.2)
    size = batch.shape[-1]
    out = torch.empty_like(batch)
    for index in range(batch.shape[0]):
        u = torch.rand(5, generator=generator).tolist()
        image = tvf.affine(
            batch[index],
            angle=(2 * u[0] - 1) * degrees,
            translate=[round((2 * u[1] - 1) * shift * size), round((2 * u[2] - 1) * shift * size)],
            scale=1.0 + (2 * u[3] - 1) * zoom,
            shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR,
            fill=-XRV_RANGE,
        )
        mean = image.mean()
        out[index] = ((image - mean) * (1.0 + (2 * u[4] - 1) * contrast) + mean).clamp(-XRV_RANGE, XRV_RANGE)
    return out


__all__ = ["AUGMENTATIONS", "augment", "label_matrix", "load_inputs", "model_input", "view_balancing_weights"]
