"""The site gate: whether this site acts on the model's priorities, or only records them (shadow mode).

A model trained elsewhere has to show it works on this site's films before it may reorder this site's worklist
(issue 10). The ``shadow_mode`` setting says how that is decided:

* ``on``: always shadow. Results are scored, stored and shown, with the priority the model *would* have set;
  no priority is raised and no priority update goes to the RIS.
* ``off``: always act on the model (an explicit operator decision: audited at start-up).
* ``auto`` (the default): shadow until a site validation (`radtriage model validate-site`) is recorded for the
  active model's weights (sha256). An operator may override that per model with
  ``radtriage model shadow on|off --reason ...`` (audited; ``auto`` returns to the rule). With
  ``site_drift_action = "shadow"``, a site whose recent scores drift from its validation falls back to shadow
  mode automatically, whatever the override said (audited when it happens).

Nothing here imports torch or scikit-learn: the web and MLLP processes read the same state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine, Row, Table, insert, select

from ..app.core.domain import ModelIdentity
from ..app.storage.database import as_utc
from ..app.storage.tables import shadow_overrides, site_validations

if TYPE_CHECKING:
    from ..compliance.audit_store import AuditLog

log = logging.getLogger(__name__)

SHADOW_MODES: Final = ("on", "off", "auto")
DRIFT_ACTIONS: Final = ("alert", "shadow")
OVERRIDE_MODES: Final = ("on", "off", "auto")


@dataclass(frozen=True)
class SiteValidation:
    """One recorded `validate-site` run for a model."""

    id: int
    model_sha256: str
    recorded_at: datetime
    recorded_by: str
    n: int
    metrics: Mapping[str, Any]


@dataclass(frozen=True)
class ShadowOverride:
    model_sha256: str
    mode: str
    reason: str
    recorded_by: str
    recorded_at: datetime


class SiteAcceptance:
    """The site's validations of models and operators' shadow-mode overrides (migration 0006), audited."""

    def __init__(self, engine: Engine, audit: AuditLog | None = None) -> None:
        self.engine = engine
        self.audit = audit

    def record_validation(
        self, model: ModelIdentity, *, by: str, n: int, metrics: Mapping[str, Any], at: datetime | None = None
    ) -> SiteValidation:
        at = at or datetime.now(UTC)
        with self.engine.begin() as conn:
            new_id = conn.execute(
                insert(site_validations).values(
                    model_sha256=model.sha256, recorded_at=at, recorded_by=by[:255], n=n, metrics=dict(metrics)
                )
            ).inserted_primary_key
            if self.audit is not None:
                from ..compliance.audit import SITE_VALIDATION_RECORDED, AuditRecord

                summary = metrics.get("summary", {})
                self.audit.append(
                    conn,
                    AuditRecord(
                        SITE_VALIDATION_RECORDED,
                        user_id=by[:255] or None,
                        details={
                            "model": f"{model.name} {model.version}",
                            "model-sha256": model.sha256,
                            "n": str(n),
                            **{str(k): str(v) for k, v in summary.items()},
                        },
                    ),
                )
        assert new_id is not None
        return SiteValidation(int(new_id[0]), model.sha256, at, by, n, dict(metrics))

    def latest_validation(self, model_sha256: str) -> SiteValidation | None:
        row = self._newest(site_validations, model_sha256)
        if row is None:
            return None
        recorded = as_utc(row.recorded_at) or row.recorded_at
        return SiteValidation(row.id, row.model_sha256, recorded, row.recorded_by, row.n, dict(row.metrics))

    def _newest(self, table: Table, model_sha256: str) -> Row[Any] | None:
        """The newest row of `table` (site validations or shadow overrides) recorded for one model."""
        query = (
            select(table)
            .where(table.c.model_sha256 == model_sha256)
            .order_by(table.c.recorded_at.desc(), table.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            return conn.execute(query).first()

    def record_override(
        self, model: ModelIdentity, mode: str, *, reason: str, by: str, at: datetime | None = None
    ) -> ShadowOverride:
        """An operator's explicit decision for one model: on (shadow), off (act), auto (back to the rule)."""
        if mode not in OVERRIDE_MODES:
            raise ValueError(f"mode must be one of {', '.join(OVERRIDE_MODES)}, not {mode!r}")
        if not reason.strip():
            raise ValueError("an override needs a reason")
        at = at or datetime.now(UTC)
        override = ShadowOverride(model.sha256, mode, reason.strip()[:1000], by[:255], at)
        with self.engine.begin() as conn:
            conn.execute(
                insert(shadow_overrides).values(
                    model_sha256=model.sha256, mode=mode, reason=override.reason, recorded_by=override.recorded_by,
                    recorded_at=at,
                )
            )  # fmt: skip
            if self.audit is not None:
                from ..compliance.audit import SHADOW_MODE_CHANGED, AuditRecord

                self.audit.append(
                    conn,
                    AuditRecord(
                        SHADOW_MODE_CHANGED,
                        user_id=override.recorded_by or None,
                        details={
                            "shadow": mode,
                            "by": "operator override",
                            "reason": override.reason[:255],
                            "model-sha256": model.sha256,
                        },
                    ),
                )
        return override

    def latest_override(self, model_sha256: str) -> ShadowOverride | None:
        row = self._newest(shadow_overrides, model_sha256)
        if row is None:
            return None
        recorded = as_utc(row.recorded_at) or row.recorded_at
        return ShadowOverride(row.model_sha256, row.mode, row.reason, row.recorded_by, recorded)


