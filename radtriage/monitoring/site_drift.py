"""The site gate's drift check: do this site's recent scores still look like its validation sample?

The reference is the abnormality-score histogram (highest finding probability, ten equal-width bins) of the
latest site validation of the model (`radtriage model validate-site` stores it). The current distribution is the
same score over the model's most recent results here (at most `window_cases`). When at least `min_cases` results
are there and the population stability index exceeds `psi_limit`, the site has drifted: an alert is raised
(``site-drift``; log, ``monitoring_alerts``, webhook; not repeated within a day) and, with
``site_drift_action = "shadow"``, the `SiteGate` falls back to shadow mode (audited there).

PSI is `radtriage.monitoring.drift.psi` (the same measure the monitoring uses against the model's evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from ..app.core.domain import ModelIdentity
from ..app.storage.tables import results
from .drift import AlertSink, DriftFinding, histogram, psi
from .site_gate import SiteAcceptance

SITE_DRIFT: str = "site-drift"


@dataclass(frozen=True)
class SiteDriftStatus:
    psi: float | None
    cases: int
    limit: float
    min_cases: int
    has_reference: bool

    @property
    def drifting(self) -> bool:
        return self.psi is not None and self.cases >= self.min_cases and self.psi > self.limit

    def describe(self) -> str:
        value = "-" if self.psi is None else f"{self.psi:.2f}"
        return (
            f"abnormality-score PSI {value} (limit {self.limit:g}) over the last {self.cases} studies against the "
            "site validation sample"
        )


class SiteDrift:
    """A `DriftCheck` for the `SiteGate`, and the status the model page shows."""

    def __init__(
        self,
        engine: Engine,
        acceptance: SiteAcceptance,
        *,
        psi_limit: float = 0.25,
        min_cases: int = 30,
        window_cases: int = 500,
        alerts: AlertSink | None = None,
    ) -> None:
        self.engine = engine
        self.acceptance = acceptance
        self.psi_limit = psi_limit
        self.min_cases = min_cases
        self.window_cases = window_cases
        self.alerts = alerts

    def status(self, model: ModelIdentity) -> SiteDriftStatus:
        validation = self.acceptance.latest_validation(model.sha256)
        reference = (validation.metrics.get("score_histogram") if validation is not None else None) or []
        query = (
            select(results.c.findings)
            .where(results.c.model_sha256 == model.sha256)
            .order_by(results.c.created_at.desc())
            .limit(self.window_cases)
        )
        if validation is not None:
            query = query.where(results.c.created_at >= validation.recorded_at)
        with self.engine.connect() as conn:
            found = [_abnormality(findings) for (findings,) in conn.execute(query)]
        scores = [s for s in found if s is not None]
        value = psi(reference, histogram(scores, len(reference))) if reference and scores else None
        return SiteDriftStatus(value, len(scores), self.psi_limit, self.min_cases, bool(reference))

    def __call__(self, model: ModelIdentity) -> str | None:
        status = self.status(model)
        if not status.drifting:
            return None
        if self.alerts is not None:
            finding = DriftFinding(SITE_DRIFT, "abnormality", status.psi, status.limit, status.cases)
            self.alerts.raise_alert(finding, detail=status.describe())
        return status.describe()


def _abnormality(findings: Any) -> float | None:
    values = [float(f["probability"]) for f in findings or ()]
    return max(values) if values else None


def site_status(components: Any) -> dict[str, Any] | None:
    """For the model page: shadow mode's reason (None when the model acts) and the drift status, or None when
    the active model cannot be read. Reads the manifest only (no torch)."""
    gate = getattr(components, "gate", None)
    monitoring = getattr(components, "monitoring", None)
    if gate is None or monitoring is None:
        return None
    try:
        model = monitoring.manifest().identity
    except Exception:
        return None
    drift = gate.drift if isinstance(gate.drift, SiteDrift) else None
    status = drift.status(model) if drift is not None else None
    return {
        "shadow": gate.reason(model),
        "drift": status.describe() if status is not None and status.drifting else None,
        "drift_action": gate.drift_action,
        "validated": gate.acceptance.latest_validation(model.sha256) is not None,
    }
