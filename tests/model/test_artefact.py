"""Model artefacts: written atomically, pinned by SHA-256, read back only as verified weights-only state dicts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.model.artefact import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    ModelManifest,
    load_state_dict,
    read_manifest,
    write_artefact,
)


def small_manifest(**changes: Any) -> ModelManifest:
    fields: dict[str, Any] = {
        "name": "test-model",
        "version": "1.0.0",
        "architecture": "xrv-densenet121",
        "labels": ["Effusion", "Pneumothorax"],
        "thresholds": {"Effusion": 0.3, "Pneumothorax": 0.1},
        "input_size": 224,
        "preprocessing_version": "xrv-v1",
        "intended_use": "tests",
        "limitations": ["none worth stating"],
        "training_data": [{"name": "nothing", "licence": "CC0-1.0"}],
    }
    fields.update(changes)
    return ModelManifest(**fields)


def small_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return torch.nn.Linear(3, 2).state_dict()


@pytest.fixture
def artefact(tmp_path: Path) -> tuple[Path, ModelManifest]:
    dest = tmp_path / "test-model" / "1.0.0"
    return dest, write_artefact(dest, small_manifest(), small_state_dict())


def refusal(directory: Path) -> TriageError:
    with pytest.raises(TriageError) as caught:
        load_state_dict(directory)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    return caught.value


def edit_manifest(directory: Path, **changes: Any) -> None:
    path = directory / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_written_artefact_round_trips(artefact: tuple[Path, ModelManifest]) -> None:
    directory, written = artefact
    assert written.weights_sha256 == hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert written.created_at  # filled in
    assert read_manifest(directory) == written
    manifest, state = load_state_dict(directory)
    assert manifest == written
    expected = small_state_dict()
    assert state.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor)
    assert sorted(p.name for p in directory.parent.iterdir()) == ["1.0.0"]  # no staging folder left behind


def test_identity_comes_from_the_manifest(artefact: tuple[Path, ModelManifest]) -> None:
    _, written = artefact
    identity = written.identity
    assert (identity.name, identity.version, identity.sha256, identity.placeholder) == (
        "test-model",
        "1.0.0",
        written.weights_sha256,
        False,
    )


def test_an_artefact_is_never_overwritten(artefact: tuple[Path, ModelManifest]) -> None:
    directory, written = artefact
    with pytest.raises(FileExistsError):
        write_artefact(directory, small_manifest(version="2"), {"w": torch.zeros(1)})
    assert read_manifest(directory) == written


def test_changed_weights_are_refused_with_both_hash_prefixes(artefact: tuple[Path, ModelManifest]) -> None:
    directory, written = artefact
    torch.save({k: v + 1 for k, v in small_state_dict().items()}, directory / WEIGHTS_FILE)
    actual = hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest()
    error = refusal(directory)
    assert written.weights_sha256[:12] in error.detail
    assert actual[:12] in error.detail
    assert error.retryable  # an operator can fix the file; the job may then be retried


def test_a_tampered_manifest_hash_is_refused(artefact: tuple[Path, ModelManifest]) -> None:
    directory, _ = artefact
    edit_manifest(directory, weights_sha256="0" * 64)
    assert "does not match" in refusal(directory).detail


def test_an_unknown_preprocessing_version_is_refused(artefact: tuple[Path, ModelManifest]) -> None:
    directory, _ = artefact
    edit_manifest(directory, preprocessing_version="xrv-v0")
    assert "xrv-v0" in refusal(directory).detail


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": ["Effusion"]}, "thresholds must name exactly the labels"),
        ({"thresholds": {"Effusion": 0.3, "Pneumothorax": 1.5}}, "must be in [0, 1]"),
        ({"unexpected": 1}, "unknown manifest keys: unexpected"),
        ({"format": 99}, "format"),
        ({"weights_sha256": "not-a-hash"}, "64 lower-case"),
        ({"training_data": [{"name": "x"}]}, "licence"),
        ({"placeholder": "yes"}, "placeholder"),
    ],
)
def test_an_invalid_manifest_is_refused(
    artefact: tuple[Path, ModelManifest], changes: dict[str, Any], message: str
) -> None:
    directory, _ = artefact
    edit_manifest(directory, **changes)
    error = refusal(directory)
    assert message in error.detail, error.detail


def test_a_manifest_missing_a_key_or_unparseable_is_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    assert "not valid" in refusal(tmp_path).detail
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"name": "x"}))
    assert "missing manifest keys" in refusal(tmp_path).detail
    assert "no manifest.json" in refusal(tmp_path / "absent").detail


class _RunsCodeWhenUnpickled:
    """Unpickling this creates a file: what a malicious weights file could do with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_weights_are_read_weights_only_so_a_pickle_cannot_run_code(tmp_path: Path) -> None:
    directory = tmp_path / "m"
    write_artefact(directory, small_manifest(), small_state_dict())
    marker = tmp_path / "code-ran"
    torch.save({"weight": torch.zeros(2, 3), "bias": _RunsCodeWhenUnpickled(marker)}, directory / WEIGHTS_FILE)
    # The attacker controls the manifest too: give it the matching hash so only weights_only stands in the way.
    edit_manifest(directory, weights_sha256=hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest())
    error = refusal(directory)
    assert "weights-only" in error.detail
    assert "io.open" in error.detail
    assert not marker.exists()


@pytest.mark.parametrize("content", [torch.zeros(3), {"weight": 1.0}, {}])
def test_a_weights_file_that_is_not_a_state_dict_is_refused(tmp_path: Path, content: object) -> None:
    directory = tmp_path / "m"
    write_artefact(directory, small_manifest(), small_state_dict())
    torch.save(content, directory / WEIGHTS_FILE)
    edit_manifest(directory, weights_sha256=hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest())
    refusal(directory)


def test_a_missing_weights_file_is_refused(artefact: tuple[Path, ModelManifest]) -> None:
    directory, _ = artefact
    (directory / WEIGHTS_FILE).unlink()
    assert "no weights.pt" in refusal(directory).detail


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": ["A", "A"], "thresholds": {"A": 0.5}}, "unique"),
        ({"labels": [], "thresholds": {}}, "labels must not be empty"),
        ({"labels": "Effusion"}, "labels must be a list"),
        ({"thresholds": {"Effusion": float("nan"), "Pneumothorax": 0.1}}, r"\[0, 1\]"),
        ({"input_size": 0}, "input_size"),
        ({"name": " "}, "name"),
        ({"thresholds": [0.5, 0.5]}, "thresholds must map"),
        ({"training_data": ["ImageNet"]}, "training_data entry"),
    ],
)
def test_the_constructor_validates(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_manifest(**changes)


def test_writing_refuses_an_unknown_preprocessing_version_and_non_tensors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="preprocessing"):
        write_artefact(tmp_path / "a", small_manifest(preprocessing_version="other"), small_state_dict())
    with pytest.raises(ValueError, match="tensors"):
        write_artefact(tmp_path / "b", small_manifest(), {"w": [1, 2]})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_the_manifest_file_is_plain_json_with_lists(artefact: tuple[Path, ModelManifest]) -> None:
    directory, written = artefact
    data = json.loads((directory / MANIFEST_FILE).read_text())
    assert data["labels"] == ["Effusion", "Pneumothorax"]
    assert data["format"] == 1
    assert ModelManifest.from_dict(data) == written
    assert dataclasses.replace(written, evaluation={"auroc": {"Effusion": 0.9}}).to_dict()["evaluation"] == {
        "auroc": {"Effusion": 0.9}
    }
