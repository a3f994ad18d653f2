"""Threshold recalibration from a locally labelled sample.

For each finding the model scores, the new operating point is the highest threshold that still reaches the
target sensitivity on the site's own labelled studies (`radtriage.model.evaluation.metrics.threshold_for_sensitivity`,
the same rule the training pipeline uses). A finding with fewer than `min_positives` positives keeps its current
threshold: a threshold chosen on three positives is noise. The result is stored as a new version of the model's
thresholds (``threshold_versions``, tied to the weights' sha256) and, by default, made active: `MonitoredScorer`
scores with it from the next study on, and each result records which version scored it
(``result_annotations.thresholds_version``). The manifest itself never changes (artefacts are immutable).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from ..app.core.domain import ModelIdentity
from ..app.storage.monitoring_tables import threshold_versions
from ..model.evaluation.metrics import confusion_metrics, threshold_for_sensitivity
from .metrics import LabelledCase, labelled_cases


@dataclass(frozen=True)
class ThresholdVersion:
    version: int
    thresholds: dict[str, float]
    cases: int
    details: dict[str, Any]
    active: bool

    @property
    def name(self) -> str:
        return f"local-{self.version}"


def store_threshold_version(engine: Engine, model: ModelIdentity, thresholds: Mapping[str, float], *,
                            target_sensitivity: float | None = None, cases: int = 0,
                            details: Mapping[str, Any] | None = None, activate: bool = True,
                            now: datetime | None = None) -> ThresholdVersion:
    """A new version (1, 2, ...) of `model`'s thresholds; with `activate`, the only active one."""
    for label, value in thresholds.items():
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"threshold for {label!r} must be in [0, 1]")
    with engine.begin() as conn:
        latest = conn.execute(
            select(func.max(threshold_versions.c.version)).where(threshold_versions.c.model_sha256 == model.sha256)
        ).scalar_one()
        version = int(latest or 0) + 1
        if activate:
            conn.execute(update(threshold_versions).where(threshold_versions.c.model_sha256 == model.sha256)
                         .values(active=False))
        conn.execute(insert(threshold_versions).values(
            model_sha256=model.sha256, model_version=model.version[:64], version=version,
            thresholds={k: float(v) for k, v in thresholds.items()}, target_sensitivity=target_sensitivity,
            cases=cases, details=dict(details or {}), created_at=now or datetime.now(UTC), active=activate,
        ))
    return ThresholdVersion(version, {k: float(v) for k, v in thresholds.items()}, cases, dict(details or {}),
                            activate)


def deactivate_local_thresholds(engine: Engine, model_sha256: str) -> None:
    """Go back to the manifest's thresholds (the versions stay, for the record)."""
    with engine.begin() as conn:
        conn.execute(update(threshold_versions).where(threshold_versions.c.model_sha256 == model_sha256)
                     .values(active=False))


def recalibrated_thresholds(cases: list[LabelledCase], current: Mapping[str, float], target_sensitivity: float,
                            *, min_positives: int = 10) -> tuple[dict[str, float], dict[str, Any]]:
    """New thresholds per finding (those with too few positives keep `current`) and what each achieves."""
    thresholds: dict[str, float] = {}
    details: dict[str, Any] = {}
    for label, old in current.items():
        pairs = [(c.reference(label), c.findings[label][0]) for c in cases if label in c.findings]
        known = [(y, p) for y, p in pairs if y is not None]
        y = [a for a, _ in known]
        p = [b for _, b in known]
        positives = int(sum(y))
        chosen = threshold_for_sensitivity(y, p, target_sensitivity) if positives >= min_positives else None
        thresholds[label] = float(chosen) if chosen is not None else float(old)
        at = confusion_metrics(y, p, thresholds[label]) if y else None
        details[label] = {
            "cases": len(y), "positives": positives, "kept_current": chosen is None, "previous": float(old),
            "sensitivity": at.recall if at else None, "specificity": at.specificity if at else None,
        }
    return thresholds, details


def recalibrate(engine: Engine, model: ModelIdentity, current: Mapping[str, float], *, target_sensitivity: float,
                since: datetime | None = None, min_positives: int = 10, activate: bool = True) -> ThresholdVersion:
    """Choose and store new thresholds for `model` from its labelled studies since `since`."""
    cases = labelled_cases(engine, since=since, model_sha256=model.sha256)
    thresholds, details = recalibrated_thresholds(cases, current, target_sensitivity, min_positives=min_positives)
    return store_threshold_version(engine, model, thresholds, target_sensitivity=target_sensitivity,
                                   cases=len(cases), details=details, activate=activate)
