"""Fit and install the out-of-distribution reference of a model artefact (see `radtriage.model.ood`)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...imaging.dicom_pixels import load_image_file
from ..artefact import MANIFEST_FILE
from ..ood import REFERENCE_FILE, fit_reference
from ..preprocessing import to_model_input
from ..scorer import XrvScorer


def training_images(model_dir: str | os.PathLike[str], data_root: str | os.PathLike[str]) -> list[Path]:
    """The training-split images named by an artefact's own ``split.csv``, under `data_root` (one folder per
    source, e.g. ``shared/data/cxr``); images that are not there are skipped."""
    paths = []
    with (Path(model_dir) / "split.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            source, _, relative = row["image_id"].partition(":")
            path = Path(data_root) / source / relative
            if row["split"] == "train" and path.exists():
                paths.append(path)
    return paths


def install_ood_reference(
    model_dir: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]], *, k: int = 20, quantile: float = 0.995
) -> dict[str, Any]:
    """Fit the reference on `images` (the model's training images), write it beside the weights and record its
    sha256 in the manifest (``evaluation["ood"]``). Returns that manifest entry."""
    folder = Path(model_dir)
    size = XrvScorer.from_artefact(folder).manifest.input_size  # also verifies the artefact
    reference = fit_reference([to_model_input(load_image_file(path), size) for path in images], k=k, quantile=quantile)
    data = reference.to_bytes()
    (folder / REFERENCE_FILE).write_bytes(data)
    entry = {
        "file": REFERENCE_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "method": "eigen-chest novelty: Mahalanobis distance on the top principal components of 64x64 model "
        "inputs, and the reconstruction residual",
        "components": k,
        "quantile": quantile,
        "residual_threshold": reference.residual_threshold,
        "distance_threshold": reference.distance_threshold,
        "fitted_on_images": len(images),
    }
    manifest_path = folder / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["evaluation"] = {**(manifest.get("evaluation") or {}), "ood": entry}  # it may be null (placeholder)
    temporary = manifest_path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    temporary.replace(manifest_path)
    return entry
