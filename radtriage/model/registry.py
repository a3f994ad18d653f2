"""The model registry: which model artefacts this installation has, and which one scores.

Artefacts live in folders (weights + manifest.json). The registry is the shipped default, every artefact under
``<home>/models``, and one pointer file, ``<home>/models/ACTIVE``, naming the active folder. Activating checks
the artefact's sha256 first, so a corrupt or tampered artefact can never become active. Which version produced
each result is recorded with the result itself (`ModelIdentity`), so switching models never rewrites history.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..app.core.errors import ErrorCode, TriageError
from .artefact import MANIFEST_FILE, ModelManifest, read_manifest

#: The model trained by radtriage's own pipeline and shipped in the package (see its MODEL_CARD.md).
SHIPPED_DEFAULT = Path(__file__).resolve().parent / "default"
ACTIVE_FILE = "ACTIVE"


@dataclass(frozen=True)
class RegisteredModel:
    path: Path
    manifest: ModelManifest
    active: bool


def models_dir(home: str | Path) -> Path:
    return Path(home) / "models"


def active_path(home: str | Path) -> Path | None:
    """The activated artefact folder, or None when nothing was activated (the shipped default then scores)."""
    pointer = models_dir(home) / ACTIVE_FILE
    if not pointer.exists():
        return None
    path = Path(pointer.read_text(encoding="utf-8").strip())
    if not (path / MANIFEST_FILE).exists():
        raise TriageError(ErrorCode.MODEL_UNAVAILABLE, f"the active model folder {path} has no manifest")
    return path


def list_models(home: str | Path) -> list[RegisteredModel]:
    active = active_path(home)
    folders = [SHIPPED_DEFAULT] if (SHIPPED_DEFAULT / MANIFEST_FILE).exists() else []
    folders += sorted(p.parent for p in models_dir(home).rglob(MANIFEST_FILE))
    effective = active or (folders[0] if folders and folders[0] == SHIPPED_DEFAULT else None)
    return [
        RegisteredModel(folder, read_manifest(folder), folder.resolve() == (effective or Path()).resolve())
        for folder in dict.fromkeys(f.resolve() for f in folders)
    ]


def activate(home: str | Path, folder: str | Path) -> ModelManifest:
    """Make `folder` the model that scores, after checking its weights against the manifest's sha256."""
    from .artefact import load_state_dict  # torch: only this command needs it

    folder = Path(folder).resolve()
    manifest, _ = load_state_dict(folder)
    target = models_dir(home)
    target.mkdir(parents=True, exist_ok=True)
    temporary = target / f".{ACTIVE_FILE}.tmp"
    temporary.write_text(str(folder), encoding="utf-8")
    temporary.replace(target / ACTIVE_FILE)  # atomic: a reader sees the old or the new pointer, never half
    return manifest
