"""Out-of-distribution gate: does this image look like the chest X-rays the model was trained on?

"Eigen-chests": the training images, as the model sees them (after preprocessing) and shrunk to 64×64, span a
space whose first `k` principal components capture what chest radiographs have in common (lung fields,
mediastinum, diaphragm, shoulders). An image is compared with it in two ways: how far its coefficients are from
the training images' (Mahalanobis distance within the subspace) and how much of it the subspace cannot explain
(the root-mean-square reconstruction residual). Either one above the `quantile` of the training images' own
values makes it "not analysed" (OUT_OF_DISTRIBUTION), instead of a confident score on an image the model has
never seen the like of. This is the classic eigenface novelty test (Turk & Pentland 1991) applied to chest films.

On the shipped model it flags a knee (tibia) radiograph, an MR, an ultrasound, a colour picture, an intensity
ramp and an inverted (wrong polarity) chest film, and keeps about 97–99% of held-out chest films; it does not
flag white noise or a face photograph (see the model card and the project notes). It is one gate among
several, not a guarantee.

The reference is a file in the model artefact (`ood_reference.npz`); its sha256 is in the manifest's
``evaluation["ood"]`` and is checked when it is loaded, like the weights'.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from ..app.core.errors import ErrorCode, TriageError
from .preprocessing import XRV_RANGE

REFERENCE_FILE = "ood_reference.npz"
SIDE = 64
Floats = npt.NDArray[np.float64]


def shrink(model_input: npt.NDArray[np.floating[Any]]) -> Floats:
    """A preprocessed image (1×S×S or S×S, torchxrayvision range) as a 64×64 vector in [-1, 1]."""
    square = np.asarray(model_input, dtype=np.float32).reshape(model_input.shape[-2:])
    small = Image.fromarray(square).resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float64).reshape(-1) / XRV_RANGE


@dataclass(frozen=True)
class OodReference:
    mean: Floats  # (SIDE*SIDE,)
    components: Floats  # (k, SIDE*SIDE), orthonormal rows
    variances: Floats  # (k,)
    residual_threshold: float
    distance_threshold: float

    def measure(self, model_input: npt.NDArray[np.floating[Any]]) -> tuple[float, float]:
        """(RMS residual outside the subspace, Mahalanobis distance within it)."""
        centred = shrink(model_input) - self.mean
        coefficients = self.components @ centred
        residual = max(float(centred @ centred - coefficients @ coefficients), 0.0)
        return float(np.sqrt(residual / centred.size)), float(np.sum(coefficients**2 / self.variances))

    def check(self, model_input: npt.NDArray[np.floating[Any]]) -> None:
        residual, distance = self.measure(model_input)
        if residual > self.residual_threshold or distance > self.distance_threshold:
            raise TriageError(
                ErrorCode.OUT_OF_DISTRIBUTION,
                "the image does not look like the chest radiographs the model was trained on; not analysed",
            )

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            mean=self.mean,
            components=self.components,
            variances=self.variances,
            thresholds=np.array([self.residual_threshold, self.distance_threshold]),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> OodReference:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            residual, distance = (float(x) for x in arrays["thresholds"])
            return cls(arrays["mean"], arrays["components"], arrays["variances"], residual, distance)


def fit_reference(
    model_inputs: list[npt.NDArray[np.floating[Any]]], *, k: int = 20, quantile: float = 0.995
) -> OodReference:
    """The reference from the training images (as preprocessed for the model); thresholds keep `quantile` in."""
    data = np.stack([shrink(x) for x in model_inputs])
    if len(data) <= k:
        raise ValueError(f"need more than {k} training images, got {len(data)}")
    mean = data.mean(axis=0)
    _, singular, rows = np.linalg.svd(data - mean, full_matrices=False)
    variances = np.maximum(singular[:k] ** 2 / (len(data) - 1), 1e-12)
    provisional = OodReference(mean, rows[:k], variances, np.inf, np.inf)
    measured = np.array([provisional.measure(x) for x in model_inputs])
    thresholds = np.quantile(measured, quantile, axis=0)
    return OodReference(mean, rows[:k], variances, float(thresholds[0]), float(thresholds[1]))


def load_reference(model_dir: str | Path, expected_sha256: str) -> OodReference:
    """The artefact's reference, refused (MODEL_UNAVAILABLE) when its sha256 is not the manifest's."""
    data = (Path(model_dir) / REFERENCE_FILE).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise TriageError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"{REFERENCE_FILE} does not match the manifest (sha256 {actual[:12]}…, expected {expected_sha256[:12]}…)",
        )
    return OodReference.from_bytes(data)
