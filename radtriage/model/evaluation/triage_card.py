"""The model card of a frozen-backbone triage model, rendered from its manifest and ``evaluation.json``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..artefact import ModelManifest

CARD_FILE = "MODEL_CARD.md"


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def _auroc(record: Mapping[str, Any]) -> str:
    if "auroc" not in record:
        return "n/a (one class)"
    low, high = record["auroc_ci95"]
    return f"{record['auroc']:.3f} ({_num(low, 3)}-{_num(high, 3)})"


def _group_rows(groups: Mapping[str, Any]) -> list[str]:
    rows = ["| source | images | abnormality AUROC (95% CI) | sensitivity | specificity | ECE | urgent share | "
            "Pneumonia AUROC (95% CI) | JSRT non-nodule flagged urgent |",
            "|---|---|---|---|---|---|---|---|---|"]
    for source, record in groups.items():
        abnormal = record["abnormality"]
        jsrt = record.get("jsrt_non_nodule")
        rows.append(
            f"| {source} | {record['images']} | {_auroc(abnormal)} | {_pct(abnormal.get('sensitivity'))} | "
            f"{_pct(abnormal.get('specificity'))} | {_num(abnormal.get('ece'), 3)} | "
            f"{_pct(record.get('urgent_share'))} | "
            f"{_auroc(record.get('Pneumonia', {}))} | "
            f"{_pct(jsrt['urgent_share']) + ' of ' + str(jsrt['films']) if jsrt else ''} |"
        )
    return rows


def _shortcut_rows(shortcut: Mapping[str, Any]) -> list[str]:
    rows = ["| model | representation | accuracy | balanced accuracy (chance) |", "|---|---|---|---|"]
    for when in ("before", "after"):
        for what, record in (shortcut.get(when) or {}).items():
            if isinstance(record, Mapping) and "accuracy" in record:
                rows.append(f"| {when} | {what} ({record['dimensions']} dims) | {_pct(record['accuracy'])} | "
                            f"{_pct(record['balanced_accuracy'])} ({_pct(record['chance_balanced_accuracy'])}) |")
    return rows


def _gate_rows(gate: Mapping[str, Any], loso: Mapping[str, Any]) -> list[str]:
    rows = ["| images | n | refused | by reason |", "|---|---|---|---|"]
    for source, record in gate.get("adult_frontal_test_films", {}).items():
        rows.append(f"| adult frontal test films, {source} | {record['images']} | {_pct(record['refused_share'])} | "
                    f"{_reasons(record)} |")
    for name, record in gate.get("challenge", {}).items():
        rows.append(f"| {name.replace('_', ' ')} | {record['images']} | {_pct(record['refused_share'])} | "
                    f"{_reasons(record)} |")
    rows.append("")
    rows.append("Gate refitted without each source, false refusals on that source's adult films (a new hospital):")
    rows.append("")
    rows.append("| left-out source | adult films | refused | out-of-distribution | child |")
    rows.append("|---|---|---|---|---|")
    for source, record in loso.items():
        g = record.get("input_gate_false_refusals")
        if g:
            rows.append(f"| {source} | {g['adult_films']} | {_pct(g['false_refusal_rate'])} | "
                        f"{_pct(g['out-of-distribution'])} | {_pct(g['outside-intended-use'])} |")
    return rows


def _reasons(record: Mapping[str, Any]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in record["by_reason"].items())


def render_card(manifest: ModelManifest, report: Mapping[str, Any]) -> str:
    evaluation = manifest.evaluation or {}
    lines = [
        f"# Model card: {manifest.name} {manifest.version}",
        "",
        f"*Architecture*: {manifest.architecture} (frozen ImageNet EfficientNet-Lite0, backbone sha256 "
        f"{evaluation.get('backbone_sha256', '')[:12]}..., + trained linear heads). *Weights sha256*: "
        f"`{manifest.weights_sha256}`. *Preprocessing*: {manifest.preprocessing_version}, {manifest.input_size} px.",
        "",
        "## Intended use", "", manifest.intended_use, "",
        "## What it assesses, and what it does not", "",
        f"* **Assessed findings**: {', '.join(manifest.labels)}; 'abnormality' = the highest calibrated finding "
        f"probability (operating point {_num(evaluation.get('abnormality_threshold'), 3)}).",
        f"* **Named by the default triage policy but NOT ASSESSED**: "
        f"{', '.join(evaluation.get('policy_findings_not_assessed', [])) or 'none'}.",
        "* Candidates not shipped, and why (out-of-fold validation on the development images):",
    ]
    lines += [f"  * {label}: {why}" for label, why in evaluation.get("not_shipped", {}).items()]
    lines += ["", "Operating points (calibrated probability; 90% sensitivity target, 80% specificity floor):", "",
              "| finding | threshold | validation sensitivity | validation specificity | set by |",
              "|---|---|---|---|---|"]
    for label, point in evaluation.get("operating_points", {}).items():
        lines.append(f"| {label} | {point['threshold']:.3f} | {_pct(point['sensitivity'])} | "
                     f"{_pct(point['specificity'])} | {point['set_by']} |")
    lines += ["", "## Leave one source out (the headline: hospitals the model never saw)", "",
              "Each row: the whole recipe retrained on all images of the other sources (operating points chosen on "
              "their out-of-fold validation), then applied to every image of this source. covid and tbx11k-tb are "
              "(nearly) all abnormal: read their sensitivity; JSRT non-nodule films are normal films from another "
              "hospital: read the share flagged urgent.", ""]
    lines += _group_rows(report.get("leave_one_source_out", {}))
    lines += ["", "## Held-out test patients of each source (the shipped model)", ""]
    lines += _group_rows(report.get("per_source_test", {}))
    lines += ["", "'abnormality' is judged against 'Lung Opacity' (acute parenchymal abnormality). AUROC intervals: "
              "percentile bootstrap. ECE: 10 equal-width bins.", "",
              "## Source shortcut", "",
              "How well the source of an image is predicted from the model's penultimate features and from its output "
              "scores (cross-validated logistic regression, folds grouped by patient). 'before' = the previously "
              "shipped fine-tuned model (2026.11.30-3ec861dc); 'after' = this model.", ""]
    lines += _shortcut_rows(report.get("source_shortcut", {}))
    experiments = report.get("recipe_experiments")
    if experiments:
        lines += ["", "## Recipe choices (measured)", "", experiments["method"] + ".", "",
                  "| recipe | NIH abnormality AUROC | covid urgent | JSRT non-nodule urgent | TBX11K urgent |",
                  "|---|---|---|---|---|"]
        lines += [f"| {run['recipe']} | {run['nih_abnormality_auroc']:.3f} | {_pct(run['covid_urgent'])} | "
                  f"{_pct(run['jsrt_non_nodule_urgent'])} | {_pct(run['tbx11k_urgent'])} |"
                  for run in experiments["runs"]]
    severity = report.get("severity", {})
    lines += ["", "## Severity", "",
              f"Geographic extent (0-8) from {severity.get('images')} scored COVID-19 films "
              f"({severity.get('patients')} patients): Spearman {_num(severity.get('spearman_geographic_extent'), 3)} "
              f"with the radiologists' extent, {_num(severity.get('spearman_opacity'), 3)} with their opacity score; "
              f"mean absolute error {_num(severity.get('mean_absolute_error'))} ({severity.get('method')}).", "",
              "## Input gate: refusals by reason", ""]
    lines += _gate_rows(report.get("input_gate", {}), report.get("leave_one_source_out", {}))
    lines += ["", "'dicom chest' includes Fake_MONOHR1.dcm (the SIIM film's pixels under a MONOCHROME1 tag): read as "
              "its header says, it is an inverted film, so refusing it is right. The refitted-gate table does not "
              "include the inverted-film detector (it has no source-specific part: a film and its negative).", "",
              f"Lateral films: {report.get('input_gate', {}).get('lateral_films', 'n/a')}.", "",
              "## Training", ""]
    training = report.get("training", {})
    lines += [f"* {training.get('images')} images; development {training.get('development_images')}, test "
              f"{training.get('test_images')}; wall time {training.get('seconds_total')} s "
              f"({training.get('seconds_features')} s of it computing backbone features), {training.get('threads')} "
              "threads; one command: `radtriage model train-triage ../shared/data/cxr DEST`.", "",
              "## Limitations", ""]
    lines += [f"* {item}" for item in manifest.limitations]
    lines += ["", "## Training data", ""]
    lines += [f"* {entry['name']}: {entry['licence']} ({entry.get('role', '')})" for entry in manifest.training_data]
    return "\n".join(lines) + "\n"


def write_model_card(model_dir: Path, manifest: ModelManifest, report: Mapping[str, Any]) -> Path:
    path = Path(model_dir) / CARD_FILE
    path.write_text(render_card(manifest, report), encoding="utf-8")
    return path


__all__ = ["CARD_FILE", "render_card", "write_model_card"]
