"""A model is a versioned artefact folder: ``weights.pt`` (a PyTorch state dict) and ``manifest.json``.

The manifest says what the weights are for (labels, operating-point thresholds, input size, the preprocessing
version they were trained with, intended use, limitations, training data and their licences) and pins the weights
by SHA-256. The service refuses weights whose hash does not match the manifest, a preprocessing version this code
does not implement, and any weights file that is not a plain state dict: weights are always read with
``torch.load(..., weights_only=True)``, which cannot run code hidden in a pickle.

Artefacts are immutable: `write_artefact` creates a new folder (atomically, through a rename) and refuses to
overwrite one. A new model, or a re-trained one, is a new version in a new folder.

Reading a manifest needs no torch, so processes that only describe the model (the web door) stay light.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radtriage.app.core.domain import ModelIdentity
from radtriage.app.core.errors import ErrorCode, TriageError

from .preprocessing import KNOWN_PREPROCESSING_VERSIONS

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "weights.pt"
MANIFEST_FILE = "manifest.json"
#: Version of the manifest's own layout; bump it when a field changes meaning.
MANIFEST_FORMAT = 1

_SHA256_HEX_LENGTH = 64


@dataclass(frozen=True)
class ModelManifest:
    """What a set of weights is, what it is for, and the hash that pins it.

    The constructor validates, so an inconsistent manifest (a label without a threshold, a threshold outside
    [0, 1]) cannot be built, whether in code or from a file.
    """

    name: str
    version: str
    #: Key into `radtriage.model.architectures` (e.g. "xrv-densenet121", "efficientnet-lite0").
    architecture: str
    #: Output order of the network; torchxrayvision label names (``xrv.datasets.default_pathologies``).
    labels: tuple[str, ...]
    #: Operating point per label: a finding is positive when its probability is >= its threshold.
    thresholds: Mapping[str, float]
    input_size: int
    preprocessing_version: str
    intended_use: str
    limitations: tuple[str, ...]
    #: Each entry is ``{"name": ..., "licence": ...}`` (more keys, e.g. "url", are allowed).
    training_data: tuple[Mapping[str, str], ...]
    #: True only for the untrained stand-in; every result it produces says so.
    placeholder: bool = False
    #: Hex SHA-256 of ``weights.pt``; filled in by `write_artefact`.
    weights_sha256: str = ""
    #: ISO 8601 UTC time the artefact was written; filled in by `write_artefact` when empty.
    created_at: str = ""
    #: The evaluation report (metrics per label, data set, date), when there is one.
    evaluation: Mapping[str, Any] | None = None
    format: int = MANIFEST_FORMAT

    def __post_init__(self) -> None:
        # Accept lists (as JSON gives them) but store tuples so the manifest stays immutable.
        if isinstance(self.limitations, str):
            object.__setattr__(self, "limitations", (self.limitations,))
        for name in ("labels", "limitations", "training_data"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ValueError(f"{name} must be a list")
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.thresholds, Mapping):
            raise ValueError("thresholds must map each label to a number")
        object.__setattr__(self, "thresholds", dict(self.thresholds))
        if not all(isinstance(entry, Mapping) for entry in self.training_data):
            raise ValueError("each training_data entry must be an object with 'name' and 'licence'")
        object.__setattr__(self, "training_data", tuple(dict(entry) for entry in self.training_data))
        self._validate()

    def _validate(self) -> None:
        for name in ("name", "version", "architecture", "preprocessing_version", "intended_use"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string")
        if self.format != MANIFEST_FORMAT:
            raise ValueError(f"manifest format {self.format!r} is not supported (this code reads {MANIFEST_FORMAT})")
        if not self.labels:
            raise ValueError("labels must not be empty")
        if not all(isinstance(label, str) and label.strip() for label in self.labels):
            raise ValueError("every label must be a non-empty string")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if set(self.thresholds) != set(self.labels):
            missing = sorted(set(self.labels) - set(self.thresholds))
            extra = sorted(set(self.thresholds) - set(self.labels))
            raise ValueError(f"thresholds must name exactly the labels (missing {missing}, not a label {extra})")
        for label, threshold in self.thresholds.items():
            if isinstance(threshold, bool) or not isinstance(threshold, int | float):
                raise ValueError(f"threshold for {label!r} must be a number")
            if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
                raise ValueError(f"threshold for {label!r} must be in [0, 1], got {threshold!r}")
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or self.input_size < 1:
            raise ValueError(f"input_size must be a positive integer, got {self.input_size!r}")
        if not all(isinstance(item, str) for item in self.limitations):
            raise ValueError("limitations must be strings")
        for entry in self.training_data:
            if not all(isinstance(entry.get(key), str) and entry[key].strip() for key in ("name", "licence")):
                raise ValueError("each training_data entry needs a non-empty 'name' and 'licence'")
        if not isinstance(self.placeholder, bool):
            raise ValueError("placeholder must be true or false")
        if self.weights_sha256 and not _is_sha256_hex(self.weights_sha256):
            raise ValueError("weights_sha256 must be 64 lower-case hexadecimal digits")
        if self.evaluation is not None and not isinstance(self.evaluation, Mapping):
            raise ValueError("evaluation must be an object")

    @property
    def identity(self) -> ModelIdentity:
        """The identity recorded with every result this model produces."""
        return ModelIdentity(
            name=self.name, version=self.version, sha256=self.weights_sha256, placeholder=self.placeholder
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "placeholder": self.placeholder,
            "labels": list(self.labels),
            "thresholds": dict(self.thresholds),
            "input_size": self.input_size,
            "preprocessing_version": self.preprocessing_version,
            "intended_use": self.intended_use,
            "limitations": list(self.limitations),
            "training_data": [dict(entry) for entry in self.training_data],
            "weights_sha256": self.weights_sha256,
            "created_at": self.created_at,
            "evaluation": None if self.evaluation is None else dict(self.evaluation),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelManifest:
        """Build from a parsed manifest; unknown or missing keys are errors (`ValueError`)."""
        if not isinstance(data, Mapping):
            raise ValueError("the manifest must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown manifest keys: {', '.join(unknown)}")
        required = {f.name for f in dataclasses.fields(cls) if _is_required(f)}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"missing manifest keys: {', '.join(missing)}")
        return cls(**data)


def _is_required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _is_sha256_hex(text: str) -> bool:
    return len(text) == _SHA256_HEX_LENGTH and all(c in "0123456789abcdef" for c in text)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unpickling_failure(exc: BaseException) -> str:
    """A one-line reason for a failed ``torch.load(..., weights_only=True)``.

    torch's own message runs to a page and suggests ``weights_only=False``, which is exactly what must not be done
    with a file from elsewhere; keep only the offending global when there is one.
    """
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if found:
        return f"it refers to {found.group(1)}, which is not allowed in a weights file"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}"[:300]


def _unavailable(directory: Path, why: str) -> TriageError:
    # Paths and hashes are not patient data; they tell the operator which artefact to look at.
    return TriageError(ErrorCode.MODEL_UNAVAILABLE, f"model artefact {directory}: {why}")


def read_manifest(directory: str | os.PathLike[str]) -> ModelManifest:
    """Read and validate ``manifest.json``; raises MODEL_UNAVAILABLE when it is missing or invalid."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _unavailable(directory, f"no {MANIFEST_FILE}") from None
    except OSError as exc:
        raise _unavailable(directory, f"{MANIFEST_FILE} cannot be read ({exc.strerror})") from exc
    try:
        return ModelManifest.from_dict(json.loads(text))
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise _unavailable(directory, f"{MANIFEST_FILE} is not valid: {exc}") from exc


