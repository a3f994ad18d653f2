"""Evaluate a trained run on its held-out data: metrics, operating points, subgroups, plots and a report.

What is measured where
----------------------
* **Operating points** come from the *validation* split of the sources trained on: per finding, the highest
  threshold whose sensitivity there is at least the config's target (`metrics.threshold_for_sensitivity`).
  They are fixed before the test split is looked at.
* **Held-out** metrics use the *test* split (patients never seen in training or threshold choice), overall and
  by source, view (AP/PA, also within each source), sex and age band.
* **External** metrics use every image of the sources that were not trained on (by default the COVID-19
  collection): a check on images from other hospitals, devices and publications.
* "any abnormality" is scored as the highest finding probability (`abnormality_score`) and compared with the
  source's normal/abnormal label.

Output, in ``<run>/evaluation/``: ``evaluation.json`` (everything), ``predictions.csv`` (one row per image),
``roc_<target>.png`` and ``calibration_<target>.png``, and ``report.md``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..datasets import LabelledImage, age_band
from .metrics import calibration_bins, finding_metrics, roc_curve, threshold_for_sensitivity
from .plots import Series, reliability_plot, roc_plot

EVALUATION_DIR: Final = "evaluation"
EVALUATION_JSON: Final = "evaluation.json"
REPORT_MD: Final = "report.md"
PREDICTIONS_CSV: Final = "predictions.csv"
ABNORMALITY: Final = "abnormality"
#: A group is drawn on a ROC plot only with at least this many cases of each class.
MIN_CLASS_FOR_ROC_PLOT: Final = 5
#: Used only when the validation split has no positive case of a finding (then flagged in the JSON).
FALLBACK_THRESHOLD: Final = 0.5


def abnormality_score(probabilities: np.ndarray) -> np.ndarray:
    """The score for "any abnormal finding": the highest finding probability of each image (row)."""
    if probabilities.ndim != 2 or probabilities.shape[1] == 0:
        raise ValueError("expected (images, findings) probabilities")
    scores: np.ndarray = probabilities.max(axis=1)
    return scores


def _truth(images: Sequence[LabelledImage], target: str) -> np.ndarray:
    if target == ABNORMALITY:
        return np.array([np.nan if i.abnormal is None else i.abnormal for i in images], dtype=np.float64)
    return np.array([i.labels.get(target, np.nan) for i in images], dtype=np.float64)


def _scores(probabilities: np.ndarray, labels: Sequence[str], target: str) -> np.ndarray:
    if target == ABNORMALITY:
        return abnormality_score(probabilities)
    return probabilities[:, list(labels).index(target)].astype(np.float64)


def choose_thresholds(images: Sequence[LabelledImage], probabilities: np.ndarray, labels: Sequence[str],
                      target_sensitivity: float) -> dict[str, dict[str, Any]]:
    """Per target (each label and "abnormality"): the threshold for `target_sensitivity` on these images."""
    chosen: dict[str, dict[str, Any]] = {}
    for target in (*labels, ABNORMALITY):
        y, p = _truth(images, target), _scores(probabilities, labels, target)
        known = ~np.isnan(y)
        threshold = threshold_for_sensitivity(y[known], p[known], target_sensitivity) if known.any() else None
        chosen[target] = {
            "threshold": FALLBACK_THRESHOLD if threshold is None else threshold,
            "fallback": threshold is None,
            "positives": int(np.sum(y[known] == 1.0)),
            "cases": int(known.sum()),
        }
    return chosen


Member = Callable[[LabelledImage], bool]


def _everyone(_image: LabelledImage) -> bool:
    return True


def _where(source: str | None = None, view: str | None = None, sex: str | None = None,
           band: str | None = None) -> Member:
    """A predicate for the images matching every criterion given."""

    def member(image: LabelledImage) -> bool:
        return ((source is None or image.source == source) and (view is None or image.view_group == view)
                and (sex is None or image.sex == sex) and (band is None or age_band(image.age) == band))

    return member


def subgroups(images: Sequence[LabelledImage]) -> dict[str, Member]:
    """Named groups of images for the subgroup analysis; empty groups are left out."""
    sources = sorted({i.source for i in images})
    groups: dict[str, Member] = {"all": _everyone}
    for source in sources:
        groups[f"source={source}"] = _where(source=source)
    for view in ("PA", "AP", "other"):
        groups[f"view={view}"] = _where(view=view)
        for source in sources:
            groups[f"source={source}/view={view}"] = _where(source=source, view=view)
    for sex in ("F", "M"):
        groups[f"sex={sex}"] = _where(sex=sex)
    for band in ("<18", "18-39", "40-64", "65+", "unknown"):
        groups[f"age={band}"] = _where(band=band)
    return {name: member for name, member in groups.items() if any(member(i) for i in images)}


def group_metrics(images: Sequence[LabelledImage], probabilities: np.ndarray, labels: Sequence[str],
                  thresholds: Mapping[str, float], *, bootstrap: int, seed: int) -> dict[str, dict[str, Any]]:
    """group -> target -> metrics (or counts and a note when the group lacks one of the two classes)."""
    result: dict[str, dict[str, Any]] = {}
    for name, member in subgroups(images).items():
        rows = np.array([member(i) for i in images])
        group_images = [i for i, keep in zip(images, rows, strict=True) if keep]
        per_target: dict[str, Any] = {}
        for target in (*labels, ABNORMALITY):
            y = _truth(group_images, target)
            p = _scores(probabilities[rows], labels, target)
            known = ~np.isnan(y)
            if not known.any():
                continue
            metrics = finding_metrics(y[known], p[known], thresholds[target], bootstrap=bootstrap, seed=seed)
            if metrics["auroc"] is None:
                metrics["note"] = "only one class in this group: AUROC undefined"
            per_target[target] = metrics
        if per_target:
            result[name] = per_target
    return result


def view_confound(images: Sequence[LabelledImage]) -> dict[str, Any]:
    """How well the view alone (PA = 1, AP = 0) predicts "abnormal", per source: the shortcut to beat.

    A model whose AUROC is not clearly above this, or whose AUROC within each view is near 0.5, has learnt the
    view rather than the disease.
    """
    from .metrics import auroc

    result: dict[str, Any] = {}
    for source in sorted({i.source for i in images}):
        framed = [i for i in images if i.source == source and i.abnormal is not None and i.view_group in ("PA", "AP")]
        y = np.array([i.abnormal for i in framed], dtype=np.float64)
        pa = np.array([i.view_group == "PA" for i in framed], dtype=np.float64)
        result[f"source={source}"] = {
            "images": len(framed),
            "abnormal_share_PA": float(y[pa == 1].mean()) if (pa == 1).any() else None,
            "abnormal_share_AP": float(y[pa == 0].mean()) if (pa == 0).any() else None,
            "view_only_auroc": auroc(y, pa) if len(framed) else None,
        }
    return result


def evaluate_run(run_dir: str | os.PathLike[str], *, bootstrap: int = 1000, device: str = "auto",
                 num_threads: int | None = None) -> dict[str, Any]:
    """Evaluate the run's best model; write ``<run>/evaluation/``; the CLI's ``radtriage model evaluate``."""
    import torch

    from ..training.config import CONFIG_FILE, TrainingConfig
    from ..training.data import load_inputs
    from ..training.trainer import cache_dir_for, load_trained_network, predict, prepare_split, resolve_device

    run = Path(run_dir)
    config = TrainingConfig.load(run / CONFIG_FILE)
    if num_threads:
        torch.set_num_threads(num_threads)
    device = resolve_device(device)
    images, assignment = prepare_split(config, run)
    labels = list(config.labels)
    trained = set(config.train_sources)
    val = [i for i in images if assignment[i.image_id] == "val" and i.source in trained]
    test = [i for i in images if assignment[i.image_id] == "test"]
    external = [i for i in images if i.source not in trained]
    wanted = {i.image_id: i for i in [*val, *test, *external]}
    ordered = sorted(wanted.values(), key=lambda i: i.image_id)
    network = load_trained_network(config, run).to(device)
    inputs = load_inputs(ordered, config.image_size, cache_dir_for(config, run), description="preprocessing eval")
    probabilities = predict(network, inputs, device=device)
    row_of = {image.image_id: index for index, image in enumerate(ordered)}

    def probs(subset: Sequence[LabelledImage]) -> np.ndarray:
        return probabilities[[row_of[i.image_id] for i in subset]] if subset else np.empty((0, len(labels)))

    chosen = choose_thresholds(val, probs(val), labels, config.target_sensitivity)
    thresholds = {target: float(entry["threshold"]) for target, entry in chosen.items()}
    out = run / EVALUATION_DIR
    out.mkdir(exist_ok=True)
    evaluation: dict[str, Any] = {
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "labels": labels,
        "abnormality_score": "highest finding probability",
        "target_sensitivity": config.target_sensitivity,
        "thresholds": chosen,
        "threshold_source": f"validation split of {', '.join(sorted(trained))} ({len(val)} images)",
        "bootstrap_resamples": bootstrap,
        "held_out": {
            "description": "test split (patients not used for training or threshold choice), all sources",
            "images": len(test),
            "groups": group_metrics(test, probs(test), labels, thresholds, bootstrap=bootstrap, seed=config.seed),
        },
    }
    evaluation["view_confound"] = view_confound(test)
    if external:
        external_sources = ", ".join(sorted({i.source for i in external}))
        evaluation["external"] = {
            "description": f"every image of the sources not trained on ({external_sources})",
            "images": len(external),
            "groups": group_metrics(external, probs(external), labels, thresholds, bootstrap=bootstrap,
                                    seed=config.seed),
        }
    _write_predictions(out / PREDICTIONS_CSV, ordered, probabilities, labels, assignment, trained)
    evaluation["plots"] = _plots(out, test, probs(test), labels, thresholds)
    (out / EVALUATION_JSON).write_text(json.dumps(_finite(evaluation), indent=2) + "\n", encoding="utf-8")
    (out / REPORT_MD).write_text(markdown_report(evaluation), encoding="utf-8")
    return evaluation


def _finite(value: Any) -> Any:
    """JSON has no NaN; write None instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _write_predictions(path: Path, images: Sequence[LabelledImage], probabilities: np.ndarray,
                       labels: Sequence[str], assignment: Mapping[str, str], trained: set[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "source", "split", "role", "view", "sex", "age_band", "abnormal",
                         *(f"label:{label}" for label in labels), *(f"p:{label}" for label in labels), ABNORMALITY])
        scores = abnormality_score(probabilities) if len(images) else np.empty(0)
        for index, image in enumerate(images):
            role = "trained-source" if image.source in trained else "external"
            writer.writerow([
                image.image_id, image.source, assignment[image.image_id], role, image.view_group, image.sex or "",
                age_band(image.age), "" if image.abnormal is None else int(image.abnormal),
                *("" if label not in image.labels else int(image.labels[label]) for label in labels),
                *(f"{p:.6f}" for p in probabilities[index]), f"{scores[index]:.6f}",
            ])


