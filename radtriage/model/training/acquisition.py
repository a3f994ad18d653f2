"""Augmentation that imitates other acquisition chains, so that the model learns disease rather than one hospital.

Two hospitals' films of the same disease differ in how they were exposed, processed, stored and exported: the
detector's response curve and the display window (gamma, contrast), global histogram processing, sharpness and
resampling (blur, down- and up-sampling), noise and film grain, lossy compression (JPEG), the collimated border and
burned-in text at the edges, and the patient's position (small rotations). `acquisition_augment` applies a random
draw of each to a display image (2-D, [0, 1], MONOCHROME2) *before* the shared preprocessing, exactly where a
different hospital's chain would have changed it.

No horizontal flips: the heart's side is anatomy. Every draw comes from the caller's `numpy.random.Generator`, so
the cached augmented copies are reproducible.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

Gray = npt.NDArray[np.float32]


def equalise(image01: npt.NDArray[Any]) -> Gray:
    """Global histogram equalisation (256 bins) of a [0, 1] image: one way sites' grey scales are made alike."""
    values = np.clip(np.asarray(image01, dtype=np.float32), 0.0, 1.0)
    histogram = np.bincount((values * 255).astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    cdf = np.cumsum(histogram)
    lowest = cdf[np.flatnonzero(histogram)[0]]  # the darkest occupied grey level maps to 0
    cdf = np.clip((cdf - lowest) / max(cdf[-1] - lowest, 1.0), 0.0, 1.0)
    result: Gray = cdf[(values * 255).astype(np.uint8)].astype(np.float32)
    return result


def _to_pil(image01: Gray) -> Image.Image:
    return Image.fromarray((np.clip(image01, 0.0, 1.0) * 255).astype(np.uint8))


def _from_pil(image: Image.Image) -> Gray:
    return np.asarray(image, dtype=np.float32) / 255.0


def _geometry(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    # Crop away up to 8% on each side: removes borders, side markers and burned-in text some sites have.
    left, top, right, bottom = (rng.uniform(0.0, 0.08, size=4) * [width, height, width, height]).astype(int)
    image = image.crop((left, top, width - right, height - bottom))
    angle = float(rng.uniform(-7.0, 7.0))
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0)
    if rng.random() < 0.5:  # a lower-resolution detector or export, brought back up
        factor = float(rng.uniform(0.25, 0.7))
        small = (max(32, int(image.width * factor)), max(32, int(image.height * factor)))
        image = image.resize(small, Image.Resampling.BILINEAR).resize(image.size, Image.Resampling.BILINEAR)
    if rng.random() < 0.4:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.0))))
    return image


def _grey_scale(pixels: Gray, rng: np.random.Generator) -> Gray:
    if rng.random() < 0.3:
        pixels = equalise(pixels)
    low, high = rng.uniform(0.0, 0.12), rng.uniform(0.88, 1.0)  # a different window
    pixels = np.clip((pixels - low) / (high - low), 0.0, 1.0)
    pixels = pixels ** float(np.exp(rng.uniform(np.log(0.6), np.log(1.7))))  # another response curve
    contrast, brightness = rng.uniform(0.75, 1.25), rng.uniform(-0.08, 0.08)
    pixels = (pixels - 0.5) * contrast + 0.5 + brightness
    return np.clip(pixels, 0.0, 1.0).astype(np.float32)


def _noise(pixels: Gray, rng: np.random.Generator) -> Gray:
    if rng.random() < 0.5:
        pixels = pixels + rng.normal(0.0, rng.uniform(0.005, 0.03), size=pixels.shape).astype(np.float32)
    if rng.random() < 0.3:  # film grain: noise with a grain size of a few pixels
        grain = _to_pil(0.5 + rng.normal(0.0, 0.15, size=pixels.shape).astype(np.float32))
        grain_arr = _from_pil(grain.filter(ImageFilter.GaussianBlur(radius=1.2))) - 0.5
        pixels = pixels + float(rng.uniform(0.05, 0.2)) * grain_arr
    return np.clip(pixels, 0.0, 1.0).astype(np.float32)


def _jpeg(pixels: Gray, rng: np.random.Generator) -> Gray:
    if rng.random() >= 0.5:
        return pixels
    buffer = io.BytesIO()
    _to_pil(pixels).save(buffer, format="JPEG", quality=int(rng.integers(25, 90)))
    return _from_pil(Image.open(io.BytesIO(buffer.getvalue())))


def acquisition_augment(image01: npt.NDArray[Any], rng: np.random.Generator) -> Gray:
    """One random other-hospital version of a display image (2-D, [0, 1]); the result is 2-D float32 in [0, 1]."""
    image = _geometry(_to_pil(np.asarray(image01, dtype=np.float32)), rng)
    pixels = _grey_scale(_from_pil(image), rng)
    return _jpeg(_noise(pixels, rng), rng)


__all__ = ["acquisition_augment", "equalise"]
