"""A bounded hyperparameter search over the fine-tuning recipe, with Optuna.

Searched: learning rate (log-uniform), augmentation strength, image size and number of epochs, within the bounds
of `SearchSpace`. Every trial is a full `train` run in ``<search>/trials/trial-NNN`` on the same patient split
(same split seed), scored on the validation split only: the AUROC for "any abnormality" at the trial's best
epoch (the one with the lowest validation loss, the same rule that picks the weights). The test split is never
looked at, so the search cannot leak into the held-out evaluation.

Optuna's TPE sampler (seeded) proposes the trials; the study lives in an SQLite file (``<search>/optuna.db``), so an
interrupted search resumes where it stopped: finished trials are never run again, and a trial that was cut off is
marked failed and replaced. ``tuning.json`` (a readable summary) is rewritten after each trial; the best recipe is
saved as ``best_config.json``, ready for ``radtriage model train``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import optuna

from .config import TrainingConfig
from .data import AUGMENTATIONS
from .trainer import HISTORY_FILE, train

TUNING_JSON: Final = "tuning.json"
STUDY_DB: Final = "optuna.db"
STUDY_NAME: Final = "radtriage-tune"
BEST_CONFIG: Final = "best_config.json"


@dataclass(frozen=True)
class SearchSpace:
    """Bounds of the search. Sizes are multiples of 32 (the network's total stride)."""

    learning_rate: tuple[float, float] = (1e-4, 3e-3)
    augmentation: tuple[str, ...] = AUGMENTATIONS
    image_size: tuple[int, ...] = (128, 160, 224)
    epochs: tuple[int, int] = (2, 8)

    def __post_init__(self) -> None:
        low, high = self.learning_rate
        if not 0 < low <= high < 1:
            raise ValueError("learning_rate bounds must satisfy 0 < low <= high < 1")
        if not self.augmentation or any(a not in AUGMENTATIONS for a in self.augmentation):
            raise ValueError(f"augmentation choices must be among {', '.join(AUGMENTATIONS)}")
        if not self.image_size or any(size < 32 for size in self.image_size):
            raise ValueError("image sizes must be at least 32")
        if not 1 <= self.epochs[0] <= self.epochs[1]:
            raise ValueError("epochs bounds must satisfy 1 <= low <= high")

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        low, high = self.learning_rate
        return {
            "learning_rate": float(f"{trial.suggest_float('learning_rate', low, high, log=True):.3g}"),
            "augmentation": trial.suggest_categorical("augmentation", list(self.augmentation)),
            "image_size": trial.suggest_categorical("image_size", list(self.image_size)),
            "epochs": trial.suggest_int("epochs", *self.epochs),
        }


def trial_objective(history: list[dict[str, Any]]) -> tuple[float | None, int]:
    """(validation AUROC for abnormality at the lowest-validation-loss epoch, that epoch)."""
    if not history:
        return None, 0
    best = min(history, key=lambda record: record["val_loss"])
    return best.get("auroc/abnormality"), int(best["epoch"])


def tune(base: TrainingConfig, search_dir: str | os.PathLike[str], *, trials: int = 8, seed: int = 0,
         space: SearchSpace | None = None, max_minutes: float | None = None, device: str = "auto",
         num_threads: int | None = None) -> dict[str, Any]:
    """Run (or resume) the search; the CLI's ``radtriage model tune``. Returns what ``tuning.json`` holds.

    `max_minutes` stops starting new trials once that much wall time has passed (a trial in progress finishes).
    """
    if trials < 1:
        raise ValueError("trials must be at least 1")
    space = space or SearchSpace()
    root = Path(search_dir)
    root.mkdir(parents=True, exist_ok=True)
    record_file = root / TUNING_JSON
    record: dict[str, Any] = json.loads(record_file.read_text(encoding="utf-8")) if record_file.exists() else {}
    # Through JSON and back, so that it compares equal to what tuning.json holds (tuples become lists).
    settings = json.loads(json.dumps({"base": base.to_dict(), "space": asdict(space), "seed": seed}))
    if record and record.get("settings") != settings:
        raise ValueError(f"{root} holds a search with other settings; use a new folder")
    record = {"settings": settings, "trials": record.get("trials", [])}

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{(root / STUDY_DB).resolve()}", direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed), load_if_exists=True,
    )
    if study.user_attrs.get("settings", settings) != settings:
        raise ValueError(f"{root} holds a search with other settings; use a new folder")
    study.set_user_attr("settings", settings)
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)  # cut off by an interruption: run anew

    started = time.monotonic()
    while len(record["trials"]) < trials:
        if max_minutes is not None and (time.monotonic() - started) / 60 >= max_minutes:
            record["stopped"] = f"time budget of {max_minutes} min reached before trial {len(record['trials']) + 1}"
            break
        trial = study.ask()
        params = space.suggest(trial)
        number = len(record["trials"]) + 1
        config = base.replace(**params)
        trial_dir = root / "trials" / f"trial-{number:03d}"
        trial_started = time.monotonic()
        shutil.rmtree(trial_dir, ignore_errors=True)  # left by an interrupted trial with other parameters
        train(config, trial_dir, device=device, num_threads=num_threads)
        history = json.loads((trial_dir / HISTORY_FILE).read_text(encoding="utf-8"))
        objective, epoch = trial_objective(history)
        study.tell(trial, objective if objective is not None else float("nan"))
        record["trials"].append({
            "trial": number, "optuna_trial": trial.number, "params": params, "objective": objective,
            "best_epoch": epoch, "val_loss": min(r["val_loss"] for r in history),
            "seconds": time.monotonic() - trial_started, "run_dir": str(trial_dir.relative_to(root)),
        })
        _save(record_file, record)

    scored = [t for t in record["trials"] if t["objective"] is not None]
    if scored:
        best = max(scored, key=lambda t: (t["objective"], -t["val_loss"]))
        record["best"] = best
        # The epoch count stays as searched: the learning-rate schedule spans it, and the run keeps the best epoch.
        base.replace(**best["params"]).save(root / BEST_CONFIG)
    record["objective"] = "validation AUROC for 'any abnormality' at the lowest-validation-loss epoch"
    _save(record_file, record)
    return record


def _save(path: Path, record: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


__all__ = ["BEST_CONFIG", "STUDY_DB", "TUNING_JSON", "SearchSpace", "trial_objective", "tune"]
