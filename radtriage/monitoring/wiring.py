"""Monitoring on top of the service's components: one call the composition root makes.

``install_monitoring(components)`` registers the result annotator (drafts and threshold versions) as a core
event listener and returns the pieces the doors take: the FHIR door's draft lookup and final-report receiver,
and the HL7 door's ORU^R01 handler.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from ..app.core.service import TriageService
from ..app.storage.order_store import SqlOrderStore
from ..model.artefact import ModelManifest
from .annotations import DraftLookup, ResultAnnotator
from .drift import AlertSink
from .reports import ReportIntake
from .settings import MonitoringSettings


@dataclass
class Monitoring:
    settings: MonitoringSettings
    engine: Engine
    intake: ReportIntake
    drafts: DraftLookup
    annotator: ResultAnnotator
    alerts: AlertSink
    #: The manifest of the model that scores, and its full evaluation report (the drift reference).
    manifest: Callable[[], ModelManifest]
    evaluation: Callable[[], dict[str, Any] | None]

    def fhir_report_receiver(self) -> Callable[[object], tuple[dict[str, Any], int]]:
        from .fhir_reports import fhir_report_receiver

        return fhir_report_receiver(self.intake)

    def hl7_report_handler(self) -> Any:
        from .hl7_reports import OruHandler

        return OruHandler(self.intake)


def install_monitoring(components: Any, settings: MonitoringSettings | None = None) -> Monitoring:
    """Register monitoring with `components` (`radtriage.app.factory.Components`); idempotent."""
    existing = getattr(components, "monitoring", None)
    if isinstance(existing, Monitoring):
        return existing
    settings = settings or MonitoringSettings.from_settings(components.settings)
    service: TriageService = components.service
    store: SqlOrderStore = components.store
    annotator = ResultAnnotator(store, settings)
    service.listeners.append(annotator)
    monitoring = Monitoring(
        settings,
        components.engine,
        ReportIntake(components.engine, service.clock),
        DraftLookup(components.engine),
        annotator,
        AlertSink(components.engine, settings.alert_webhook),
        *_scoring_model(components.settings),
    )
    try:
        components.monitoring = monitoring
    except AttributeError:
        pass
    return monitoring


def _scoring_model(settings: Any) -> tuple[Callable[[], ModelManifest], Callable[[], dict[str, Any] | None]]:
    """The scoring model's manifest and evaluation report, read on first use (neither needs torch).

    The manifest keeps a summary of the evaluation; the full report (with the probability histograms drift
    compares against) is the file the summary's ``report`` names, next to the manifest.
    """
    cached: dict[str, Any] = {}

    def manifest() -> ModelManifest:
        if "manifest" not in cached:
            from ..app.factory import resolve_model_path
            from ..model.artefact import read_manifest

            cached["path"] = resolve_model_path(settings)
            cached["manifest"] = read_manifest(cached["path"])
        found: ModelManifest = cached["manifest"]
        return found

    def evaluation() -> dict[str, Any] | None:
        if "evaluation" not in cached:
            summary = dict(manifest().evaluation or {})
            report = summary.get("report")
            path = Path(cached["path"]) / report if isinstance(report, str) and "/" not in report else None
            cached["evaluation"] = json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else summary
        found: dict[str, Any] | None = cached["evaluation"] or None
        return found

    return manifest, evaluation
