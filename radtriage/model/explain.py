"""Heatmap overlays: a finding's Grad-CAM map laid over the image the model saw, as a PNG a person can read.

The picture is the model's own input (after torchxrayvision's centre crop and resize), shown in grey, with the
map in a blue→red colour scale whose opacity grows with the map's value, so weak areas leave the image visible.
It is upscaled for reading; its geometry is that of the model input, which the caption of the report says.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image

from .preprocessing import XRV_RANGE

#: Long side of the overlay PNG: the 224-pixel model input is upscaled for reading.
OVERLAY_SIZE = 512
_MAX_ALPHA = 0.55


def heat_colours(values: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """[0, 1] → RGB: blue, cyan, green, yellow, red (a perceptually ordered scale without a dark end)."""
    stops = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    colours = np.array([[0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]], dtype=np.float32)
    clipped = np.clip(values, 0.0, 1.0)
    rgb = np.stack([np.interp(clipped, stops, colours[:, c]) for c in range(3)], axis=-1)
    return rgb.astype(np.uint8)


def overlay_png(
    model_input: npt.NDArray[np.floating], heat: npt.NDArray[np.floating], size: int = OVERLAY_SIZE
) -> bytes:
    """PNG of `heat` ([0, 1], H×W) over `model_input` (1×H×W or H×W, torchxrayvision range [-1024, 1024])."""
    pixels = np.asarray(model_input, dtype=np.float32).reshape(heat.shape)
    grey = ((pixels + XRV_RANGE) / (2 * XRV_RANGE) * 255.0).clip(0, 255).astype(np.uint8)
    base = np.stack([grey] * 3, axis=-1).astype(np.float32)
    alpha = (np.clip(heat, 0.0, 1.0) * _MAX_ALPHA)[..., np.newaxis]
    blended = (base * (1 - alpha) + heat_colours(heat).astype(np.float32) * alpha).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(blended, mode="RGB").resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    # Fast compression: these are made on the scoring path, one per positive finding (optimize=True costs ~0.4 s).
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
