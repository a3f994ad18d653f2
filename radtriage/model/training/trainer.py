"""Fine-tune a network on labelled chest X-rays: deterministic, resumable, with progress bars.

A run lives in one folder::

    config.json        the recipe (`TrainingConfig`); the run is reproducible from it
    split.csv          image -> train / val / test, by patient (checked for leakage whenever it is read)
    split_counts.json  images, patients and abnormal images per split and source
    checkpoint.pt      after every epoch: weights, optimiser, schedule, random states, history (resume point)
    model.pt           the weights of the best epoch (lowest validation loss), a plain state dict
    history.json       loss and validation metrics per epoch
    training.json      what was trained on, the best epoch, and how long each part took

Starting `train` again on the same folder resumes from ``checkpoint.pt``; a folder that holds another config is
refused rather than mixed. Every random choice (shuffling, augmentation, dropout) comes from seeded generators
whose states the checkpoint keeps, so an interrupted and resumed run ends with the same weights as an
uninterrupted one.

The loss is binary cross-entropy per finding, ignoring findings a source does not label (NaN) and weighted per
image so that the view (AP/PA) says nothing about normal vs abnormal (`data.view_balancing_weights`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn
from tqdm import tqdm

from ..datasets import LabelledImage, read_labelled_folder
from ..evaluation.metrics import auroc
from .config import CONFIG_FILE, EFFICIENTNET_LITE0, FROM_SCRATCH, TrainingConfig
from .data import augment, label_matrix, load_inputs, view_balancing_weights
from .split import SPLIT_CSV, read_split, split_by_patient, split_counts, write_split

log = logging.getLogger(__name__)

CHECKPOINT_FILE: Final = "checkpoint.pt"
MODEL_FILE: Final = "model.pt"
HISTORY_FILE: Final = "history.json"
TRAINING_FILE: Final = "training.json"
SPLIT_COUNTS_FILE: Final = "split_counts.json"


class RunFolderError(ValueError):
    """The run folder cannot be used for this request (another config, no trained model, ...)."""


# ------------------------------------------------------------------------------------------- data


def collect_images(config: TrainingConfig) -> list[LabelledImage]:
    """Every labelled image of the configured folders (subsampled by whole patients for development runs)."""
    images: list[LabelledImage] = []
    for folder in config.data:
        source_images = read_labelled_folder(folder)
        if config.max_images_per_source is not None:
            source_images = _subsample_patients(source_images, config.max_images_per_source, config.split_seed)
        images.extend(source_images)
    if not images:
        raise RunFolderError("the training config names no data (set 'data' to one or more folders)")
    ids = [image.image_id for image in images]
    if len(set(ids)) != len(ids):
        raise RunFolderError("two data folders have the same name; image ids would collide")
    return images


def _subsample_patients(images: Sequence[LabelledImage], limit: int, seed: int) -> list[LabelledImage]:
    by_patient: dict[str, list[LabelledImage]] = defaultdict(list)
    for image in images:
        by_patient[image.patient_id].append(image)
    patients = sorted(by_patient)
    random.Random(seed).shuffle(patients)
    chosen: list[LabelledImage] = []
    for patient in patients:
        if len(chosen) >= limit:
            break
        chosen.extend(by_patient[patient])
    return chosen


def prepare_split(config: TrainingConfig, run_dir: str | os.PathLike[str]
                  ) -> tuple[list[LabelledImage], dict[str, str]]:
    """The run's images and their split: read from ``split.csv`` when the run has one, else made and saved."""
    run = Path(run_dir)
    images = collect_images(config)
    split_file = run / SPLIT_CSV
    if split_file.exists():
        assignment = read_split(split_file, images)
    else:
        assignment = split_by_patient(images, config.split_seed, config.split_fractions)
        write_split(split_file, images, assignment)
        _write_json(run / SPLIT_COUNTS_FILE, split_counts(images, assignment))
    return images, assignment


def images_in(images: Sequence[LabelledImage], assignment: dict[str, str], split: str,
              sources: Sequence[str] | None, labels: Sequence[str]) -> list[LabelledImage]:
    """Images of `split` (and `sources`, when given) with at least one of `labels` known."""
    return [
        image for image in images
        if assignment[image.image_id] == split
        and (sources is None or image.source in sources)
        and any(label in image.labels for label in labels)
    ]


def cache_dir_for(config: TrainingConfig, run_dir: str | os.PathLike[str]) -> Path:
    return Path(config.cache_dir) if config.cache_dir else Path(run_dir).resolve().parent / ".cache"


# ---------------------------------------------------------------------------------------- network


