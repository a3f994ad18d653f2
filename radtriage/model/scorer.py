"""`XrvScorer`: the `ImageScorer` port implemented with a torchxrayvision-based model artefact.

One scorer holds one model, loaded once (weights verified against the manifest's SHA-256). It turns DICOM bytes
into the network input (`prepare`, through `radtriage.imaging.dicom_pixels` and the shared
`radtriage.model.preprocessing`), then scores it (`score`, `score_batch`).

What the numbers are: the networks return one logit per label; the scorer applies the sigmoid, so each
`FindingScore.probability` is ``sigmoid(logit)`` in [0, 1], scored independently per label (multi-label, not a
softmax), paired with the manifest's operating-point threshold for that label. For a placeholder model these
numbers are meaningless, and `identity.placeholder` says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from radtriage.app.core.domain import FindingScore, Heatmap, ModelIdentity
from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.app.core.ports import ImageScorer, PreparedImage
from radtriage.imaging.dicom_pixels import check_analysable, pixels_for_display, read_dataset

from .architectures import architecture, load_network
from .artefact import ModelManifest, load_state_dict
from .explain import overlay_png
from .input_gate import check_gate
from .networks.frozen_triage import FrozenTriageNetwork
from .ood import OodReference, load_reference, shrink
from .preprocessing import PREPROCESSING_VERSION, to_model_input
from .quality import QualityGates, check_header, check_pixels

#: Intra-op threads for scoring when the caller does not say. A 224x224 DenseNet gains little beyond a few
#: threads, and the scoring process shares the machine with the web and MLLP doors.
DEFAULT_MAX_THREADS = 4
#: Images per forward pass in `score_batch`; bounds memory on a CPU worker.
DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True, eq=False)
class XrvPreparedImage:
    """An image ready for the network: float32 (1, size, size) in [-1024, 1024], made by one preprocessing version."""

    pixels: npt.NDArray[np.float32]
    size: int
    preprocessing_version: str = PREPROCESSING_VERSION
    #: The pooled backbone features, when the model computed them while gating the image (frozen-backbone
    #: models): scoring and severity then reuse them instead of running the backbone again.
    features: npt.NDArray[np.float32] | None = None


class XrvScorer:
    """Scores chest radiographs with a model artefact. Build it with `from_artefact`."""

    def __init__(
        self,
        manifest: ModelManifest,
        network: nn.Module,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        gates: QualityGates | None = None,
        ood: OodReference | None = None,
    ) -> None:
        self.manifest = manifest
        self.gates = gates or QualityGates()
        #: The out-of-distribution gate, when the artefact ships a reference (see `ood.py`).
        self.ood = ood
        self._network = network.eval()
        self._batch_size = max(1, batch_size)
        self._thresholds = [float(manifest.thresholds[label]) for label in manifest.labels]
        self._cam_forward = architecture(manifest.architecture).cam_forward

    @classmethod
    def from_artefact(
        cls,
        path: str | os.PathLike[str],
        *,
        max_threads: int | None = DEFAULT_MAX_THREADS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        gates: QualityGates | None = None,
    ) -> XrvScorer:
        """Load and verify the artefact at `path` (MODEL_UNAVAILABLE when it cannot be trusted or does not fit).

        `max_threads` caps torch's intra-op threads for this process (``torch.set_num_threads`` is process-wide);
        None leaves torch's setting alone.
        """
        if max_threads is not None:
            torch.set_num_threads(max(1, min(max_threads, torch.get_num_threads())))
        manifest, state_dict = load_state_dict(Path(path))
        network = load_network(manifest, state_dict)
        ood_entry = (manifest.evaluation or {}).get("ood")
        ood = load_reference(Path(path), str(ood_entry["sha256"])) if isinstance(ood_entry, dict) else None
        return cls(manifest, network, batch_size=batch_size, gates=gates, ood=ood)

    # ------------------------------------------------------------------ the ImageScorer port

    @property
    def identity(self) -> ModelIdentity:
        return self.manifest.identity

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    def prepare(self, dicom_bytes: bytes) -> XrvPreparedImage:
        """DICOM Part 10 bytes to network input.

        Raises UNREADABLE_IMAGE (cannot be decoded), NOT_A_RADIOGRAPH, NOT_A_CHEST or LATERAL_ONLY (the header says
        this is not a frontal chest radiograph): the answer is then "not analysed", never a guess.
        """
        dataset = read_dataset(dicom_bytes)
        check_analysable(dataset)
        check_header(dataset, self.gates)
        return self.prepare_array(pixels_for_display(dataset))

    def prepare_array(self, image01: npt.NDArray[np.generic]) -> XrvPreparedImage:
        """A 2-D image in [0, 1], MONOCHROME2 polarity (e.g. from `load_image_file`), to network input.

        No header checks happen here: the caller vouches that it is a frontal chest radiograph. The pixel quality
        gates (size, contrast) do apply: IMAGE_QUALITY when they fail.
        """
        check_pixels(np.asarray(image01), self.gates)
        try:
            pixels = to_model_input(image01, self.manifest.input_size)
        except ValueError as exc:
            raise TriageError(ErrorCode.UNREADABLE_IMAGE, f"the image could not be preprocessed ({exc})") from None
        if self.ood is not None:
            self.ood.check(pixels)
        features = self._gated_features(pixels) if isinstance(self._network, FrozenTriageNetwork) else None
        return XrvPreparedImage(pixels=pixels, size=self.manifest.input_size, features=features)

    def _gated_features(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The frozen backbone's pooled features, after the model's own input gate (see `input_gate`)."""
        network = self._network
        assert isinstance(network, FrozenTriageNetwork)
        with torch.inference_mode():
            pooled = network.pooled(torch.from_numpy(pixels[np.newaxis]))
            residual, distance = (float(v) for v in network.gate_measures(pooled)[0])
            limits = [float(v) for v in network.gate_limits]
            child = float(network.child_probability(pooled)[0])
            thumb = torch.from_numpy(shrink(pixels)[np.newaxis])
            inverted = float(network.inverted_probability(thumb)[0])
        check_gate(residual, distance, child, limits, float(network.child_limit), inverted=inverted)
        features: npt.NDArray[np.float32] = pooled[0].numpy().astype(np.float32)
        return features

    def score(self, image: PreparedImage) -> list[FindingScore]:
        """One `FindingScore` per manifest label, in the manifest's label order.

        `image` must come from this scorer's `prepare` / `prepare_array` (or another scorer with the same input
        size and preprocessing version); anything else is a `TypeError` / `ValueError`, a programming error.
        """
        return self.score_batch([image])[0]

    def severity(self, image: PreparedImage) -> float | None:
        """Severity: predicted geographic extent of lung involvement, 0-8 (the COVID-19 collection radiologists'
        scale); None for a model without a severity output."""
        prepared = self._checked(image)
        network = self._network
        if not isinstance(network, FrozenTriageNetwork):
            return None
        with torch.inference_mode():
            pooled = self._pooled([prepared])
            value = float(network.severity_score(pooled)[0])
        return round(value, 3) if np.isfinite(value) else None

    def _pooled(self, images: Sequence[XrvPreparedImage]) -> torch.Tensor:
        network = self._network
        assert isinstance(network, FrozenTriageNetwork)
        if all(image.features is not None for image in images):
            return torch.from_numpy(np.stack([image.features for image in images if image.features is not None]))
        return network.pooled(torch.from_numpy(np.stack([image.pixels for image in images])))

    def score_batch(self, images: Sequence[PreparedImage]) -> list[list[FindingScore]]:
        """`score` for many images, several per forward pass; the results are in the order of `images`."""
        results: list[list[FindingScore]] = []
        for start in range(0, len(images), self._batch_size):
            chunk = images[start : start + self._batch_size]
            prepared = [self._checked(image) for image in chunk]
            with torch.inference_mode():
                if isinstance(self._network, FrozenTriageNetwork):
                    logits = self._network.classifier(self._pooled(prepared))
                else:
                    logits = self._network(torch.from_numpy(np.stack([image.pixels for image in prepared])))
                probabilities = torch.sigmoid(logits).numpy()
            if not np.isfinite(probabilities).all():
                # Corrupt weights or an input the network cannot handle: never report a made-up number.
                raise TriageError(ErrorCode.MODEL_UNAVAILABLE, "the model produced non-finite scores")
            results.extend(self._findings(row) for row in probabilities)
        return results

    # ------------------------------------------------------------------ explanation

    def heatmap(self, image: PreparedImage, label: str) -> npt.NDArray[np.float32]:
        """Grad-CAM (Selvaraju et al., 2017) for `label`: where the last feature maps pushed that label's logit up.

        The last feature maps of the network (for xrv-densenet121: after its final batch norm and ReLU, as the
        classifier sees them) are weighted by the spatial mean of the logit's gradient with respect to them, summed
        over channels, passed through ReLU, upsampled bilinearly to the model input size and scaled to [0, 1]. An
        all-zero map means nothing in the image raised the logit. Same geometry as the prepared image (after centre
        crop and resize): shape (size, size), float32.
        """
        try:
            index = self.manifest.labels.index(label)
        except ValueError:
            raise ValueError(f"{label!r} is not one of this model's labels") from None
        prepared = self._checked(image)
        with torch.enable_grad():
            # The parameters are frozen; asking for the input's gradient is what builds the graph.
            batch = torch.from_numpy(prepared.pixels[np.newaxis]).requires_grad_(True)
            feature_maps, logits = self._cam_forward(self._network, batch)
            (gradients,) = torch.autograd.grad(logits[0, index], feature_maps)
        with torch.no_grad():
            channel_weights = gradients.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((channel_weights * feature_maps).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=(prepared.size, prepared.size), mode="bilinear", align_corners=False)
            cam = cam[0, 0]
            peak = float(cam.max())
            normalised = cam / peak if peak > 0 and np.isfinite(peak) else torch.zeros_like(cam)
        result: npt.NDArray[np.float32] = normalised.clamp(0.0, 1.0).numpy().astype(np.float32)
        return result

    def explain(self, image: PreparedImage, labels: Sequence[str]) -> list[Heatmap]:
        """The ImageScorer port's explanation: a Grad-CAM overlay PNG (see `explain.overlay_png`) per label."""
        prepared = self._checked(image)
        return [Heatmap(label, overlay_png(prepared.pixels, self.heatmap(prepared, label))) for label in labels]

    # ------------------------------------------------------------------ internals

    def _checked(self, image: object) -> XrvPreparedImage:
        if not isinstance(image, XrvPreparedImage):
            raise TypeError(f"expected an image from XrvScorer.prepare, got {type(image).__name__}")
        if image.preprocessing_version != self.manifest.preprocessing_version or image.size != self.manifest.input_size:
            raise ValueError(
                f"the image was prepared as {image.preprocessing_version} at {image.size}px; this model needs "
                f"{self.manifest.preprocessing_version} at {self.manifest.input_size}px"
            )
        if image.pixels.shape != (1, image.size, image.size):
            expected = (1, image.size, image.size)
            raise ValueError(f"prepared pixels have shape {image.pixels.shape}, expected {expected}")
        return image

    def _findings(self, probabilities: npt.NDArray[np.float32]) -> list[FindingScore]:
        return [
            FindingScore(label=label, probability=float(probability), threshold=threshold)
            for label, probability, threshold in zip(self.manifest.labels, probabilities, self._thresholds, strict=True)
        ]


if TYPE_CHECKING:  # mypy checks that XrvScorer fits the core's port

    def _fits_the_port(scorer: XrvScorer) -> ImageScorer:
        return scorer