def _plots(out: Path, test: Sequence[LabelledImage], probabilities: np.ndarray, labels: Sequence[str],
           thresholds: Mapping[str, float]) -> list[str]:
    written: list[str] = []
    if not test:
        return written
    groups: dict[str, Member] = {"all held-out": _everyone}
    for source in sorted({i.source for i in test}):
        groups[source] = _where(source=source)
        for view in ("PA", "AP"):
            groups[f"{source} {view}"] = _where(source=source, view=view)
    for target in (*labels, ABNORMALITY):
        roc_series, calibration_series = [], []
        for name, member in groups.items():
            rows = np.array([member(i) for i in test])
            y = _truth([i for i, keep in zip(test, rows, strict=True) if keep], target)
            p = _scores(probabilities[rows], labels, target) if rows.any() else np.empty(0)
            known = ~np.isnan(y)
            if not known.any():
                continue
            fpr, tpr = roc_curve(y[known], p[known])
            # A curve through one or two negatives is a staircase of noise; the JSON still has the numbers.
            positives = int(np.sum(y[known] == 1.0))
            if fpr and min(positives, int(known.sum()) - positives) >= MIN_CLASS_FOR_ROC_PLOT:
                roc_series.append(Series(f"{name} (n={int(known.sum())})", fpr, tpr))
            if name == "all held-out" or "/" not in name and " " not in name:
                bins = [b for b in calibration_bins(y[known], p[known]) if b.count]
                calibration_series.append(Series(
                    f"{name} (n={int(known.sum())})",
                    [b.mean_predicted or 0.0 for b in bins], [b.fraction_positive or 0.0 for b in bins], markers=True,
                ))
        slug = target.replace(" ", "_")
        if roc_series:
            roc_plot(out / f"roc_{slug}.png", f"ROC: {target} (held-out test split)", roc_series)
            written.append(f"roc_{slug}.png")
        if calibration_series:
            reliability_plot(out / f"calibration_{slug}.png", f"Reliability: {target} (held-out test split)",
                             calibration_series)
            written.append(f"calibration_{slug}.png")
    return written


