"""The full evaluation of a frozen-backbone triage model (written to ``evaluation.json`` and the model card).

* ``per_source_test``: the shipped model on each source's held-out test patients.
* ``leave_one_source_out``: the recipe retrained without each source, judged on it (see `triage_report`), with the
  input gate refitted without it too: its false refusals there are the gate's figure for a new hospital.
* ``source_shortcut``: source predicted from the penultimate features and from the output scores (after; and
  before, for the previously shipped model, when its measurements are given).
* ``input_gate``: the written artefact's real `XrvScorer` on held-out adult films of every source, children, and
  challenge images (noise, photographs, inverted films, non-chest and non-radiograph DICOM files): refusals by
  reason code.
* ``severity``: patient-grouped cross-validated Spearman correlation with the radiologists' scores.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from radtriage.app.core.errors import TriageError

from ..datasets import LabelledImage
from ..input_gate import fit_child_detector, fit_feature_gate
from ..networks.frozen_triage import GATE_COMPONENTS
from ..training.recipe import FittedTriage, public_validation
from .shortcut import source_shortcut
from .triage_report import group_metrics, leave_one_source_out

if TYPE_CHECKING:
    from ..training.triage_build import FittedModel, TriageBuildConfig

PASSED = "analysed"
MAX_INVERTED = 100


def _adult(image: LabelledImage) -> bool:
    return image.age is None or image.age >= 18.0


def _loso_gate(images: Sequence[LabelledImage], clean: npt.NDArray[Any], config: TriageBuildConfig,
               held: npt.NDArray[np.bool_]) -> dict[str, Any]:
    """The input gate refitted without a source, applied to that source's adult films."""
    train = ~held
    gate = fit_feature_gate(clean[train], k=GATE_COMPONENTS, quantile=config.gate_quantile)
    aged = np.array([image.age is not None for image in images]) & train
    aged_images = [images[int(i)] for i in np.flatnonzero(aged)]
    child = fit_child_detector(clean[aged], np.array([not _adult(image) for image in aged_images]),
                               [image.patient_id for image in aged_images],
                               adult_refusal=config.child_adult_refusal)
    adults = held & np.array([_adult(image) for image in images])
    novel = gate.refuses(clean[adults])
    childlike = ~novel & (child.probability(clean[adults]) >= child.limit)
    return {"adult_films": int(adults.sum()), "out-of-distribution": float(np.mean(novel)),
            "outside-intended-use": float(np.mean(childlike)), "false_refusal_rate": float(np.mean(novel | childlike))}


def _outcomes(prepare: Callable[[Any], Any], items: Iterable[Any]) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    for item in items:
        try:
            prepare(item)
            counts[PASSED] += 1
        except TriageError as exc:
            counts[exc.code.value] += 1
    total = sum(counts.values())
    return {"images": total, "by_reason": dict(sorted(counts.items())),
            "refused_share": (total - counts[PASSED]) / total if total else None}


def _photographs() -> list[npt.NDArray[np.float32]]:
    """scikit-image's sample pictures (photographs, a micrograph, a texture, text), as grey [0, 1] images; the
    astronaut portrait also as a 64-colour palette image, like a face photograph saved as a GIF."""
    import skimage.data
    from PIL import Image

    pictures = []
    for name in ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text",
                 "hubble_deep_field", "immunohistochemistry", "grass", "gravel", "brick", "clock"):
        array = np.asarray(getattr(skimage.data, name)())
        image = Image.fromarray(array).convert("L")
        pictures.append(np.asarray(image, dtype=np.float32) / 255.0)
    face = np.asarray(skimage.data.astronaut())  # type: ignore[no-untyped-call]
    palette = Image.fromarray(face).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pictures.append(np.asarray(palette.convert("L"), dtype=np.float32) / 255.0)
    return pictures