def build_training_network(config: TrainingConfig) -> nn.Module:
    """The network to fine-tune: its starting weights as the config says, a new head for `config.labels`."""
    outputs = len(config.labels)
    if config.architecture == EFFICIENTNET_LITE0:
        from ..networks.efficientnet_lite0 import build_efficientnet_lite0, pretrained_efficientnet_lite0

        if config.pretrained == FROM_SCRATCH:
            return build_efficientnet_lite0(outputs)
        lite0 = pretrained_efficientnet_lite0(outputs)
        if config.frozen_blocks:
            lite0.stem.requires_grad_(False)
            lite0.blocks[:config.frozen_blocks].requires_grad_(False)
        return lite0

    from .._xrv import import_xrv
    from ..architectures import XRV_DENSENET121, architecture, load_xrv_published_weights

    build = architecture(XRV_DENSENET121).build
    if config.pretrained == FROM_SCRATCH:
        return build(outputs)
    published = load_xrv_published_weights(config.pretrained, config.xrv_weights_name)
    network = build(len(import_xrv().models.model_urls[config.xrv_weights_name]["labels"]))
    network.load_state_dict(published, strict=True)
    # Keep the published features, replace the classifier: its outputs are torchxrayvision's labels, not ours.
    classifier = network.get_submodule("classifier")
    if not isinstance(classifier, nn.Linear):
        raise TypeError(f"expected torchxrayvision's classifier to be nn.Linear, not {type(classifier).__name__}")
    network.classifier = nn.Linear(classifier.in_features, outputs)
    return network


def load_trained_network(config: TrainingConfig, run_dir: str | os.PathLike[str]) -> nn.Module:
    """The run's best weights in an untrained network of the same architecture, in eval mode."""
    model_file = Path(run_dir) / MODEL_FILE
    if not model_file.exists():
        raise RunFolderError(f"{run_dir}: no {MODEL_FILE}; train first")
    network = build_training_network(config.replace(pretrained=FROM_SCRATCH))
    network.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=True), strict=True)
    return network.eval()


