"""One command from the shared data to a released triage model: ``radtriage model train-triage DATA DEST``.

Steps (`build_triage_model`):

1. Read every source (`radtriage.model.sources`), hold out a test share of each source's *patients* (TBX11K has no
   patient ids: by image).
2. Cache frozen-backbone features of every image: clean, plus acquisition-augmented copies (`features.extract`).
3. Fit the recipe on the development images (`recipe.fit_triage`), the input gate (`input_gate`), and severity
   (ridge, on the COVID-19 collection's radiologist scores).
4. Write the artefact (heads only; the backbone is the pinned ImageNet file) and evaluate it
   (`evaluation.triage_evaluation`): per source on the test split, leave one source out, source shortcut, gate
   refusals by reason, severity; then the model card.

Wall time on two CPU cores is dominated by step 2 (one backbone pass per image and copy); steps 3-4 take minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..artefact import ModelManifest, write_artefact
from ..datasets import LabelledImage
from ..input_gate import ChildDetector, FeatureGate, fit_child_detector, fit_feature_gate, fit_inverted_detector
from ..networks.frozen_triage import GATE_COMPONENTS, FrozenTriageNetwork
from ..preprocessing import PREPROCESSING_VERSION
from ..sources import SOURCES, read_sources
from .features import CLEAN, backbone, extract
from .recipe import FittedTriage, RecipeSettings, fit_triage

ADULT_AGE = 18.0


@dataclass(frozen=True)
class TriageBuildConfig:
    data_root: str
    sources: tuple[str, ...] = SOURCES
    augmented_copies: int = 0
    test_fraction: float = 0.15
    gate_quantile: float = 0.995
    child_adult_refusal: float = 0.01
    cache_dir: str = "var/features"
    bootstrap: int = 1000
    split_seed: int = 20261206
    #: JSON file with the previous model's source-shortcut figures (reported as "before").
    baseline_shortcut: str | None = None
    recipe: RecipeSettings = field(default_factory=RecipeSettings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FittedModel:
    """Everything the artefact holds, before it is written."""

    triage: FittedTriage
    gate: FeatureGate
    child: ChildDetector
    severity_weight: npt.NDArray[np.float64]
    severity_bias: float
    #: Logistic detector of inverted films on the 64x64 model-input thumbnails, and its cross-validated figures.
    inverted_weight: npt.NDArray[np.float64]
    inverted_bias: float
    inverted_figures: dict[str, float]


def is_test(image: LabelledImage, fraction: float, seed: int) -> bool:
    """Deterministic patient-level hold-out: the same patient always lands on the same side."""
    digest = hashlib.sha256(f"{seed}|{image.patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def subset(images: Sequence[LabelledImage], mask: npt.NDArray[np.bool_]) -> list[LabelledImage]:
    return [image for image, keep in zip(images, mask, strict=True) if keep]


def fit_gates(images: Sequence[LabelledImage], clean: npt.NDArray[Any], config: TriageBuildConfig
              ) -> tuple[FeatureGate, ChildDetector]:
    gate = fit_feature_gate(clean, k=GATE_COMPONENTS, quantile=config.gate_quantile)
    aged = np.array([image.age is not None for image in images])
    children = np.array([image.age is not None and image.age < ADULT_AGE for image in images])
    child = fit_child_detector(clean[aged], children[aged], [im.patient_id for im in subset(images, aged)],
                               adult_refusal=config.child_adult_refusal)
    return gate, child


def fit_severity_head(images: Sequence[LabelledImage], clean: npt.NDArray[Any]
                      ) -> tuple[npt.NDArray[np.float64], float, dict[str, Any]]:
    from ..evaluation.shortcut import fit_severity, severity_cross_validation

    scored = np.array(["geographic_extent_mean" in image.severity for image in images])
    chosen = subset(images, scored)
    extent = np.array([image.severity["geographic_extent_mean"] for image in chosen])
    opacity = np.array([image.severity["opacity_mean"] for image in chosen])
    cv = severity_cross_validation(clean[scored], extent, opacity, [image.patient_id for image in chosen])
    weight, bias = fit_severity(clean[scored], extent, cv["alpha"])
    return weight, bias, cv


def network_state(model: FittedModel) -> dict[str, torch.Tensor]:
    network = FrozenTriageNetwork(len(model.triage.labels))

    def tensor(values: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=torch.float32)

    state = network.state_dict()
    state.update({
        "classifier.weight": tensor(model.triage.weight), "classifier.bias": tensor(model.triage.bias),
        "severity.weight": tensor(model.severity_weight[None, :]), "severity.bias": tensor([model.severity_bias]),
        "child.weight": tensor(model.child.weight[None, :]), "child.bias": tensor([model.child.bias]),
        "child_limit": tensor(model.child.limit), "gate_mean": tensor(model.gate.mean),
        "gate_components": tensor(model.gate.components), "gate_variances": tensor(model.gate.variances),
        "gate_limits": tensor([model.gate.residual_limit, model.gate.distance_limit]),
        "inverted_weight": tensor(model.inverted_weight), "inverted_bias": tensor(model.inverted_bias),
    })
    network.load_state_dict(state)  # checks that every tensor has the shape the network expects
    return {key: value.clone() for key, value in network.state_dict().items()}


def build_triage_model(config: TriageBuildConfig, dest_dir: str | os.PathLike[str], *, threads: int = 2,
                       name: str = "radtriage-cxr-triage", version: str | None = None) -> ModelManifest:
    """Train, write and evaluate a triage model in the new folder `dest_dir` (see the module docstring)."""
    from ..evaluation.triage_card import write_model_card
    from ..evaluation.triage_evaluation import evaluate_triage
    from .triage_manifest import triage_manifest

    started = time.perf_counter()
    torch.set_num_threads(max(1, threads))
    images = read_sources(config.data_root, config.sources)
    network = backbone()
    clean_set = extract(images, CLEAN, config.cache_dir, network=network)
    clean = clean_set.features
    augmented = [extract(images, f"aug-{k}", config.cache_dir, network=network).features
                 for k in range(config.augmented_copies)]
    features_seconds = time.perf_counter() - started
    test = np.array([is_test(image, config.test_fraction, config.split_seed) for image in images])
    dev_images = subset(images, ~test)
    triage = fit_triage(dev_images, clean[~test], [a[~test] for a in augmented], config.recipe)
    gate, child = fit_gates(dev_images, clean[~test], config)
    severity_weight, severity_bias, severity_cv = fit_severity_head(images, clean)
    assert clean_set.thumbs is not None  # the clean variant always carries them
    inverted = fit_inverted_detector(clean_set.thumbs[~test])
    model = FittedModel(triage, gate, child, severity_weight, severity_bias, *inverted)
    training_seconds = time.perf_counter() - started

    version = version or time.strftime("%Y.%m.%d-frozen", time.gmtime())
    manifest = triage_manifest(name, version, model, config, {
        "training": {"seconds_total": round(training_seconds, 1), "seconds_features": round(features_seconds, 1),
                     "threads": threads, "images": len(images), "development_images": int((~test).sum()),
                     "test_images": int(test.sum())},
    })
    written = write_artefact(dest_dir, manifest, network_state(model))
    dest = Path(dest_dir)
    baseline = json.loads(Path(config.baseline_shortcut).read_text()) if config.baseline_shortcut else None
    report = evaluate_triage(dest, images, clean, augmented, test, model, config, severity_cv=severity_cv,
                             baseline=baseline)
    report["training"] = manifest.evaluation["training"] if manifest.evaluation else {}
    (dest / "evaluation.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n", encoding="utf-8")
    (dest / "training_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    write_model_card(dest, written, report)
    return written


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


__all__ = ["FittedModel", "TriageBuildConfig", "build_triage_model", "fit_gates", "is_test", "network_state",
           "subset", "PREPROCESSING_VERSION"]