def _noise(count: int, seed: int = 0) -> list[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    images = [rng.random((512, 512), dtype=np.float32) for _ in range(count // 2)]
    images += [np.clip(rng.normal(0.5, 0.15, (512, 512)), 0, 1).astype(np.float32) for _ in range(count - count // 2)]
    return images


def gate_challenge(model_dir: Path, test_images: Sequence[LabelledImage], dicom_dir: Path | None) -> dict[str, Any]:
    """Refusals by reason of the written artefact's scorer (see the module docstring)."""
    from radtriage.imaging.dicom_pixels import load_image_file

    from ..scorer import XrvScorer

    scorer = XrvScorer.from_artefact(model_dir, max_threads=None)
    report: dict[str, Any] = {"adult_frontal_test_films": {}, "challenge": {}}
    for source in sorted({image.source for image in test_images}):
        adults = [im for im in test_images if im.source == source and _adult(im)]
        report["adult_frontal_test_films"][source] = _outcomes(
            lambda im: scorer.prepare_array(load_image_file(im.path)), adults)
    children = [im for im in test_images if not _adult(im)]
    report["challenge"]["children_test_films_no_age_tag"] = _outcomes(
        lambda im: scorer.prepare_array(load_image_file(im.path)), children)
    inverted = [im for im in test_images if _adult(im)][:MAX_INVERTED]
    report["challenge"]["inverted_films"] = _outcomes(
        lambda im: scorer.prepare_array(1.0 - load_image_file(im.path)), inverted)
    report["challenge"]["white_noise"] = _outcomes(scorer.prepare_array, _noise(20))
    report["challenge"]["photographs"] = _outcomes(scorer.prepare_array, _photographs())
    if dicom_dir is not None and (dicom_dir / "index.csv").exists():
        import csv

        with (dicom_dir / "index.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        for expected in ("chest", "not-chest", "wrong-modality"):
            files = [dicom_dir / row["file"] for row in rows if row["expected"] == expected]
            report["challenge"][f"dicom_{expected}"] = _outcomes(lambda p: scorer.prepare(p.read_bytes()), files)
    report["lateral_films"] = "not measured: the shared data hold no lateral films"
    return report


def held_out_groups(fitted: FittedTriage, images: Sequence[LabelledImage], features: npt.NDArray[Any], *,
                    bootstrap: int) -> dict[str, Any]:
    """The test split in the layout the web model page and the drift monitor read (``held_out.groups.<group>.
    <label>``: n, positives, AUROC and interval, recall, specificity, ECE, calibration bins), per label and
    "abnormality" (against "Lung Opacity"), for all test images and per source."""
    from ..sources import LUNG_OPACITY
    from ..training.recipe import target_matrix
    from .metrics import finding_metrics

    probabilities = fitted.probabilities(features)
    sources = np.array([image.source for image in images])
    views = np.array([f"view={image.view_group}" for image in images])
    groups: dict[str, Any] = {}
    for group in ["all", *sorted(set(sources.tolist())), *sorted(set(views.tolist()))]:
        rows = (np.ones(len(images), dtype=bool) if group == "all" else views == group if group.startswith("view=")
                else sources == group)
        chosen = [image for image, keep in zip(images, rows, strict=True) if keep]
        block: dict[str, Any] = {}
        columns = [*fitted.labels, "abnormality"]
        targets = target_matrix(chosen, [*fitted.labels, LUNG_OPACITY])
        scores = np.column_stack([probabilities[rows], probabilities[rows].max(axis=1)])
        cuts = [*(fitted.thresholds[label] for label in fitted.labels), fitted.abnormality_threshold]
        for j, name in enumerate(columns):
            known = ~np.isnan(targets[:, j])
            if known.any():
                block[name] = finding_metrics(targets[known, j], scores[known, j], cuts[j], bootstrap=bootstrap)
        groups[group if group == "all" or group.startswith("view=") else f"source={group}"] = block
    return {"groups": groups, "description": "test patients of every source (held out)",
            "images": len(images)}


def report_header(target_sensitivity: float, labels: Sequence[str]) -> dict[str, Any]:
    """The keys every radtriage evaluation report starts with (the web model page and the monitor read them)."""
    from datetime import UTC, datetime

    return {"evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "threshold_source": "out-of-fold validation predictions on the development images",
            "target_sensitivity": target_sensitivity, "labels": list(labels)}


def evaluate_triage(model_dir: Path, images: Sequence[LabelledImage], clean: npt.NDArray[Any],
                    augmented: Sequence[npt.NDArray[Any]], test: npt.NDArray[np.bool_], model: FittedModel,
                    config: TriageBuildConfig, *, severity_cv: dict[str, Any],
                    baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    from ..training.triage_build import subset

    sources = np.array([image.source for image in images])
    per_source = {"all": group_metrics(model.triage, subset(images, test), clean[test], resamples=config.bootstrap)}
    for source in config.sources:
        mask = test & (sources == source)
        per_source[source] = group_metrics(model.triage, subset(images, mask), clean[mask],
                                           resamples=config.bootstrap)
    gates: dict[str, Any] = {}

    def loso_gate(source: str, _fitted: Any, held: npt.NDArray[np.bool_]) -> None:
        gates[source] = _loso_gate(images, clean, config, held)

    loso = leave_one_source_out(images, clean, augmented, config.recipe, sources=config.sources,
                                resamples=config.bootstrap, on_fitted=loso_gate)
    for source, figures in gates.items():
        loso[source]["input_gate_false_refusals"] = figures
    groups = [image.patient_id for image in images]
    scores = model.triage.probabilities(clean)
    dev_scores = model.triage.validation["out_of_fold"]["calibrated"]
    shipped = [list(config.recipe.candidates).index(label) for label in model.triage.labels]
    scores[~test] = dev_scores[:, shipped]  # development images: their out-of-fold scores, not in-sample ones
    shortcut = {"after": {"features": source_shortcut(clean, sources.tolist(), groups),
                          "scores": source_shortcut(scores, sources.tolist(), groups)}}
    if baseline is not None:
        shortcut["before"] = baseline
    dicom_dir = Path(config.data_root).parent / "dicom"
    return {
        **report_header(config.recipe.target_sensitivity, model.triage.labels),
        "held_out": held_out_groups(model.triage, subset(images, test), clean[test], bootstrap=config.bootstrap),
        "per_source_test": per_source,
        "leave_one_source_out": loso,
        "source_shortcut": shortcut,
        "input_gate": gate_challenge(model_dir, subset(images, test), dicom_dir if dicom_dir.is_dir() else None),
        "severity": {k: v for k, v in severity_cv.items() if k != "predicted"},
        "validation": public_validation(model.triage),
        "split": {source: {"test": int((test & (sources == source)).sum()),
                           "development": int((~test & (sources == source)).sum())} for source in config.sources},
    }


__all__ = ["evaluate_triage", "gate_challenge"]