#: What the drift check returns: None when the site looks like its validation, else a short description.
DriftCheck = Callable[[ModelIdentity], str | None]


class SiteGate:
    """The core's `ShadowGate` port: None when the model may set priorities, else why it may not.

    The answer is cached for `cache_seconds` per model (one database read per study would be wasted work; an
    operator's override or a new validation takes effect within that time)."""

    def __init__(
        self,
        acceptance: SiteAcceptance,
        mode: str = "auto",
        *,
        drift_action: str = "alert",
        drift: DriftCheck | None = None,
        cache_seconds: float = 30.0,
    ) -> None:
        if mode not in SHADOW_MODES:
            raise ValueError(f"shadow_mode must be one of {', '.join(SHADOW_MODES)}, not {mode!r}")
        if drift_action not in DRIFT_ACTIONS:
            raise ValueError(f"site_drift_action must be one of {', '.join(DRIFT_ACTIONS)}, not {drift_action!r}")
        self.acceptance = acceptance
        self.mode = mode
        self.drift_action = drift_action
        self.drift = drift
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()
        self._drifting: set[str] = set()

    def __call__(self, model: ModelIdentity) -> str | None:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(model.sha256)
            if cached is not None and now - cached[0] < self.cache_seconds:
                return cached[1]
        reason = self.reason(model)
        with self._lock:
            self._cache[model.sha256] = (now, reason)
        return reason

    def forget(self) -> None:
        """Drop cached answers (after an override or a validation in this process)."""
        with self._lock:
            self._cache.clear()

    def reason(self, model: ModelIdentity) -> str | None:
        """Uncached: why results of `model` are shadow-only, or None when it may set priorities."""
        if self.mode == "on":
            return "shadow_mode setting is on"
        if self.mode == "off":
            self._check_drift(model)  # alerts still go out: the site should know, even if it acts regardless
            return None
        override = self.acceptance.latest_override(model.sha256)
        if override is not None and override.mode == "on":
            # The operator's free-text reason stays in the audit trail, out of clinical results.
            return f"operator override by {override.recorded_by or 'an operator'} on {override.recorded_at:%Y-%m-%d}"
        drifting = self._drift_reason(model)
        if drifting is not None:
            return drifting
        if override is not None and override.mode == "off":
            return None
        if self.acceptance.latest_validation(model.sha256) is None:
            return f"no site validation recorded for model {model.name} {model.version} (sha256 {model.sha256[:12]})"
        return None

    def _check_drift(self, model: ModelIdentity) -> str | None:
        """Run the drift check (which raises the alert); None when there is none, no drift, or it failed."""
        if self.drift is None:
            return None
        try:
            return self.drift(model)
        except Exception:  # a failing drift check must not switch the site's behaviour either way
            log.exception("the site drift check failed; shadow mode is decided without it")
            return None

    def _drift_reason(self, model: ModelIdentity) -> str | None:
        """Runs the drift check under either action; only "shadow" acts on it."""
        found = self._check_drift(model)
        if self.drift_action != "shadow":
            return None
        self._note_drift_change(model, found)
        return None if found is None else f"site drift fallback: {found}"

    def _note_drift_change(self, model: ModelIdentity, found: str | None) -> None:
        """Log and audit the moment the drift fallback switches shadow mode on or off for a model."""
        with self._lock:
            was = model.sha256 in self._drifting
            if (found is not None) == was:
                return
            (self._drifting.add if found is not None else self._drifting.discard)(model.sha256)
        if found is not None:
            log.warning("SHADOW MODE: the site's scores drift from its validation (%s); priorities not raised", found)
        else:
            log.warning("the site's scores no longer drift from its validation; the drift fallback is lifted")
        if self.acceptance.audit is not None:
            from ..compliance.audit import SHADOW_MODE_CHANGED, AuditRecord

            self.acceptance.audit.record(
                AuditRecord(
                    SHADOW_MODE_CHANGED,
                    details={
                        "shadow": "on" if found is not None else "auto",
                        "by": "site drift fallback",
                        "reason": (found or "drift resolved")[:255],
                        "model-sha256": model.sha256,
                    },
                )
            )


def audit_setting_override(mode: str, audit: AuditLog) -> None:
    """An explicit ``shadow_mode`` setting (on/off) is an operator's decision: say so at start-up, and audit it."""
    if mode not in ("on", "off"):
        return
    from ..compliance.audit import SHADOW_MODE_CHANGED, AuditRecord

    if mode == "off":
        log.warning("shadow_mode is off by setting: the model raises priorities whether or not the site validated it")
    else:
        log.warning("shadow_mode is on by setting: results are recorded, no priority is raised")
    audit.record(AuditRecord(SHADOW_MODE_CHANGED, details={"shadow": mode, "by": "setting shadow_mode"}))