def write_artefact(
    dest_dir: str | os.PathLike[str], manifest: ModelManifest, state_dict: Mapping[str, torch.Tensor]
) -> ModelManifest:
    """Write ``weights.pt`` and ``manifest.json`` into a new folder `dest_dir`; return the manifest as written.

    The returned manifest carries the SHA-256 of the weights file (and ``created_at`` when it was empty). The
    folder appears complete or not at all: files are written to a hidden sibling and renamed into place.
    Raises `FileExistsError` when `dest_dir` exists.
    """
    import torch

    dest = Path(dest_dir)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; an artefact is never overwritten, write a new version")
    if manifest.preprocessing_version not in KNOWN_PREPROCESSING_VERSIONS:
        raise ValueError(f"unknown preprocessing version {manifest.preprocessing_version!r}")
    tensors = _plain_state_dict(state_dict)

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        torch.save(tensors, staging / WEIGHTS_FILE)
        written = dataclasses.replace(
            manifest,
            weights_sha256=sha256_of_file(staging / WEIGHTS_FILE),
            created_at=manifest.created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        )
        (staging / MANIFEST_FILE).write_text(json.dumps(written.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.rename(staging, dest)  # atomic; fails if another writer created dest meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


def _plain_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError("a state dict maps parameter names to tensors")
        tensors[key] = value.detach().cpu()
    if not tensors:
        raise ValueError("the state dict is empty")
    return tensors


def load_state_dict(directory: str | os.PathLike[str]) -> tuple[ModelManifest, dict[str, torch.Tensor]]:
    """The manifest and the verified weights of an artefact.

    Refuses (MODEL_UNAVAILABLE) an invalid manifest, a preprocessing version this code does not implement, a
    missing weights file, weights whose SHA-256 differs from the manifest's, and a file that is not a plain state
    dict. The file is read into memory once, and that same copy is hashed and deserialised, so it cannot change
    between the check and the load.
    """
    import torch

    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest.preprocessing_version not in KNOWN_PREPROCESSING_VERSIONS:
        known = ", ".join(sorted(KNOWN_PREPROCESSING_VERSIONS))
        raise _unavailable(
            directory,
            f"preprocessing version {manifest.preprocessing_version!r} is not implemented here (known: {known})",
        )
    if not manifest.weights_sha256:
        raise _unavailable(directory, "the manifest pins no weights_sha256")
    try:
        data = (directory / WEIGHTS_FILE).read_bytes()
    except FileNotFoundError:
        raise _unavailable(directory, f"no {WEIGHTS_FILE}") from None
    except OSError as exc:
        raise _unavailable(directory, f"{WEIGHTS_FILE} cannot be read ({exc.strerror})") from exc

    actual = sha256_hex(data)
    if actual != manifest.weights_sha256:
        raise _unavailable(
            directory,
            f"{WEIGHTS_FILE} does not match its manifest: expected sha256 {manifest.weights_sha256[:12]}..., "
            f"found {actual[:12]}...; refusing to load it",
        )
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _unavailable(
            directory, f"{WEIGHTS_FILE} is not a loadable weights-only state dict ({unpickling_failure(exc)})"
        ) from exc
    if not isinstance(loaded, Mapping):
        raise _unavailable(directory, f"{WEIGHTS_FILE} holds a {type(loaded).__name__}, not a state dict")
    try:
        return manifest, _plain_state_dict(loaded)
    except ValueError as exc:
        raise _unavailable(directory, f"{WEIGHTS_FILE}: {exc}") from exc


__all__ = [
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "ModelManifest",
    "load_state_dict",
    "read_manifest",
    "sha256_hex",
    "sha256_of_file",
    "unpickling_failure",
    "write_artefact",
]
