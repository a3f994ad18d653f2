"""Drift: are the studies, and the model's answers, still like the ones it was evaluated on?

* **Output drift**: for each finding, the population stability index (PSI) of the model's probabilities in the
  window against the reference distribution of its evaluation (the held-out set's probability histogram,
  ``evaluation.held_out.groups.all.<label>.calibration``, ten equal-width bins, in the model's manifest).
* **Input drift**: PSI of the DICOM metadata mix (view position; age band) against the evaluation's held-out
  mix (``view=PA``, ``view=AP``, ``age=...`` groups), and of the images' mean intensity (10 bins on [0, 1])
  against the studies seen before the window (the site's own baseline: the evaluation keeps no pixel statistics).
* **Performance floor**: sensitivity for any abnormality below the site's floor.

PSI = Σ (current − reference) · ln(current / reference) over bins, proportions floored at 1e-4 (Yurdakul 2018,
"Statistical properties of population stability index"); below 0.1 is usually read as stable, 0.1-0.25 as a
moderate shift and above 0.25 as a major one. An alert is written to the log, stored (``monitoring_alerts``,
counted in the metrics) and, when a webhook is configured, POSTed as JSON; the same alert is not repeated within
`ALERT_REPEAT` of the last one.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Engine, insert, select

from ..app.storage.database import as_utc as _utc
from ..app.storage.monitoring_tables import image_observations, monitoring_alerts
from ..app.storage.tables import results
from ..model.datasets import age_band

log = logging.getLogger(__name__)

ALERT_REPEAT: Final = timedelta(hours=24)
_FLOOR: Final = 1e-4
BINS: Final = 10


def psi(reference: Sequence[float], current: Sequence[float]) -> float | None:
    """Population stability index of two histograms over the same bins (counts or proportions)."""
    ref_total, cur_total = float(sum(reference)), float(sum(current))
    if len(reference) != len(current):
        raise ValueError("the histograms must have the same bins")
    if ref_total <= 0 or cur_total <= 0:
        return None
    value = 0.0
    for r, c in zip(reference, current, strict=True):
        rp, cp = max(r / ref_total, _FLOOR), max(c / cur_total, _FLOOR)
        value += (cp - rp) * math.log(cp / rp)
    return value


def histogram(values: Sequence[float], bins: int = BINS) -> list[int]:
    """Counts in `bins` equal-width bins on [0, 1]; the last bin includes 1.0 (as the evaluation's bins)."""
    counts = [0] * bins
    for v in values:
        counts[min(max(int(v * bins), 0), bins - 1)] += 1
    return counts


@dataclass(frozen=True)
class DriftFinding:
    kind: str  # output-drift | input-drift | performance-floor
    subject: str
    value: float | None
    limit: float
    cases: int

    @property
    def alarming(self) -> bool:
        if self.value is None:
            return False
        return self.value < self.limit if self.kind == "performance-floor" else self.value > self.limit


def reference_from_evaluation(evaluation: Mapping[str, Any] | None) -> dict[str, Any]:
    """Score histograms per label and the view / age mix of a model's evaluation report (held-out set)."""
    if not evaluation:
        return {"scores": {}, "view": {}, "age": {}}
    held_out = evaluation.get("held_out") or {}
    groups = held_out.get("groups", held_out)  # the full report nests the groups; the manifest's summary does not
    scores = {
        label: [int(b.get("count", 0)) for b in data.get("calibration", [])]
        for label, data in (groups.get("all") or {}).items()
        if isinstance(data, Mapping) and data.get("calibration")
    }
    labels = list(evaluation.get("labels") or scores)

    def mix(prefix: str) -> dict[str, int]:
        found = {}
        for name, data in groups.items():
            if name.startswith(prefix) and "/" not in name and labels and labels[0] in data:
                found[name.removeprefix(prefix)] = int(data[labels[0]].get("n", 0))
        return found

    return {"scores": scores, "view": mix("view="), "age": mix("age=")}


def output_drift(engine: Engine, reference: Mapping[str, Sequence[int]], model_sha256: str, *,
                 since: datetime | None, until: datetime | None = None, limit: float = 0.25) -> list[DriftFinding]:
    query = select(results.c.findings).where(results.c.model_sha256 == model_sha256)
    if since is not None:
        query = query.where(results.c.created_at >= since)
    if until is not None:
        query = query.where(results.c.created_at < until)
    per_label: dict[str, list[float]] = {}
    with engine.connect() as conn:
        for (findings,) in conn.execute(query):
            for f in findings:
                per_label.setdefault(f["label"], []).append(float(f["probability"]))
    found = []
    for label, ref in reference.items():
        values = per_label.get(label, [])
        value = psi(ref, histogram(values, len(ref))) if values else None
        found.append(DriftFinding("output-drift", label, value, limit, len(values)))
    return found


def input_drift(engine: Engine, reference: Mapping[str, Mapping[str, int]], *, since: datetime,
                until: datetime | None = None, limit: float = 0.25) -> list[DriftFinding]:
    query = select(image_observations)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    current = [r for r in rows if _utc(r["recorded_at"]) >= since and (until is None or _utc(r["recorded_at"]) < until)]
    baseline = [r for r in rows if _utc(r["recorded_at"]) < since]
    found = []
    for attribute, reader in (("view", _view), ("age", lambda r: age_band(r["patient_age"]))):
        ref = reference.get(attribute) or {}
        if not ref or not current:
            continue
        seen = [reader(r) for r in current]
        categories = sorted(set(ref) | set(seen))
        value = psi([ref.get(c, 0) for c in categories], [seen.count(c) for c in categories])
        found.append(DriftFinding("input-drift", f"{attribute}-mix", value, limit, len(current)))
    means_now = [r["pixel_mean"] for r in current if r["pixel_mean"] is not None]
    means_before = [r["pixel_mean"] for r in baseline if r["pixel_mean"] is not None]
    if means_now and means_before:
        value = psi(histogram(means_before), histogram(means_now))
        found.append(DriftFinding("input-drift", "pixel-mean", value, limit, len(means_now)))
    return found


def _view(row: Any) -> str:
    text = (row["view_position"] or "").strip().upper()
    return "PA" if text == "PA" else "AP" if text.startswith("AP") else "other"



class AlertSink:
    """Alerts to the log, the ``monitoring_alerts`` table and, optionally, a webhook (JSON POST)."""

    def __init__(self, engine: Engine, webhook_url: str = "", *, timeout: float = 5.0) -> None:
        self.engine = engine
        self.webhook_url = webhook_url
        self.timeout = timeout

    def raise_alert(self, finding: DriftFinding, *, now: datetime | None = None, detail: str = "") -> bool:
        """Record the alert unless the same one was raised within `ALERT_REPEAT`; True when it was raised."""
        now = now or datetime.now(UTC)
        with self.engine.begin() as conn:
            last = conn.execute(
                select(monitoring_alerts.c.raised_at)
                .where(monitoring_alerts.c.kind == finding.kind, monitoring_alerts.c.subject == finding.subject)
                .order_by(monitoring_alerts.c.raised_at.desc())
                .limit(1)
            ).first()
            if last is not None and now - _utc(last.raised_at) < ALERT_REPEAT:
                return False
            conn.execute(insert(monitoring_alerts).values(
                raised_at=now, kind=finding.kind, subject=finding.subject[:64], value=finding.value,
                limit_value=finding.limit, detail=detail,
            ))
        log.warning("monitoring alert: %s %s = %s (limit %s, %d cases)", finding.kind, finding.subject,
                    f"{finding.value:.3f}" if finding.value is not None else "-", finding.limit, finding.cases)
        if self.webhook_url:
            self._post({"alert": asdict(finding), "raised_at": now.isoformat(), "detail": detail})
        return True

    def _post(self, body: Mapping[str, Any]) -> None:
        request = urllib.request.Request(
            self.webhook_url, data=json.dumps(body).encode("utf-8"), method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (configured URL)
                response.read()
        except OSError as exc:  # the alert is stored and logged already; a dead webhook must not stop monitoring
            log.error("alert webhook failed: %s", type(exc).__name__)

    def counts(self, since: datetime | None = None) -> dict[str, int]:
        query = select(monitoring_alerts.c.kind)
        if since is not None:
            query = query.where(monitoring_alerts.c.raised_at >= since)
        counts: dict[str, int] = {}
        with self.engine.connect() as conn:
            for (kind,) in conn.execute(query):
                counts[kind] = counts.get(kind, 0) + 1
        return counts
