"""The manifest of a frozen-backbone triage model: what it assesses, what it cannot, and on what data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from ..artefact import ModelManifest
from ..networks.frozen_triage import IMAGENET_WEIGHTS_SHA256
from ..policy import default_policy
from ..preprocessing import PREPROCESSING_VERSION
from .release import KNOWN_SOURCES, PRETRAINED_ENTRY

if TYPE_CHECKING:
    from .triage_build import FittedModel, TriageBuildConfig

ARCHITECTURE: Final = "efficientnet-lite0-frozen"
INPUT_SIZE: Final = 224

INTENDED_USE: Final = (
    "Research and development of radtriage: reorders a worklist of adult frontal (PA/AP) chest radiographs so that "
    "films that look like an acute pneumonia-type abnormality are read sooner, and orders them by predicted severity. "
    "Every study is still read by a radiologist; the model never makes or withholds a diagnosis. Not a medical "
    "device; not validated for clinical use at any site: run it in shadow mode until a site validation is recorded."
)

EXTRA_SOURCES: Final = {
    "jsrt": {
        "name": "JSRT digital image database, 247 scanned PA films from Japan (../shared/data/cxr/jsrt)",
        "licence": "JSRT: research use only after registration; no redistribution",
        "url": "http://db.jsrt.or.jp/eng.php",
    },
    "tbx11k-tb": {
        "name": "TBX11K tuberculosis films, 800 images from Chinese hospitals (../shared/data/cxr/tbx11k-tb)",
        "licence": "no licence stated; research and development use only",
        "url": "https://mmcheng.net/tb/",
    },
}

LIMITATIONS: Final = (
    "A small development model: about 2,400 films from four sources, labels text-mined (NIH, about 90% accurate) or "
    "taken from case reports (COVID-19 collection); not a clinical model.",
    "Only the findings listed in 'labels' are assessed. Every other finding, including Pneumothorax (12 NIH "
    "positives: too few to train or validate), is NOT ASSESSED: a policy rule that names it can never fire, and the "
    "service says so.",
    "'Lung Opacity' here means an acute parenchymal abnormality (pneumonia of any cause, ARDS, tuberculosis); it is "
    "not a nodule or mass detector.",
    "The backbone is a frozen ImageNet network: it cannot learn a hospital's look, but its features still identify the "
    "source (see the source-shortcut figure); the heads were trained with every source weighted alike. Augmented "
    "copies imitating other acquisition chains and histogram equalisation were measured and made leave-one-source-out "
    "results worse with this frozen backbone, so the shipped recipe uses neither (see the card).",
    "Operating points were chosen on out-of-fold validation at 90% sensitivity with an 80% specificity floor; a site "
    "must confirm them on its own films (radtriage model validate-site) before priorities are raised.",
    "The input gate refuses images unlike the training films and films that look like a child's; it was not tested "
    "on lateral films (none in the data: the DICOM header gate handles tagged laterals).",
    "Severity (geographic extent 0-8) was learnt from 94 COVID-19 films scored by three radiologists; it orders "
    "studies within a priority and is not a clinical score.",
)


def _training_data(config: TriageBuildConfig) -> tuple[dict[str, str], ...]:
    known = {**KNOWN_SOURCES, **EXTRA_SOURCES}
    entries = [{**known.get(source, {"name": source, "licence": "unknown: review before any release"}),
                "role": "training (development split), test split and leave-one-source-out evaluation"}
               for source in config.sources]
    entries.append({**PRETRAINED_ENTRY, "role": "frozen backbone (not fine-tuned)",
                    "sha256": IMAGENET_WEIGHTS_SHA256})
    return tuple(entries)


def not_assessed(labels: tuple[str, ...]) -> list[str]:
    """Findings the default triage policy names that this model does not assess."""
    return sorted(default_policy().labels_named() - set(labels))


def triage_manifest(name: str, version: str, model: FittedModel, config: TriageBuildConfig,
                    extra: Mapping[str, Any]) -> ModelManifest:
    triage = model.triage
    findings = triage.validation["findings"]
    evaluation: dict[str, Any] = {
        "abnormality_score": "highest calibrated finding probability",
        "abnormality_threshold": triage.abnormality_threshold,
        "calibration": "Platt scaling per finding on out-of-fold logits, folded into the classifier weights",
        "operating_points": {label: findings[label]["operating_point"] for label in triage.labels},
        "not_shipped": {label: record["why"] for label, record in findings.items() if label not in triage.labels},
        "policy_findings_not_assessed": not_assessed(triage.labels),
        "severity": {"output": "geographic extent 0-8", "head": "ridge regression on pooled features"},
        "input_gate": {
            "novelty_quantile": config.gate_quantile, "components": len(model.gate.variances),
            "child_limit": model.child.limit, "child_cross_validation": model.child.cross_validation,
            "inverted_cross_validation": model.inverted_figures,
        },
        "backbone_sha256": IMAGENET_WEIGHTS_SHA256,
        "report": "evaluation.json",
        **extra,
    }
    return ModelManifest(
        name=name, version=version, architecture=ARCHITECTURE, labels=triage.labels,
        thresholds=dict(triage.thresholds), input_size=INPUT_SIZE, preprocessing_version=PREPROCESSING_VERSION,
        intended_use=INTENDED_USE, limitations=LIMITATIONS, training_data=_training_data(config),
        evaluation=evaluation,
    )


__all__ = ["ARCHITECTURE", "INTENDED_USE", "LIMITATIONS", "not_assessed", "triage_manifest"]
