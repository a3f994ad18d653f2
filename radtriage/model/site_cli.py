"""`radtriage model shadow` and `radtriage model validate-site`: site acceptance of the active model (issue 10).

Registered on the `model` group by `radtriage.cli`; the group itself lives in `cli_commands.py`.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import click

from ..app.config import Settings, load_settings
from ..app.core.domain import ModelIdentity


def _settings(obj: Any) -> Settings:
    return load_settings((obj or {}).get("config"))


def _active_model(settings: Settings) -> ModelIdentity:
    """The model that scores with these settings (read from its manifest: no torch)."""
    from ..app.factory import resolve_model_path
    from .artefact import read_manifest

    return read_manifest(resolve_model_path(settings)).identity


def _operator(by: str | None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user database entry (containers)
        return "unknown operator"


def _acceptance(settings: Settings) -> Any:
    from ..app.storage import create_database_engine, migrate
    from ..compliance.audit_store import AuditLog
    from ..monitoring.site_gate import SiteAcceptance

    engine = create_database_engine(settings.resolved_database_url())
    migrate(engine)
    return SiteAcceptance(engine, AuditLog(engine))


@click.command("shadow")
@click.argument("mode", type=click.Choice(["on", "off", "auto", "status"]))
@click.option("--reason", default="", help="Why (required for on, off and auto; kept in the audit trail).")
@click.option("--by", "by", default=None, help="Who decides (default: the operating-system user).")
@click.pass_obj
def shadow_command(obj: Any, mode: str, reason: str, by: str | None) -> None:
    """Shadow mode for the active model: on (record only), off (act on it), auto (until a site validation is
    recorded), or show its status. Audited; takes effect within 30 s in running workers."""
    from ..monitoring.site_gate import SiteGate

    settings = _settings(obj)
    model = _active_model(settings)
    acceptance = _acceptance(settings)
    if mode != "status":
        if not reason.strip():
            raise click.UsageError("--reason is required: the audit trail keeps why shadow mode changed")
        acceptance.record_override(model, mode, reason=reason, by=_operator(by))
        click.echo(f"shadow mode override for {model.name} {model.version}: {mode} (audited)")
    gate = SiteGate(acceptance, settings.shadow_mode, drift_action=settings.site_drift_action)
    why = gate.reason(model)
    click.echo(f"shadow_mode setting: {settings.shadow_mode}")
    click.echo(f"model: {model.name} {model.version} (sha256 {model.sha256})")
    validation = acceptance.latest_validation(model.sha256)
    if validation is not None:
        click.echo(f"site validation: {validation.recorded_at:%Y-%m-%d %H:%M} UTC by {validation.recorded_by}, "
                   f"n={validation.n}")
    else:
        click.echo("site validation: none recorded for this model")
    click.echo(f"now: SHADOW ({why})" if why else "now: ACTIVE (the model's priorities are acted on)")


@click.command("validate-site")
@click.argument("sample", type=click.Path(exists=True, path_type=Path))
@click.option("--limit", type=int, default=None, help="Score at most this many images (a bounded trial run).")
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap resamples for the CIs.")
@click.option("--target-sensitivity", type=float, default=0.9, show_default=True)
@click.option("--record/--no-record", default=True, show_default=True, help="Record the validation (audited).")
@click.option("--min-per-class", type=int, default=20, show_default=True,
              help="Record only with at least this many scored normal and abnormal images.")
@click.option("--by", "by", default=None, help="Who validates (default: the operating-system user).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.pass_obj
def validate_site_command(
    obj: Any, sample: Path, limit: int | None, bootstrap: int, target_sensitivity: float, record: bool,
    min_per_class: int, by: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Score SAMPLE (a CSV of image paths and labels, or a folder with normal/ and abnormal/) with the active
    model; report AUROC, sensitivity, specificity and ECE with bootstrap 95% CIs and recommended operating
    points; record the validation for the model's sha256 (this ends shadow mode "auto")."""
    from ..app.factory import resolve_model_path
    from .policy import load_policy
    from .scorer import XrvScorer
    from .site_validation import format_report, load_sample, validate_site

    settings = _settings(obj)
    try:
        cases = load_sample(sample, limit=limit)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    scorer = XrvScorer.from_artefact(resolve_model_path(settings))
    report = validate_site(
        scorer, cases, policy=load_policy(settings.policy or None), bootstrap=bootstrap,
        target_sensitivity=target_sensitivity,
    )  # fmt: skip
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    if record:
        if min(report["n_normal"], report["n_abnormal"]) < max(1, min_per_class):
            raise click.ClickException(
                f"not recorded: {report['n_normal']} normal and {report['n_abnormal']} abnormal images were scored; "
                f"a site validation needs at least {max(1, min_per_class)} of each (--min-per-class)"
            )
        acceptance = _acceptance(settings)
        stored = acceptance.record_validation(scorer.identity, by=_operator(by), n=report["n_scored"], metrics=report)
        click.echo(f"recorded site validation {stored.id} for {scorer.identity.name} {scorer.identity.version} "
                   f"(sha256 {scorer.identity.sha256[:12]}); audited")
