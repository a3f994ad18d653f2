"""Site acceptance: how the active model does on this site's own labelled films (``radtriage model validate-site``).

A sample is either

* a CSV file with an image path column (``image``, ``path``, ``file`` or ``filename``; relative to the CSV's
  folder) and a label: a ``label``/``abnormal``/``class`` column (``0``/``1``, ``normal``/``abnormal``,
  ``no finding``/anything else), or a ``no_finding`` (or other ``no_*``) column where 1 means normal, as the
  shared data's ``labels.csv`` files have; or
* a folder with ``normal/`` and ``abnormal/`` subfolders of DICOM, PNG or JPEG files.

Each image is scored as the service would (DICOM through the header gates, PNG/JPEG through the pixel gates);
an image the gates refuse is counted under its reason, not scored. Reported, each with a bootstrap 95% CI
(percentile method, resampling images):

* AUROC of the "abnormality" score (the highest finding probability, as the evaluation defines it);
* sensitivity and specificity of the site's triage policy at the model's operating points (a study counts as
  flagged when the policy would raise a routine order);
* ECE (expected calibration error, ten equal-width bins) of the abnormality score against the labels;
* recommended operating points: the abnormality threshold that keeps sensitivity at or above each target on
  this sample, and the one that maximises Youden's J. A site applies one with a policy rule
  ``findings = "*"``, ``min_probability = <threshold>``.

The recorded validation (``site_validations``, tied to the weights' sha256) ends shadow mode "auto".
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from radtriage.app.core.domain import Priority
from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.imaging.files import image_files

PATH_COLUMNS: Final = ("image", "path", "file", "filename")
LABEL_COLUMNS: Final = ("label", "abnormal", "class", "target")
NORMAL_WORDS: Final = frozenset({"0", "normal", "no finding", "no_finding", "negative", "false", "no"})
ECE_BINS: Final = 10
TARGET_SENSITIVITIES: Final = (0.9, 0.95)
SAMPLE_SEED: Final = 20261206


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    abnormal: bool


# ---------------------------------------------------------------------------------------------- the sample


def load_sample(path: Path, *, limit: int | None = None) -> list[LabelledImage]:
    """The labelled images of a CSV file or a normal/abnormal folder; with `limit`, a seeded sample of at most
    that many, half from each class where the sample allows. Raises ValueError saying what is wrong."""
    cases = _from_csv(path) if path.is_file() else _from_folder(path)
    if not cases:
        raise ValueError(f"no labelled images found in {path}")
    if limit is not None and limit < len(cases):
        cases = _balanced(cases, limit)
    return cases


def _from_folder(folder: Path) -> list[LabelledImage]:
    normal, abnormal = folder / "normal", folder / "abnormal"
    if not normal.is_dir() and not abnormal.is_dir():
        raise ValueError(f"{folder} needs normal/ and abnormal/ subfolders (or pass a CSV file)")
    cases = [LabelledImage(p, False) for p in image_files([normal])] if normal.is_dir() else []
    return cases + ([LabelledImage(p, True) for p in image_files([abnormal])] if abnormal.is_dir() else [])


def _from_csv(csv_path: Path) -> list[LabelledImage]:
    with csv_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = {name.strip().lower(): name for name in reader.fieldnames or ()}
        path_column = next((columns[c] for c in PATH_COLUMNS if c in columns), None)
        if path_column is None:
            raise ValueError(f"{csv_path.name}: no image path column (one of {', '.join(PATH_COLUMNS)})")
        read_label = _label_reader(columns, csv_path.name)
        cases = []
        for line, row in enumerate(reader, start=2):
            value = (row.get(path_column) or "").strip()
            if not value:
                raise ValueError(f"{csv_path.name} line {line}: empty image path")
            cases.append(LabelledImage(csv_path.parent / value, read_label(row)))
    return cases


def _label_reader(columns: dict[str, str], name: str) -> Callable[[dict[str, str]], bool]:
    label_column = next((columns[c] for c in LABEL_COLUMNS if c in columns), None)
    if label_column is not None:
        return lambda row: (row.get(label_column) or "").strip().lower() not in NORMAL_WORDS
    negated = next((original for lower, original in columns.items() if lower.startswith("no_")), None)
    if negated is not None:
        return lambda row: (row.get(negated) or "").strip() not in ("1", "true", "yes")
    raise ValueError(f"{name}: no label column (one of {', '.join(LABEL_COLUMNS)}, or a no_finding column)")


def _balanced(cases: list[LabelledImage], limit: int) -> list[LabelledImage]:
    rng = random.Random(SAMPLE_SEED)
    normal = [c for c in cases if not c.abnormal]
    abnormal = [c for c in cases if c.abnormal]
    take_abnormal = min(len(abnormal), max(limit - len(normal), limit // 2))
    take_normal = min(len(normal), limit - take_abnormal)
    return rng.sample(normal, take_normal) + rng.sample(abnormal, take_abnormal)


# ---------------------------------------------------------------------------------------------- scoring


def score_sample(scorer: Any, policy: Any, cases: Sequence[LabelledImage]) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Per scored image: label, abnormality score, whether the policy flags it. And refusals by reason."""
    from radtriage.imaging.dicom_pixels import load_image_file

    scored: list[dict[str, Any]] = []
    refused: Counter[str] = Counter()
    for case in cases:
        try:
            if case.path.suffix.lower() in (".png", ".jpg", ".jpeg"):
                image = scorer.prepare_array(load_image_file(case.path))
            else:
                image = scorer.prepare(case.path.read_bytes())
        except TriageError as exc:
            refused[exc.code.value] += 1
            continue
        except OSError:
            refused[ErrorCode.UNREADABLE_IMAGE.value] += 1
            continue
        findings = scorer.score(image)
        flagged = policy.decide(findings, Priority.ROUTINE)[0] > Priority.ROUTINE
        score = max(f.probability for f in findings)
        scored.append({"abnormal": case.abnormal, "score": float(score), "flagged": bool(flagged)})
    return scored, refused