# ---------------------------------------------------------------------------------------------- report


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _auroc_cell(metrics: Mapping[str, Any]) -> str:
    low, high = metrics.get("auroc_ci95") or (None, None)
    if metrics.get("auroc") is None:
        return "–"
    return f"{metrics['auroc']:.3f} ({_num(low, 2)}–{_num(high, 2)})"


def _table(groups: Mapping[str, Mapping[str, Any]], target: str, names: Sequence[str]) -> list[str]:
    lines = [
        "| group | n | positives | AUROC (95% CI) | sensitivity | specificity | precision | F1 | accuracy | ECE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        metrics = groups.get(name, {}).get(target)
        if metrics is None:
            continue
        lines.append(
            f"| {name} | {metrics['n']} | {metrics['positives']} | {_auroc_cell(metrics)} | {_pct(metrics['recall'])} "
            f"| {_pct(metrics['specificity'])} | {_pct(metrics['precision'])} | {_num(metrics['f1'])} "
            f"| {_pct(metrics['accuracy'])} | {_num(metrics['ece'])} |"
        )
    return lines


def markdown_report(evaluation: Mapping[str, Any]) -> str:
    """A readable summary of `evaluate_run`'s result."""
    labels = list(evaluation["labels"])
    lines = [
        "# Evaluation report",
        "",
        f"Evaluated {evaluation['evaluated_at']}. Operating points were chosen on the {evaluation['threshold_source']}"
        f" for a target sensitivity of {evaluation['target_sensitivity']:.0%}; AUROC confidence intervals are "
        f"percentile bootstrap intervals over {evaluation['bootstrap_resamples']} resamples of cases. "
        "'abnormality' is the highest finding probability, compared with the source's normal/abnormal label.",
        "",
        "## Operating points",
        "",
        "| target | threshold | validation cases | validation positives |",
        "|---|---|---|---|",
    ]
    for target, entry in evaluation["thresholds"].items():
        note = " (no positives: fallback)" if entry["fallback"] else ""
        lines.append(f"| {target} | {entry['threshold']:.4f}{note} | {entry['cases']} | {entry['positives']} |")
    for section in ("held_out", "external"):
        if section not in evaluation:
            continue
        part = evaluation[section]
        groups = part["groups"]
        title = "Held-out test split" if section == "held_out" else "External sources"
        lines += ["", f"## {title}", "", f"{part['description']}; {part['images']} images.", ""]
        main = [g for g in groups if g == "all" or g.startswith("source=")]
        views = [g for g in groups if g.startswith("view=")]
        others = [g for g in groups if g.startswith(("sex=", "age="))]
        for target in (ABNORMALITY, *labels):
            if not any(target in groups[g] for g in groups):
                continue
            lines += [f"### {target}", "", "By source and view:", ""]
            lines += _table(groups, target, main + views)
            lines += ["", "By sex and age band:", ""]
            lines += _table(groups, target, others)
            lines.append("")
    if evaluation.get("view_confound"):
        lines += ["## View confound", "",
                  "AUROC for 'abnormal' of the view alone (PA vs AP) on the held-out split: the shortcut a model could "
                  "take. Compare it with the model's AUROC within each view above.", "",
                  "| source | images | abnormal among PA | abnormal among AP | view-only AUROC |",
                  "|---|---|---|---|---|"]
        for group, entry in evaluation["view_confound"].items():
            lines.append(f"| {group} | {entry['images']} | {_pct(entry['abnormal_share_PA'])} "
                         f"| {_pct(entry['abnormal_share_AP'])} | {_num(entry['view_only_auroc'])} |")
        lines.append("")
    if evaluation.get("plots"):
        lines += ["## Plots", ""]
        lines += [f"![{name}]({name})" for name in evaluation["plots"]]
    return "\n".join(lines) + "\n"


__all__ = [
    "ABNORMALITY",
    "EVALUATION_DIR",
    "EVALUATION_JSON",
    "abnormality_score",
    "choose_thresholds",
    "evaluate_run",
    "group_metrics",
    "markdown_report",
    "subgroups",
    "view_confound",
]
