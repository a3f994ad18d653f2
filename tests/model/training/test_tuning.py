"""The Optuna search: recorded per trial, resumable from its SQLite study, and it hands back a trainable recipe."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from radtriage.model.training.config import TrainingConfig
from radtriage.model.training.tuning import SearchSpace, tune

from .conftest import tiny_config


def test_samples_stay_within_the_bounds() -> None:
    space = SearchSpace(learning_rate=(1e-4, 1e-3), image_size=(64, 96), epochs=(2, 3))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(200):
        trial = study.ask()
        params = space.suggest(trial)
        study.tell(trial, 0.0)
        assert 1e-4 <= params["learning_rate"] <= 1e-3
        assert params["image_size"] in (64, 96) and 2 <= params["epochs"] <= 3
        assert params["augmentation"] in ("none", "light", "strong")


def test_search_records_trials_resumes_and_saves_the_best_recipe(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    site, _ = tiny_data
    base = tiny_config(site, cache_dir=str(tmp_path / "cache"))
    space = SearchSpace(image_size=(32,), epochs=(1, 1))
    first = tune(base, tmp_path / "search", trials=1, seed=3, space=space)
    assert [t["trial"] for t in first["trials"]] == [1]
    trial_one = (tmp_path / "search" / "trials" / "trial-001" / "model.pt").stat().st_mtime_ns

    record = tune(base, tmp_path / "search", trials=2, seed=3, space=space)
    assert [t["trial"] for t in record["trials"]] == [1, 2]
    assert (tmp_path / "search" / "trials" / "trial-001" / "model.pt").stat().st_mtime_ns == trial_one  # not re-run
    assert json.loads((tmp_path / "search" / "tuning.json").read_text())["trials"] == record["trials"]
    best = TrainingConfig.load(tmp_path / "search" / "best_config.json")
    assert best.learning_rate == record["best"]["params"]["learning_rate"]
    assert best.data == base.data
    study = optuna.load_study(study_name="radtriage-tune", storage=f"sqlite:///{tmp_path / 'search' / 'optuna.db'}")
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2

    with pytest.raises(ValueError, match="other settings"):
        tune(base, tmp_path / "search", trials=2, seed=4, space=space)