# ---------------------------------------------------------------------------------------------- metrics


def expected_calibration_error(y: npt.NDArray[Any], p: npt.NDArray[Any], bins: int = ECE_BINS) -> float:
    """Σ over equal-width bins of (bin share) · |observed rate − mean predicted probability|."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(float(y[mask].mean()) - float(p[mask].mean()))
    return float(total)


def _sensitivity(y: npt.NDArray[Any], flagged: npt.NDArray[Any]) -> float | None:
    positives = y == 1
    return float(flagged[positives].mean()) if positives.any() else None


def _specificity(y: npt.NDArray[Any], flagged: npt.NDArray[Any]) -> float | None:
    negatives = y == 0
    return float((~flagged[negatives]).mean()) if negatives.any() else None


def _auroc(y: npt.NDArray[Any], p: npt.NDArray[Any]) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def _with_ci(
    metric: Callable[[npt.NDArray[Any], npt.NDArray[Any]], float | None],
    y: npt.NDArray[Any],
    x: npt.NDArray[Any],
    bootstrap: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    value = metric(y, x) if len(y) else None
    samples = []
    for _ in range(bootstrap if value is not None else 0):
        index = rng.integers(0, len(y), len(y))
        found = metric(y[index], x[index])
        if found is not None:
            samples.append(found)
    ci = [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))] if samples else None
    return {"value": value, "ci95": ci}


def recommended_operating_points(
    y: npt.NDArray[Any], p: npt.NDArray[Any], targets: Sequence[float] = TARGET_SENSITIVITIES
) -> list[dict[str, Any]]:
    """Abnormality thresholds: the highest that keeps each target sensitivity, and Youden's J's best."""
    from sklearn.metrics import roc_curve

    if not 0 < y.sum() < len(y):
        return []
    fpr, tpr, thresholds = roc_curve(y, p)
    thresholds = np.clip(thresholds, 0.0, 1.0)
    points = []
    for target in targets:
        i = int(np.argmax(tpr >= target))  # roc_curve's thresholds fall: the first reaching it is the highest
        points.append(_point(f"sensitivity >= {target:.2f}", thresholds[i], tpr[i], fpr[i]))
    best = int(np.argmax(tpr - fpr))
    points.append(_point("Youden's J (sensitivity + specificity - 1) at its maximum", thresholds[best], tpr[best],
                         fpr[best]))  # fmt: skip
    return points


def _point(rule: str, threshold: float, tpr: float, fpr: float) -> dict[str, Any]:
    return {
        "rule": rule,
        "abnormality_threshold": float(threshold),  # unrounded: rounding up would lose the case at it
        "sensitivity": round(float(tpr), 4),
        "specificity": round(float(1.0 - fpr), 4),
    }


def validate_site(
    scorer: Any,
    cases: Sequence[LabelledImage],
    *,
    policy: Any = None,
    bootstrap: int = 1000,
    target_sensitivity: float = TARGET_SENSITIVITIES[0],
    seed: int = 0,
) -> dict[str, Any]:
    """Score `cases` with `scorer` and the site `policy` (default policy when None); the report as a dict."""
    from .policy import default_policy

    policy = policy or default_policy()
    scored, refused = score_sample(scorer, policy, cases)
    y = np.array([int(s["abnormal"]) for s in scored], dtype=int)
    p = np.array([s["score"] for s in scored], dtype=float)
    flagged = np.array([s["flagged"] for s in scored], dtype=bool)
    rng = np.random.default_rng(seed)
    index = np.arange(len(y))
    report: dict[str, Any] = {
        "model": {"name": scorer.identity.name, "version": scorer.identity.version, "sha256": scorer.identity.sha256},
        "policy": getattr(policy, "name", "custom"),
        "n": len(cases),
        "n_scored": len(scored),
        "n_abnormal": int(y.sum()),
        "n_normal": int(len(y) - y.sum()),
        "not_analysed": dict(sorted(refused.items())),
        "score": "abnormality = the highest finding probability",
        "operating_point": "flagged when the site's triage policy would raise a routine order",
        "bootstrap": bootstrap,
        "auroc": _with_ci(_auroc, y, p, bootstrap, rng),
        "sensitivity": _with_ci(lambda yy, ii: _sensitivity(yy, flagged[ii]), y, index, bootstrap, rng),
        "specificity": _with_ci(lambda yy, ii: _specificity(yy, flagged[ii]), y, index, bootstrap, rng),
        "ece": _with_ci(expected_calibration_error, y, p, bootstrap, rng),
        # The site's own reference for drift (radtriage.monitoring.site_drift): abnormality scores in ten bins.
        "score_histogram": np.histogram(p, bins=ECE_BINS, range=(0.0, 1.0))[0].astype(int).tolist(),
        "recommended_operating_points": recommended_operating_points(
            y, p, sorted({target_sensitivity, *TARGET_SENSITIVITIES})
        ),
    }
    report["summary"] = {
        name: _summary(report[name]) for name in ("auroc", "sensitivity", "specificity", "ece")
    } | {"n": str(len(scored))}
    return report


def _summary(metric: dict[str, Any]) -> str:
    value, ci = metric["value"], metric["ci95"]
    if value is None:
        return "not computable (needs both normal and abnormal images)"
    return f"{value:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def format_report(report: dict[str, Any]) -> str:
    """The report for a person reading a terminal."""
    model = report["model"]
    lines = [
        f"Site validation of {model['name']} {model['version']} (sha256 {model['sha256'][:12]})",
        f"  images: {report['n']} ({report['n_scored']} scored: {report['n_abnormal']} abnormal, "
        f"{report['n_normal']} normal)",
    ]
    if report["not_analysed"]:
        refused = ", ".join(f"{code} {count}" for code, count in report["not_analysed"].items())
        lines.append(f"  not analysed (refused by the input gates): {refused}")
    lines += [
        f"  AUROC (abnormality score):   {report['summary']['auroc']}",
        f"  sensitivity (policy '{report['policy']}'): {report['summary']['sensitivity']}",
        f"  specificity (policy '{report['policy']}'): {report['summary']['specificity']}",
        f"  ECE (abnormality score):     {report['summary']['ece']}",
        f"  95% CIs: percentile bootstrap over images, {report['bootstrap']} resamples",
    ]
    if report["recommended_operating_points"]:
        lines.append("  recommended operating points (abnormality threshold; policy rule findings=\"*\", "
                     "min_probability=<threshold>):")  # fmt: skip
        for point in report["recommended_operating_points"]:
            lines.append(
                f"    {point['rule']}: {point['abnormality_threshold']:.4f} "
                f"(sensitivity {point['sensitivity']:.3f}, specificity {point['specificity']:.3f} on this sample)"
            )
    return "\n".join(lines)
