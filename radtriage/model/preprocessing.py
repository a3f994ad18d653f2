"""Image preprocessing: the one module shared by training and serving.

A model only gives the answers it was validated for when it sees its input exactly as it saw it in training, so
every path into a network (the scorer, the training loop, the evaluation scripts) calls `to_model_input` and
nothing else. Any change to what this module does is a new `PREPROCESSING_VERSION`: every model artefact records
the version it was trained with, and `radtriage.model.artefact` refuses to load a model whose version this code
does not implement.

Version ``xrv-v1`` follows torchxrayvision's conventions, so that weights trained by torchxrayvision (and our own
models fine-tuned from them) receive what they expect:

1. The caller supplies a 2-D image in [0, 1], in MONOCHROME2 polarity (0 = black) with the DICOM Modality and VOI
   LUTs already applied (`radtriage.imaging.dicom_pixels.pixels_for_display` does that for DICOM).
2. Scale to [-1024, 1024] with ``xrv.utils.normalize(img, maxval=1)`` (what ``xrv.datasets.normalize`` calls).
3. Add a channel axis: single channel, shape (1, H, W).
4. Centre-crop to a square with ``xrv.datasets.XRayCenterCrop``: the long dimension is cut evenly on both sides.
   On a tall radiograph this trims the top and bottom edges (lung apices, costophrenic angles may be cut when the
   collimation is tight); torchxrayvision's models were trained on images cropped the same way.
5. Resize to ``size`` x ``size`` with ``xrv.datasets.XRayResizer`` (scikit-image ``resize``: bilinear, with
   Gaussian anti-aliasing when shrinking, ``preserve_range=True``), as torchxrayvision's training scripts do.

torchxrayvision's own transforms are reused rather than re-implemented so that "the same as torchxrayvision" is
true by construction, not by a copy that can drift. The result is float32 with shape (1, size, size).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from ._xrv import import_xrv

PREPROCESSING_VERSION: Final = "xrv-v1"
#: Versions this code implements; a model artefact naming any other version is refused.
KNOWN_PREPROCESSING_VERSIONS: Final = frozenset({PREPROCESSING_VERSION})
#: torchxrayvision's input range is [-XRV_RANGE, XRV_RANGE].
XRV_RANGE: Final = 1024.0
DEFAULT_SIZE: Final = 224


def to_model_input(image: npt.NDArray[np.generic], size: int = DEFAULT_SIZE) -> npt.NDArray[np.float32]:
    """Turn a 2-D image in [0, 1] into the network input: float32, shape (1, size, size), values in [-1024, 1024].

    Raises `ValueError` for anything that is not a finite, real 2-D image in [0, 1] (the caller decides whether
    that is an unreadable image or a programming error); nothing is silently clipped or guessed.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D (single-channel) image, got shape {image.shape}")
    if image.size == 0:
        raise ValueError("the image is empty")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
            or image.dtype == np.bool_):
        raise ValueError(f"expected real pixel values, got dtype {image.dtype}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")

    pixels = image.astype(np.float32)
    if not np.isfinite(pixels).all():
        raise ValueError("the image contains non-finite values (NaN or infinity)")
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"expected values in [0, 1], got [{low:.4g}, {high:.4g}]")

    xrv = import_xrv()
    scaled = xrv.utils.normalize(pixels, 1.0)  # (2 * x - 1) * 1024
    with_channel = scaled[np.newaxis, :, :]
    square = xrv.datasets.XRayCenterCrop()(with_channel)
    resized = xrv.datasets.XRayResizer(size)(square)
    result: npt.NDArray[np.float32] = np.ascontiguousarray(resized, dtype=np.float32)
    return result
