"""What monitoring adds to each scored study: the draft, the threshold version, the image's observations.

* `ResultAnnotator` is a core `EventListener`: when a job reaches ``scored`` it records which operating points
  scored it (``manifest`` or ``local-<n>``, see `recalibration`) and, in drafting mode shadow or on, the draft
  (`radtriage.model.drafting`). The listener runs right after the result is committed and before the job moves
  on to publishing, so a DiagnosticReport read after that already carries the draft.
* `DraftLookup` gives the FHIR door the draft to send for a job: only drafts made in mode "on".
* `MonitoredScorer` wraps the model (the core's `ImageScorer` port): it records each image's DICOM metadata and
  pixel statistics (input drift) and scores with the active local threshold version when there is one.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, null, select

from ..app.core.domain import FindingScore, JobEvent, JobState, ModelIdentity, Priority
from ..app.core.ports import ImageScorer, PreparedImage
from ..app.storage.monitoring_tables import image_observations, result_annotations, threshold_versions
from ..app.storage.order_store import SqlOrderStore
from ..model.drafting import draft_report
from .settings import MonitoringSettings

log = logging.getLogger(__name__)

MANIFEST_THRESHOLDS = "manifest"


def active_thresholds(engine: Engine, model_sha256: str) -> tuple[str, dict[str, float]] | None:
    """The active local threshold version of a model: ("local-<n>", {label: threshold}), or None."""
    with engine.connect() as conn:
        row = conn.execute(
            select(threshold_versions.c.version, threshold_versions.c.thresholds)
            .where(threshold_versions.c.model_sha256 == model_sha256, threshold_versions.c.active.is_(True))
            .order_by(threshold_versions.c.version.desc())
            .limit(1)
        ).first()
    return (f"local-{row.version}", {k: float(v) for k, v in row.thresholds.items()}) if row else None


def thresholds_version_of(engine: Engine, model: ModelIdentity, findings: Sequence[FindingScore]) -> str:
    """Which version's operating points these findings carry (the newest local one that equals them)."""
    used = {f.label: round(f.threshold, 9) for f in findings}
    with engine.connect() as conn:
        rows = conn.execute(
            select(threshold_versions.c.version, threshold_versions.c.thresholds)
            .where(threshold_versions.c.model_sha256 == model.sha256)
            .order_by(threshold_versions.c.version.desc())
        ).all()
    for row in rows:
        if {k: round(float(v), 9) for k, v in row.thresholds.items() if k in used} == used:
            return f"local-{row.version}"
    return MANIFEST_THRESHOLDS


class ResultAnnotator:
    """Event listener: on ``scored``, store the threshold version and (shadow/on) the draft of the result."""

    def __init__(self, store: SqlOrderStore, settings: MonitoringSettings) -> None:
        self.store = store
        self.settings = settings
        self.margins = settings.margins

    def __call__(self, event: JobEvent) -> None:
        if event.to_state is not JobState.SCORED:
            return
        result = self.store.get_result(event.job_id)
        if result is None:
            return
        mode = self.settings.drafting_mode
        # Only a routine case gets a routine draft: an order that arrived urgent stays the clinician's call.
        routine = result.priority is Priority.ROUTINE
        draft = draft_report(result.findings, result.model, self.margins) if mode != "off" and routine else None
        values = {
            "job_id": event.job_id,
            "thresholds_version": thresholds_version_of(self.store.engine, result.model, result.findings),
            "draft_mode": mode,
            "draft_text": draft.text if draft else None,
            "draft_findings": [list(item) for item in draft.findings_checked] if draft else null(),
            "created_at": event.at,
        }
        with self.store.engine.begin() as conn:
            conn.execute(result_annotations.delete().where(result_annotations.c.job_id == event.job_id))
            conn.execute(insert(result_annotations).values(values))
        if draft is not None:
            log.info("job %s: routine draft made (%s mode)", event.job_id, mode)