# ------------------------------------------------------------------------------------------ loops


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy over the known (non-NaN) targets, each image weighted by `weights`."""
    known = ~torch.isnan(targets)
    per_entry = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(targets), reduction="none")
    entry_weights = known.float() if weights is None else known.float() * weights[:, None]
    return (per_entry * entry_weights).sum() / entry_weights.sum().clamp(min=1e-8)


def predict_logits(network: nn.Module, inputs: torch.Tensor, batch_size: int = 32, device: str = "cpu"
                   ) -> torch.Tensor:
    """Logits, (N, outputs), in eval mode, on the CPU."""
    network.eval()
    rows: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], batch_size):
            rows.append(network(inputs[start:start + batch_size].to(device)).float().cpu())
    return torch.cat(rows) if rows else torch.empty((0, 0))


def predict(network: nn.Module, inputs: torch.Tensor, batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """Probabilities (sigmoid of the logits, as the scorer computes them), (N, outputs)."""
    probabilities: np.ndarray = torch.sigmoid(predict_logits(network, inputs, batch_size, device)).numpy()
    return probabilities


def _lr_lambda(total_steps: int, warmup_steps: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _validation_metrics(config: TrainingConfig, probabilities: np.ndarray, targets: torch.Tensor,
                        images: Sequence[LabelledImage]) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {}
    known_targets = targets.numpy()
    for column, label in enumerate(config.labels):
        known = ~np.isnan(known_targets[:, column])
        metrics[f"auroc/{label}"] = auroc(known_targets[known, column], probabilities[known, column])
    abnormal = np.array([image.abnormal if image.abnormal is not None else np.nan for image in images])
    known = ~np.isnan(abnormal)
    metrics["auroc/abnormality"] = (
        auroc(abnormal[known], probabilities[known].max(axis=1)) if known.any() else None
    )
    return metrics


@dataclass(frozen=True)
class TrainingSummary:
    run_dir: Path
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "best_epoch": self.best_epoch, "best_val_loss": self.best_val_loss,
                "epochs_run": self.epochs_run, "seconds": self.seconds}


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def train(config: TrainingConfig, run_dir: str | os.PathLike[str], *, resume: bool = True, device: str = "auto",
          num_threads: int | None = None, stop_after_epochs: int | None = None) -> TrainingSummary:
    """Train (or resume) the run in `run_dir`; the CLI's ``radtriage model train``.

    `stop_after_epochs` ends this call after that many epochs (the run can be resumed later), for budgets and
    tests. `device` "auto" picks CUDA when available, else the CPU.
    """
    started = time.monotonic()
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    _claim_run_folder(run, config)
    device = resolve_device(device)
    if num_threads:
        torch.set_num_threads(num_threads)

    images, assignment = prepare_split(config, run)
    train_images = images_in(images, assignment, "train", config.train_sources, config.labels)
    val_images = images_in(images, assignment, "val", config.train_sources, config.labels)
    if not train_images:
        raise RunFolderError(f"{run}: no training images with the labels {list(config.labels)}")
    cache = cache_dir_for(config, run)
    x_train = load_inputs(train_images, config.image_size, cache, description="preprocessing train")
    x_val = load_inputs(val_images, config.image_size, cache, description="preprocessing val")
    y_train, y_val = label_matrix(train_images, config.labels), label_matrix(val_images, config.labels)
    weights = view_balancing_weights(train_images) if config.balance_views else torch.ones(len(train_images))
    preprocessing_seconds = time.monotonic() - started

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    # channels-last is the layout CPU convolution kernels (oneDNN) run fastest in, depthwise ones especially.
    network = build_training_network(config).to(device).to(memory_format=torch.channels_last)
    trainable = [parameter for parameter in network.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_images) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, warmup_steps=min(steps_per_epoch, max(1, total_steps // 10)))
    )
    history: list[dict[str, Any]] = []
    best_val_loss, best_epoch, start_epoch = math.inf, 0, 0
    checkpoint_file = run / CHECKPOINT_FILE
    if resume and checkpoint_file.exists():
        state = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, start_epoch = list(state["history"]), int(state["epoch"])
        best_val_loss, best_epoch = float(state["best_val_loss"]), int(state["best_epoch"])
        log.info("resuming %s after epoch %d", run, start_epoch)

    epochs_this_call = 0
    epoch_bar = tqdm(range(start_epoch, config.epochs), desc="epochs", unit="epoch", initial=start_epoch,
                     total=config.epochs, mininterval=1.0)
    for epoch in epoch_bar:
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            break
        epoch_started = time.monotonic()
        network.train()
        order = torch.randperm(len(train_images), generator=generator)
        running, seen = 0.0, 0
        batches = tqdm(range(0, len(order), config.batch_size), desc=f"epoch {epoch + 1}", unit="batch",
                       leave=False, mininterval=2.0)
        for start in batches:
            index = order[start:start + config.batch_size]
            inputs = augment(x_train[index], config.augmentation, generator)
            inputs = inputs.to(device).contiguous(memory_format=torch.channels_last)
            loss = masked_bce(network(inputs), y_train[index].to(device), weights[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            running += float(loss.detach()) * len(index)
            seen += len(index)
            batches.set_postfix(loss=f"{running / seen:.4f}")
        train_loss = running / max(seen, 1)

        val_logits = predict_logits(network, x_val, device=device)
        probabilities = torch.sigmoid(val_logits).numpy()
        val_loss = float(masked_bce(val_logits, y_val)) if len(val_images) else train_loss
        record: dict[str, Any] = {
            "epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
            "learning_rate": scheduler.get_last_lr()[0], "seconds": time.monotonic() - epoch_started,
        }
        if len(val_images):
            record.update(_validation_metrics(config, probabilities, y_val, val_images))
        history.append(record)
        if val_loss < best_val_loss:
            best_val_loss, best_epoch = val_loss, epoch + 1
            _save_atomically({k: v.detach().cpu().contiguous().clone() for k, v in network.state_dict().items()},
                             run / MODEL_FILE)
        _save_atomically({
            "model": network.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
            "epoch": epoch + 1, "best_val_loss": best_val_loss, "best_epoch": best_epoch,
        }, checkpoint_file)
        epoch_bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}",
                              auroc=_format(record.get("auroc/abnormality")))
        epochs_this_call += 1
    epoch_bar.close()

    seconds = time.monotonic() - started
    _write_json(run / HISTORY_FILE, history)
    _write_json(run / TRAINING_FILE, {
        "train_images": len(train_images), "val_images": len(val_images),
        "train_patients": len({i.patient_id for i in train_images}),
        "best_epoch": best_epoch, "best_val_loss": best_val_loss,
        "epochs_completed": len(history), "epochs_configured": config.epochs,
        "device": device, "threads": torch.get_num_threads(),
        "seconds_preprocessing_this_call": preprocessing_seconds, "seconds_this_call": seconds,
        "seconds_epochs_total": sum(float(r["seconds"]) for r in history),
    })
    return TrainingSummary(run, best_epoch, best_val_loss, len(history), seconds)


def _format(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _claim_run_folder(run: Path, config: TrainingConfig) -> None:
    config_file = run / CONFIG_FILE
    if config_file.exists():
        existing = TrainingConfig.load(config_file)
        if existing != config:
            raise RunFolderError(f"{run} holds a run with another config; use a new folder for a new recipe")
    else:
        config.save(config_file)


def _save_atomically(obj: Any, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=float) + "\n", encoding="utf-8")


__all__ = [
    "CHECKPOINT_FILE",
    "HISTORY_FILE",
    "MODEL_FILE",
    "RunFolderError",
    "TrainingSummary",
    "build_training_network",
    "collect_images",
    "images_in",
    "load_trained_network",
    "masked_bce",
    "predict",
    "predict_logits",
    "prepare_split",
    "train",
]
