"""Settings of drafting and monitoring.

They are ordinary service settings (`radtriage.app.config.Settings`, so ``RADTRIAGE_<NAME>`` in the environment
or the TOML file); this class only gathers and validates them. Their defaults live in `Settings`, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..app.config import Settings, load_settings
from ..model.drafting import DRAFTING_MODES, parse_margins

_DEFAULTS = Settings()


@dataclass(frozen=True)
class MonitoringSettings:
    #: "off" (default) | "shadow" (drafts stored, never sent) | "on" (drafts sent in the DiagnosticReport).
    drafting_mode: str = _DEFAULTS.drafting_mode
    #: Margin below each threshold, global ("0.05") or per finding ("Effusion=0.02,*=0.05").
    drafting_margin: str = _DEFAULTS.drafting_margin
    #: The NPV the margin was chosen for (shown with the measured NPV in the monitoring report).
    drafting_target_npv: float = _DEFAULTS.drafting_target_npv
    #: Days of reports the live metrics cover by default.
    metrics_window_days: int = _DEFAULTS.metrics_window_days
    #: Population stability index above which a distribution counts as drifted (0.25: the usual "major shift").
    drift_psi_alert: float = _DEFAULTS.drift_psi_alert
    #: Fewest cases in the window before drift or a performance floor is judged.
    drift_min_cases: int = _DEFAULTS.drift_min_cases
    #: Sensitivity of "any abnormality" below which an alert is raised (0: no floor).
    performance_floor_sensitivity: float = _DEFAULTS.performance_floor_sensitivity
    #: URL that receives alerts as JSON POSTs; empty: log and metrics only.
    alert_webhook: str = _DEFAULTS.alert_webhook
    #: Sensitivity that threshold recalibration aims for.
    recalibration_target_sensitivity: float = _DEFAULTS.recalibration_target_sensitivity

    def __post_init__(self) -> None:
        if self.drafting_mode not in DRAFTING_MODES:
            raise ValueError(f"drafting_mode must be one of {', '.join(DRAFTING_MODES)}, got {self.drafting_mode!r}")
        parse_margins(self.drafting_margin)  # refuses a bad margin at start-up, not at the first study
        if not 0.0 < self.drafting_target_npv <= 1.0:
            raise ValueError("drafting_target_npv must be in (0, 1]")

    @property
    def margins(self) -> dict[str, float]:
        return parse_margins(self.drafting_margin)

    @classmethod
    def from_settings(cls, settings: Any = None, env: Mapping[str, str] | None = None) -> MonitoringSettings:
        """From the service's settings (default: loaded from `env`, or the process environment)."""
        if settings is None:
            settings = load_settings(env=dict(env) if env is not None else None)
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})
