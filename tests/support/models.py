"""Model artefacts for tests that need the shipped model to flag a study."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from radtriage.model.registry import SHIPPED_DEFAULT


def flagging_default_model(folder: Path) -> Path:
    """A copy of the shipped model with its first finding's operating point at 0, so that every analysable film
    has a positive finding (to explain, to raise a priority) whatever its score. Thresholds live in the manifest;
    the weights and their sha256 are untouched, so the copy loads like the original."""
    model = folder / "flagging-model"
    shutil.copytree(SHIPPED_DEFAULT, model)
    manifest = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
    manifest["thresholds"][manifest["labels"][0]] = 0.0
    (model / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return model
