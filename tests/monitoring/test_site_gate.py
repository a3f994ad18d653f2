"""Contract of the site-acceptance records and the gate's rule, on SQLite and a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from radtriage.app.core.domain import ModelIdentity
from radtriage.app.storage import create_database_engine, migrate
from radtriage.compliance.audit_store import AuditLog
from radtriage.monitoring.site_gate import SiteAcceptance, SiteGate

MODEL = ModelIdentity("radtriage-cxr", "1.0", "ab" * 32)
OTHER = ModelIdentity("radtriage-cxr", "2.0", "cd" * 32)
T0 = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


@pytest.fixture
def acceptance(database_url: str):
    engine = create_database_engine(database_url)
    migrate(engine)
    yield SiteAcceptance(engine, AuditLog(engine))
    engine.dispose()


def test_validations_are_kept_per_model_newest_first(acceptance: SiteAcceptance) -> None:
    assert acceptance.latest_validation(MODEL.sha256) is None
    acceptance.record_validation(MODEL, by="a", n=100, metrics={"auroc": {"value": 0.8}}, at=T0)
    acceptance.record_validation(MODEL, by="b", n=200, metrics={"auroc": {"value": 0.9}}, at=T0 + timedelta(days=1))
    latest = acceptance.latest_validation(MODEL.sha256)
    assert latest is not None
    assert (latest.recorded_by, latest.n, latest.metrics["auroc"]["value"]) == ("b", 200, 0.9)
    assert latest.recorded_at == T0 + timedelta(days=1) and latest.recorded_at.tzinfo is not None
    assert acceptance.latest_validation(OTHER.sha256) is None


def test_the_rule_in_auto_mode(acceptance: SiteAcceptance) -> None:
    gate = SiteGate(acceptance, "auto", cache_seconds=0)
    assert gate(MODEL) is not None and "no site validation recorded" in (gate(MODEL) or "")
    acceptance.record_validation(MODEL, by="a", n=100, metrics={}, at=T0)
    assert gate(MODEL) is None and gate(OTHER) is not None
    acceptance.record_override(MODEL, "on", reason="maintenance", by="ops", at=T0 + timedelta(hours=1))
    assert gate(MODEL) == "operator override by ops on 2026-12-06"
    acceptance.record_override(MODEL, "auto", reason="done", by="ops", at=T0 + timedelta(hours=2))
    assert gate(MODEL) is None
    acceptance.record_override(OTHER, "off", reason="approved", by="ops", at=T0)
    assert gate(OTHER) is None  # an explicit "act" without a validation


def test_settings_win_over_records(acceptance: SiteAcceptance) -> None:
    acceptance.record_override(MODEL, "off", reason="approved", by="ops")
    assert SiteGate(acceptance, "on")(MODEL) == "shadow_mode setting is on"
    assert SiteGate(acceptance, "off")(OTHER) is None


def test_a_failing_drift_check_changes_nothing(acceptance: SiteAcceptance) -> None:
    def broken(model: ModelIdentity) -> str | None:
        raise RuntimeError("database gone")

    acceptance.record_validation(MODEL, by="a", n=100, metrics={})
    assert SiteGate(acceptance, "auto", drift_action="shadow", drift=broken)(MODEL) is None


def test_with_shadow_mode_off_the_drift_check_still_runs_for_its_alerts(acceptance: SiteAcceptance) -> None:
    checked: list[str] = []

    def drifting(model: ModelIdentity) -> str | None:
        checked.append(model.sha256)  # the real check (SiteDrift) raises its alert here
        return "abnormality-score PSI 0.90"

    assert SiteGate(acceptance, "off", drift_action="shadow", drift=drifting)(MODEL) is None  # acts regardless
    assert checked == [MODEL.sha256]
    assert SiteGate(acceptance, "on", drift=drifting)(MODEL) == "shadow_mode setting is on"
    assert checked == [MODEL.sha256]  # already shadow: nothing to decide


@pytest.mark.parametrize(("mode", "action"), [("maybe", "alert"), ("auto", "panic")])
def test_unknown_values_are_refused(acceptance: SiteAcceptance, mode: str, action: str) -> None:
    with pytest.raises(ValueError, match="must be one of"):
        SiteGate(acceptance, mode, drift_action=action)


def test_an_override_needs_a_known_mode_and_a_reason(acceptance: SiteAcceptance) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        acceptance.record_override(MODEL, "sometimes", reason="x", by="ops")
    with pytest.raises(ValueError, match="needs a reason"):
        acceptance.record_override(MODEL, "off", reason=" ", by="ops")
    assert acceptance.latest_override(MODEL.sha256) is None


def test_the_shadow_command_records_audits_and_reports(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from radtriage.cli import main
    from radtriage.model.artefact import read_manifest
    from radtriage.model.placeholder import ensure_placeholder

    model_dir = ensure_placeholder(tmp_path / "models")
    env = {"RADTRIAGE_HOME": str(tmp_path / "home"), "RADTRIAGE_MODEL": str(model_dir)}
    runner = CliRunner(env=env)
    status = runner.invoke(main, ["model", "shadow", "status"])
    assert status.exit_code == 0, status.output
    assert "shadow_mode setting: auto" in status.output and "now: SHADOW (no site validation recorded" in status.output
    refused = runner.invoke(main, ["model", "shadow", "off"])
    assert refused.exit_code != 0 and "--reason is required" in refused.output
    done = runner.invoke(main, ["model", "shadow", "off", "--reason", "go-live approved", "--by", "ops lead"])
    assert done.exit_code == 0, done.output
    assert "now: ACTIVE" in done.output
    engine = create_database_engine(f"sqlite:///{tmp_path / 'home' / 'radtriage.sqlite3'}")
    sha = read_manifest(model_dir).weights_sha256
    override = SiteAcceptance(engine).latest_override(sha)
    assert override is not None and (override.mode, override.recorded_by) == ("off", "ops lead")
    events, _ = AuditLog(engine).search(limit=10)
    assert [e.kind for e in events].count("shadow-mode-changed") == 1
