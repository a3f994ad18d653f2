"""Evaluation of a run, and its release as a verified artefact that the service's scorer loads."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.model.artefact import load_state_dict, sha256_of_file
from radtriage.model.evaluation.report import evaluate_run
from radtriage.model.training.release import release_model
from radtriage.model.training.trainer import MODEL_FILE, RunFolderError


@pytest.fixture(scope="module")
def evaluated_run(tiny_run: Path) -> Path:
    evaluate_run(tiny_run, bootstrap=50)
    return tiny_run


def test_evaluation_outputs(evaluated_run: Path) -> None:
    out = evaluated_run / "evaluation"
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert set(evaluation["thresholds"]) == {"Pneumonia", "Effusion", "abnormality"}
    held = evaluation["held_out"]["groups"]
    assert {"all", "source=site", "view=PA", "sex=F"} <= set(held)
    metrics = held["source=site"]["abnormality"]
    assert {"auroc", "auroc_ci95", "recall", "specificity", "precision", "f1", "accuracy", "ece"} <= set(metrics)
    # The external source was never trained on: all its images are evaluated, "todo" ones have no truth.
    assert evaluation["external"]["images"] == 6
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    site_test = [r for r in rows if r["split"] == "test" and r["source"] == "site"]
    assert held["source=site"]["abnormality"]["n"] == len(site_test) > 0
    assert {r["role"] for r in rows if r["source"] == "ext"} == {"external"}
    for plot in evaluation["plots"]:
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Held-out test split" in (out / "report.md").read_text()


def test_release_writes_a_verified_artefact_with_a_model_card(evaluated_run: Path, tmp_path: Path) -> None:
    dest = tmp_path / "models" / "tiny" / "1"
    manifest = release_model(evaluated_run, dest, name="tiny", version="1")
    assert manifest.weights_sha256 == sha256_of_file(dest / "weights.pt")
    assert manifest.labels == ("Pneumonia", "Effusion") and manifest.input_size == 32
    assert not manifest.placeholder and manifest.evaluation is not None
    assert {entry["role"] for entry in manifest.training_data} >= {"external evaluation only"}
    card = (dest / "MODEL_CARD.md").read_text()
    assert manifest.weights_sha256 in card and "## Limitations" in card and "## Evaluation" in card
    assert (dest / "evaluation.json").is_file()
    loaded_manifest, state = load_state_dict(dest)
    assert loaded_manifest == manifest
    trained = torch.load(evaluated_run / MODEL_FILE, weights_only=True)
    assert all(torch.equal(state[name], tensor) for name, tensor in trained.items())
    assert [p.name for p in dest.parent.iterdir()] == ["1"]  # no staging folder left behind


def test_release_loads_and_scores_through_the_service_scorer(evaluated_run: Path, tmp_path: Path) -> None:
    from radtriage.model.scorer import XrvScorer

    dest = tmp_path / "half"
    manifest = release_model(evaluated_run, dest, name="tiny", version="1", weights_dtype="float16")
    scorer = XrvScorer.from_artefact(dest, max_threads=None)
    assert scorer.identity.sha256 == manifest.weights_sha256
    image = scorer.prepare_array(torch.rand(48, 40).numpy())
    findings = scorer.score(image)
    assert [f.label for f in findings] == ["Pneumonia", "Effusion"]
    assert all(0.0 <= f.probability <= 1.0 for f in findings)
    assert [f.threshold for f in findings] == [manifest.thresholds["Pneumonia"], manifest.thresholds["Effusion"]]


def test_tampered_weights_are_refused(evaluated_run: Path, tmp_path: Path) -> None:
    dest = tmp_path / "tampered"
    release_model(evaluated_run, dest, version="1")
    data = bytearray((dest / "weights.pt").read_bytes())
    data[-100] ^= 0xFF
    (dest / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(TriageError) as raised:
        load_state_dict(dest)
    assert raised.value.code is ErrorCode.MODEL_UNAVAILABLE and "does not match its manifest" in raised.value.detail


def test_release_refuses_to_overwrite_and_leaves_nothing_when_it_fails(evaluated_run: Path, tmp_path: Path) -> None:
    release_model(evaluated_run, tmp_path / "v1", version="1")
    with pytest.raises(FileExistsError):
        release_model(evaluated_run, tmp_path / "v1", version="1")

    broken = tmp_path / "broken-run"
    shutil.copytree(evaluated_run, broken)
    torch.save({"classifier.weight": torch.zeros(3, 1280)}, broken / MODEL_FILE)  # weights of another network
    with pytest.raises(RunFolderError, match="does not fit efficientnet-lite0 with 2 labels"):
        release_model(broken, tmp_path / "v2", version="2")
    unevaluated = tmp_path / "unevaluated-run"
    shutil.copytree(evaluated_run, unevaluated)
    shutil.rmtree(unevaluated / "evaluation")
    with pytest.raises(RunFolderError, match="evaluate the run first"):
        release_model(unevaluated, tmp_path / "v3", version="3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken-run", "unevaluated-run", "v1"]
