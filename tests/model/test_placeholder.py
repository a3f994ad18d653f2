"""The untrained placeholder: clearly labelled, idempotent, deterministic, and it never flags anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.model._xrv import import_xrv
from radtriage.model.artefact import MANIFEST_FILE, WEIGHTS_FILE, load_state_dict, read_manifest
from radtriage.model.placeholder import PLACEHOLDER_NAME, PLACEHOLDER_VERSION, ensure_placeholder


def test_the_placeholder_says_what_it_is(placeholder_dir: Path) -> None:
    manifest = read_manifest(placeholder_dir)
    assert manifest.placeholder is True
    assert manifest.identity.placeholder is True
    assert manifest.name == "untrained-placeholder"
    assert manifest.architecture == "xrv-densenet121"
    assert "NOT FOR CLINICAL USE" in manifest.intended_use
    assert "meaningless" in manifest.intended_use
    assert set(manifest.labels) <= set(import_xrv().datasets.default_pathologies)
    assert {"Pneumothorax", "Effusion", "Edema", "Consolidation", "Pneumonia", "Cardiomegaly"} <= set(manifest.labels)
    assert set(manifest.thresholds.values()) == {0.5}
    load_state_dict(placeholder_dir)  # verifies against its own hash


def test_ensure_placeholder_is_idempotent(placeholder_dir: Path) -> None:
    models_dir = placeholder_dir.parents[1]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in placeholder_dir.iterdir()}
    assert ensure_placeholder(models_dir) == placeholder_dir
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in placeholder_dir.iterdir()}
    assert after == before
    assert sorted(os.listdir(placeholder_dir.parent)) == [PLACEHOLDER_VERSION]


def test_the_weights_are_the_same_every_time_and_the_global_rng_is_untouched(
    placeholder_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = ensure_placeholder(tmp_path)
    assert torch.equal(torch.rand(3), expected_next)  # the fixed seed did not leak into the caller's RNG
    assert read_manifest(again).weights_sha256 == read_manifest(placeholder_dir).weights_sha256
    assert (again / WEIGHTS_FILE).read_bytes() == (placeholder_dir / WEIGHTS_FILE).read_bytes()


def test_another_model_in_the_placeholder_folder_is_refused(placeholder_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / PLACEHOLDER_NAME / PLACEHOLDER_VERSION
    dest.mkdir(parents=True)
    manifest = json.loads((placeholder_dir / MANIFEST_FILE).read_text())
    manifest["placeholder"] = False
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(TriageError) as caught:
        ensure_placeholder(tmp_path)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
