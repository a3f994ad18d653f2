"""The clearly labelled, UNTRAINED placeholder model.

It lets the whole pipeline run (development, demos, tests, a fresh install before a real model is provisioned)
without pretending to be a medical device: its manifest says ``placeholder: true``, every result records that
through `ModelIdentity.placeholder`, and its outputs are random functions of the image, meaningless by design.

It is a real ``xrv-densenet121`` network, so it exercises exactly the code paths a trained artefact uses: the
feature layers keep torchxrayvision's random initialisation from a fixed seed (the same code always writes the same
weights and the same SHA-256). Its classifier head is set to zero weights and a bias of logit(0.05), so every label
gets probability 0.05 for every image, below the 0.5 threshold: the placeholder never reports a finding and never
raises a priority. Why not a random head: on inputs in [-1024, 1024] a randomly initialised DenseNet gives logits in
the hundreds, i.e. the same 0-or-1 answer for every image, and every study would have been "stat" for no reason.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from radtriage.app.core.errors import ErrorCode, TriageError

from .architectures import XRV_DENSENET121, build_network
from .artefact import MANIFEST_FILE, ModelManifest, read_manifest, write_artefact
from .preprocessing import DEFAULT_SIZE, PREPROCESSING_VERSION

PLACEHOLDER_NAME = "untrained-placeholder"
PLACEHOLDER_VERSION = "1"
PLACEHOLDER_SEED = 20240229
#: The probability the placeholder gives every label for every image.
PLACEHOLDER_PROBABILITY = 0.05

#: torchxrayvision label names (``xrv.datasets.default_pathologies``) that matter for triage, in that list's order:
#: acute findings a reader should see sooner, plus those worth flagging for follow-up.
PLACEHOLDER_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Consolidation",
    "Pneumothorax",
    "Edema",
    "Effusion",
    "Pneumonia",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)


def placeholder_manifest() -> ModelManifest:
    """The placeholder's manifest before its weights are written (no hash yet)."""
    return ModelManifest(
        name=PLACEHOLDER_NAME,
        version=PLACEHOLDER_VERSION,
        architecture=XRV_DENSENET121,
        labels=PLACEHOLDER_LABELS,
        thresholds=dict.fromkeys(PLACEHOLDER_LABELS, 0.5),
        input_size=DEFAULT_SIZE,
        preprocessing_version=PREPROCESSING_VERSION,
        intended_use=(
            "NOT FOR CLINICAL USE. An UNTRAINED placeholder with random weights so that the service can run end to "
            "end before a trained model is installed. Its outputs are meaningless and must never inform care."
        ),
        limitations=(
            "Untrained: probabilities are a random function of the image, not evidence of any finding.",
            "It gives every label the same low probability for every image: it never reports a finding.",
        ),
        training_data=(),
        placeholder=True,
    )


def _placeholder_state_dict() -> dict[str, torch.Tensor]:
    # fork_rng keeps the fixed seed from disturbing the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PLACEHOLDER_SEED)
        network = build_network(placeholder_manifest())
    state = network.state_dict()
    constant_logit = math.log(PLACEHOLDER_PROBABILITY / (1.0 - PLACEHOLDER_PROBABILITY))
    state["classifier.weight"] = torch.zeros_like(state["classifier.weight"])
    state["classifier.bias"] = torch.full_like(state["classifier.bias"], constant_logit)
    return state


def ensure_placeholder(models_dir: str | os.PathLike[str]) -> Path:
    """The placeholder artefact folder under `models_dir`, created on first use.

    Idempotent and safe when two processes race: the artefact is written to a hidden folder and renamed into
    place, and the loser finds the winner's. An existing folder that is not the placeholder is refused
    (MODEL_UNAVAILABLE) rather than overwritten.
    """
    dest = Path(models_dir) / PLACEHOLDER_NAME / PLACEHOLDER_VERSION
    if not (dest / MANIFEST_FILE).exists():
        try:
            write_artefact(dest, placeholder_manifest(), _placeholder_state_dict())
        except FileExistsError:
            pass  # another process wrote it first; checked below like any existing one
    existing = read_manifest(dest)
    if not existing.placeholder or existing.name != PLACEHOLDER_NAME:
        raise TriageError(ErrorCode.MODEL_UNAVAILABLE, f"{dest} holds a model that is not the placeholder")
    return dest
