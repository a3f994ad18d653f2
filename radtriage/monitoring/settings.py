"""Settings of drafting and monitoring.

They are read from `radtriage.app.config.Settings` when it has the field (the lead adds them there), else from the
environment (``RADTRIAGE_<NAME>``), else the default here. Nothing is read at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..model.drafting import DRAFTING_MODES, parse_margins


@dataclass(frozen=True)
class MonitoringSettings:
    #: "off" (default) | "shadow" (drafts stored, never sent) | "on" (drafts sent in the DiagnosticReport).
    drafting_mode: str = "off"
    #: Margin below each threshold, global ("0.05") or per finding ("Effusion=0.02,*=0.05").
    drafting_margin: str = "0.0"
    #: The NPV the margin was chosen for (shown with the measured NPV in the monitoring report).
    drafting_target_npv: float = 0.95
    #: Days of reports the live metrics cover by default.
    metrics_window_days: int = 30
    #: Population stability index above which a distribution counts as drifted (0.25: the usual "major shift").
    drift_psi_alert: float = 0.25
    #: Fewest cases in the window before drift or a performance floor is judged.
    drift_min_cases: int = 30
    #: Sensitivity of "any abnormality" below which an alert is raised (0: no floor).
    performance_floor_sensitivity: float = 0.0
    #: URL that receives alerts as JSON POSTs; empty: log and metrics only.
    alert_webhook: str = ""
    #: Sensitivity that threshold recalibration aims for.
    recalibration_target_sensitivity: float = 0.9

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
        environment = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            default: Any = f.default
            if settings is not None and hasattr(settings, f.name):
                values[f.name] = type(default)(getattr(settings, f.name))
            elif f"RADTRIAGE_{f.name.upper()}" in environment:
                values[f.name] = type(default)(environment[f"RADTRIAGE_{f.name.upper()}"])
        return cls(**values)
