"""``radtriage monitor ...``: report, check (drift alerts), recalibrate, export (feedback to training).

Registered by the CLI: ``main.add_command(monitor_group)``. Each command builds the service's components from
the settings (as ``radtriage serve`` does), so it works on the same database as the running service.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click


@contextmanager
def _monitoring(obj: Any) -> Iterator[Any]:
    from ..app.config import load_settings
    from ..app.factory import build_components
    from .wiring import install_monitoring

    config = obj.get("config") if isinstance(obj, dict) else None
    components = build_components(load_settings(config))
    try:
        yield components, install_monitoring(components)
    finally:
        components.close()


@click.group("monitor")
def monitor_group() -> None:
    """Continuous evaluation against radiologists' final reports, drift, recalibration, feedback export."""


@monitor_group.command("report")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for monitoring-report.md, metrics.json and plots/.")
@click.option("--days", type=float, default=None, help="Window in days (default: the metrics_window_days setting).")
@click.pass_obj
def report_command(obj: Any, out: Path, days: float | None) -> None:
    """Write a markdown report with plots (trend, ROC, calibration) over the window."""
    from .report import write_report

    with _monitoring(obj) as (_, monitoring):
        path = write_report(monitoring, out, days=days)
    click.echo(str(path))


@monitor_group.command("check")
@click.option("--days", type=float, default=None, help="Window in days.")
@click.pass_obj
def check_command(obj: Any, days: float | None) -> None:
    """Run the drift and performance-floor checks; alerts go to the log, the database and the webhook."""
    from .live import snapshot

    with _monitoring(obj) as (_, monitoring):
        snap = snapshot(monitoring, days=days, bootstrap=0)
    for d in snap["drift"]:
        value = "-" if d["value"] is None else f"{d['value']:.3f}"
        click.echo(f"{d['kind']:18} {d['subject']:28} {value:>8} limit {d['limit']} cases {d['cases']}"
                   f"{'  ALERT' if d['alarming'] else ''}")
    if snap["alerts"]["raised_now"]:
        raise SystemExit(3)


@monitor_group.command("recalibrate")
@click.option("--target-sensitivity", type=float, default=None, help="Default: the setting (0.9).")
@click.option("--days", type=float, default=None, help="Use studies scored in the last N days (default: all).")
@click.option("--min-positives", type=int, default=10, show_default=True,
              help="Findings with fewer positives keep their current threshold.")
@click.option("--dry-run", is_flag=True, help="Show the thresholds; store nothing.")
@click.pass_obj
def recalibrate_command(obj: Any, target_sensitivity: float | None, days: float | None, min_positives: int,
                        dry_run: bool) -> None:
    """New operating points for the scoring model from locally labelled studies, stored as a new version."""
    from .annotations import active_thresholds
    from .metrics import labelled_cases
    from .recalibration import recalibrated_thresholds, store_threshold_version

    with _monitoring(obj) as (_, monitoring):
        manifest = monitoring.manifest()
        target = target_sensitivity or monitoring.settings.recalibration_target_sensitivity
        active = active_thresholds(monitoring.engine, manifest.weights_sha256)
        current = active[1] if active else dict(manifest.thresholds)
        since = datetime.now(UTC) - timedelta(days=days) if days else None
        cases = labelled_cases(monitoring.engine, since, model_sha256=manifest.weights_sha256)
        thresholds, details = recalibrated_thresholds(cases, current, target, min_positives=min_positives)
        click.echo(json.dumps({"cases": len(cases), "thresholds": thresholds, "details": details}, indent=2))
        if dry_run:
            return
        version = store_threshold_version(monitoring.engine, manifest.identity, thresholds,
                                          target_sensitivity=target, cases=len(cases), details=details)
        click.echo(f"stored and activated {version.name} for {manifest.name} {manifest.version}")


@monitor_group.command("export")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for images/ and labels.csv.")
@click.pass_obj
def export_command(obj: Any, out: Path) -> None:
    """Export labelled studies (images from the PACS) as a training set for ``radtriage model train``."""
    from .feedback import export_training_set

    with _monitoring(obj) as (components, monitoring):
        summary = export_training_set(monitoring.engine, components.service.source, out)
    click.echo(f"{summary.studies} studies: {summary.exported} exported, {summary.already_there} already there, "
               f"failed {summary.failed or 'none'}; labels in {summary.labels_csv}")


@monitor_group.command("draft-margin")
@click.option("--labels", "labels_folder", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="The labelled folder the scored images come from (labels.csv).")
@click.option("--choose-on", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="`radtriage score` CSV of the images the margin is chosen on (validation).")
@click.option("--measure-on", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="`radtriage score` CSV of held-out images to measure NPV and share on.")
@click.option("--target-npv", type=float, default=None, help="Default: the drafting_target_npv setting (0.95).")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Model artefact whose thresholds apply (default: the shipped model).")
@click.pass_obj
def draft_margin_command(obj: Any, labels_folder: Path, choose_on: Path, measure_on: Path | None,
                         target_npv: float | None, model_dir: Path | None) -> None:
    """Choose the drafting margin for a target NPV and report the NPV and share of drafts it gives."""
    from ..app.config import load_settings
    from ..model.artefact import read_manifest
    from ..model.registry import SHIPPED_DEFAULT
    from .draft_evaluation import choose_and_measure, scored_and_labelled

    manifest = read_manifest(model_dir or SHIPPED_DEFAULT)
    labels = list(manifest.labels)
    config = obj.get("config") if isinstance(obj, dict) else None
    target = target_npv or load_settings(config).drafting_target_npv
    chosen_data = scored_and_labelled(choose_on, labels_folder, labels)
    measured_data = scored_and_labelled(measure_on, labels_folder, labels) if measure_on else None
    thresholds = {label: manifest.thresholds[label] for label in labels}
    chosen, measured = choose_and_measure(thresholds, target, chosen_data, measured_data)
    if chosen is None:
        click.echo(f"no margin reaches NPV {target} on {len(chosen_data[0])} images")
        raise SystemExit(1)
    for name, result in (("chosen on", chosen), ("measured on", measured)):
        if result is None:
            continue
        low, high = result.npv_ci95()
        click.echo(f"{name}: margin {result.margin:g}: drafted {result.drafted}/{result.cases} "
                   f"(share {result.share:.3f}), NPV {result.npv:.3f} (95% CI {low:.3f}-{high:.3f}), "
                   f"abnormal drafted {result.drafted_abnormal}")