class DraftLookup:
    """``job id → draft text`` for the FHIR door: drafts made in mode "on" only (shadow drafts stay inside)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __call__(self, job_id: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(result_annotations.c.draft_text, result_annotations.c.draft_mode).where(
                    result_annotations.c.job_id == job_id
                )
            ).first()
        if row is None or row.draft_mode != "on":
            return None
        text: str | None = row.draft_text
        return text


class MonitoredScorer:
    """An `ImageScorer` that records what it sees and applies the active local thresholds."""

    def __init__(self, inner: ImageScorer, engine: Engine, clock: Callable[[], datetime] | None = None) -> None:
        self.inner = inner
        self.engine = engine
        self._clock = clock or (lambda: datetime.now(UTC))

    @property
    def identity(self) -> ModelIdentity:
        return self.inner.identity

    def prepare(self, dicom_bytes: bytes) -> PreparedImage:
        prepared = self.inner.prepare(dicom_bytes)
        try:
            self._observe(dicom_bytes, prepared)
        except Exception:  # observing must never stop scoring
            log.exception("image observation failed")
        return prepared

    def score(self, image: PreparedImage) -> list[FindingScore]:
        findings = self.inner.score(image)
        active = active_thresholds(self.engine, self.identity.sha256)
        if active is None:
            return findings
        _, thresholds = active
        return [FindingScore(f.label, f.probability, thresholds.get(f.label, f.threshold)) for f in findings]

    def explain(self, image: PreparedImage, labels: Sequence[str]) -> list[Any]:
        """The wrapped model's heatmaps, unchanged."""
        explain = getattr(self.inner, "explain", None)
        return list(explain(image, labels)) if callable(explain) else []

    def __getattr__(self, name: str) -> Any:
        # Everything else (the manifest, labels, heatmap for the web pages) is the wrapped model's.
        return getattr(self.inner, name)

    def _observe(self, dicom_bytes: bytes, prepared: PreparedImage) -> None:
        from pydicom import dcmread

        header = dcmread(io.BytesIO(dicom_bytes), stop_before_pixels=True, force=True)
        mean, std = pixel_statistics(prepared)
        values = {
            "sop_instance_uid": str(getattr(header, "SOPInstanceUID", ""))[:64],
            "recorded_at": self._clock(),
            "modality": _short(getattr(header, "Modality", None), 16),
            "view_position": _short(getattr(header, "ViewPosition", None), 16),
            "manufacturer": _short(getattr(header, "Manufacturer", None), 64),
            "patient_age": _age_years(getattr(header, "PatientAge", None)),
            "patient_sex": _short(getattr(header, "PatientSex", None), 1),
            "photometric": _short(getattr(header, "PhotometricInterpretation", None), 16),
            "rows": _int(getattr(header, "Rows", None)),
            "columns": _int(getattr(header, "Columns", None)),
            "pixel_mean": mean,
            "pixel_std": std,
        }
        with self.engine.begin() as conn:
            conn.execute(insert(image_observations).values(values))


def pixel_statistics(prepared: Any) -> tuple[float | None, float | None]:
    """Mean and standard deviation of the model input, rescaled to [0, 1] (torchxrayvision's ±1024 range)."""
    import numpy as np

    pixels = getattr(prepared, "pixels", prepared)
    try:
        array = np.asarray(pixels.detach().cpu().numpy() if hasattr(pixels, "detach") else pixels, dtype=np.float64)
    except (TypeError, ValueError):
        return None, None
    if array.size == 0:
        return None, None
    scaled = (array + 1024.0) / 2048.0 if array.min() < -1.5 or array.max() > 1.5 else array
    mean, std = float(scaled.mean()), float(scaled.std())
    return (mean if math.isfinite(mean) else None, std if math.isfinite(std) else None)


def _short(value: Any, limit: int) -> str | None:
    text = str(value).strip() if value not in (None, "") else ""
    return text[:limit] or None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _age_years(value: Any) -> float | None:
    """DICOM Age String (PS3.5 6.2, AS): ``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY``."""
    text = str(value or "").strip().upper()
    if len(text) != 4 or not text[:3].isdigit() or text[3] not in "DWMY":
        return None
    return int(text[:3]) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[text[3]]


def monitored_scorer_factory(factory: Callable[[], ImageScorer], engine: Engine) -> Callable[[], ImageScorer]:
    """Wrap the composition root's scorer factory (the model still loads only where it scores)."""

    def load() -> ImageScorer:
        return MonitoredScorer(factory(), engine)

    return load
