"""`radtriage model ...`, `radtriage label` and `radtriage score`: the model lifecycle on the command line.

Each command is a thin shell over a plain function (training.trainer.train, training.tuning.tune,
evaluation.report.evaluate_run, training.release.release_model, datasets.set_label, evaluation.score_files),
so the same steps can be scripted from Python.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _settings(obj: Any) -> Any:
    from ..app.config import load_settings

    return load_settings(obj.get("config") if isinstance(obj, dict) else None)


@click.group("model")
def model_group() -> None:
    """Model artefacts: train, tune, evaluate, release, and choose which one scores."""


@model_group.command("list")
@click.pass_obj
def list_command(obj: Any) -> None:
    """Every model artefact this installation has; the active one is marked with *."""
    from .registry import list_models

    for model in list_models(_settings(obj).home):
        m = model.manifest
        mark = "*" if model.active else " "
        kind = "UNTRAINED PLACEHOLDER" if m.placeholder else m.architecture
        click.echo(f"{mark} {m.name} {m.version}  {kind}  sha256 {m.weights_sha256[:12]}  {model.path}")


@model_group.command("show")
@click.argument("folder", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_obj
def show_command(obj: Any, folder: Path | None) -> None:
    """The manifest of FOLDER (default: the model that scores now) and where its model card is."""
    from ..app.core.errors import TriageError
    from ..app.factory import resolve_model_path
    from .artefact import read_manifest
    from .policy import PolicyError, load_policy

    settings = _settings(obj)
    folder = folder or resolve_model_path(settings)
    try:
        manifest = read_manifest(folder)
    except TriageError as exc:
        raise click.ClickException(f"{folder} is not a model artefact ({exc.detail})") from None
    summary = {k: v for k, v in manifest.to_dict().items() if k != "evaluation"}
    click.echo(json.dumps(summary, indent=2))
    assessed = ", ".join(manifest.labels)
    try:
        missing = sorted(load_policy(settings.policy or None).labels_named() - set(manifest.labels))
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"assessed findings: {assessed}")
    click.echo(f"policy findings NOT ASSESSED by this model: {', '.join(missing) if missing else 'none'}")
    card = folder / "MODEL_CARD.md"
    click.echo(f"model card: {card if card.exists() else '(none)'}")


@model_group.command("activate")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_obj
def activate_command(obj: Any, folder: Path) -> None:
    """Make FOLDER the model that scores (its sha256 is checked first). Audited."""
    from ..app.storage import create_database_engine, migrate
    from ..compliance.audit import MODEL_CHANGED, AuditRecord
    from ..compliance.audit_store import AuditLog
    from .registry import activate

    settings = _settings(obj)
    manifest = activate(settings.home, folder)
    engine = create_database_engine(settings.resolved_database_url())
    migrate(engine)
    AuditLog(engine).record(
        AuditRecord(
            MODEL_CHANGED,
            details={"model": f"{manifest.name} {manifest.version}", "model-sha256": manifest.weights_sha256},
        )
    )
    click.echo(f"active model: {manifest.name} {manifest.version} ({folder}); restart workers to load it")


@model_group.command("train")
@click.option("--config", "config_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from the run's checkpoint.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
def train_command(config_file: Path, run_dir: Path, resume: bool, device: str, threads: int | None) -> None:
    """Fine-tune a network as a TrainingConfig JSON file describes; checkpoints every epoch."""
    from .training.config import TrainingConfig
    from .training.trainer import train

    summary = train(TrainingConfig.load(config_file), run_dir, resume=resume, device=device, num_threads=threads)
    click.echo(str(summary))


@model_group.command("train-triage")
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dest_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cache-dir", default="var/features", show_default=True, type=click.Path(file_okay=False),
              help="Where backbone features are cached (reused by later runs).")
@click.option("--augmented-copies", default=0, show_default=True,
              help="Acquisition-augmented copies per image (0: measured best with a frozen backbone, see the card).")
@click.option("--threads", default=2, show_default=True, help="CPU threads for torch.")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples for the AUROC intervals.")
@click.option("--baseline-shortcut", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="JSON with the previous model's source-shortcut figures, reported as 'before'.")
@click.option("--version", default=None, help="Default: today's date.")
def train_triage_command(data_root: Path, dest_dir: Path, cache_dir: str, augmented_copies: int, threads: int,
                         bootstrap: int, baseline_shortcut: Path | None, version: str | None) -> None:
    """Train, evaluate (per source, leave one source out, gate, severity) and release a triage model: DATA_ROOT holds
    the sources (e.g. ../shared/data/cxr); DEST_DIR must not exist."""
    from .training.triage_build import TriageBuildConfig, build_triage_model

    if dest_dir.exists():
        raise click.ClickException(f"{dest_dir} already exists; a model artefact is never overwritten")
    config = TriageBuildConfig(data_root=str(data_root), cache_dir=cache_dir, augmented_copies=augmented_copies,
                               bootstrap=bootstrap,
                               baseline_shortcut=str(baseline_shortcut) if baseline_shortcut else None)
    manifest = build_triage_model(config, dest_dir, threads=threads, version=version)
    click.echo(f"released {manifest.name} {manifest.version} sha256 {manifest.weights_sha256} to {dest_dir}")


@model_group.command("tune")
@click.option("--config", "config_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--search-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--trials", default=8, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--max-minutes", type=float, default=None, help="Start no new trial after this long.")
@click.option("--device", default="auto", show_default=True)
def tune_command(
    config_file: Path, search_dir: Path, trials: int, seed: int, max_minutes: float | None, device: str
) -> None:
    """Bounded random search over learning rate, augmentation, image size and epochs."""
    from .training.config import TrainingConfig
    from .training.tuning import tune

    record = tune(
        TrainingConfig.load(config_file), search_dir, trials=trials, seed=seed, max_minutes=max_minutes, device=device
    )
    click.echo(json.dumps(record.get("best", record), indent=2, default=str))


@model_group.command("evaluate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples for the AUROC intervals.")
@click.option("--device", default="auto", show_default=True)
def evaluate_command(run_dir: Path, bootstrap: int, device: str) -> None:
    """Evaluate a trained run on its held-out split: JSON, plots and a readable report in RUN_DIR/evaluation.

    For a triage model artefact (made by ``train-triage``, e.g. the shipped default) print its evaluation: per source,
    leave one source out, source shortcut, input-gate refusals by reason, severity."""
    from .evaluation.report import evaluate_run

    if (run_dir / "manifest.json").exists() and (run_dir / "evaluation.json").exists():
        from .artefact import read_manifest
        from .evaluation.triage_card import render_card

        manifest = read_manifest(run_dir)
        if manifest.architecture == "efficientnet-lite0-frozen":
            report = json.loads((run_dir / "evaluation.json").read_text(encoding="utf-8"))
            card = render_card(manifest, report)
            click.echo(card[card.index("## What it assesses"):card.index("## Training\n")].rstrip())
            return

    evaluate_run(run_dir, bootstrap=bootstrap, device=device)
    click.echo(f"evaluation written to {run_dir / 'evaluation'}")


@model_group.command("release")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dest_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="radtriage-cxr-triage", show_default=True)
@click.option("--version", default=None, help="Default: derived from the run.")
@click.option("--weights-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
def release_command(run_dir: Path, dest_dir: Path, name: str, version: str | None, weights_dtype: str) -> None:
    """Write an evaluated run as a checksummed model artefact with its model card."""
    from .training.release import release_model

    manifest = release_model(run_dir, dest_dir, name=name, version=version, weights_dtype=weights_dtype)
    click.echo(f"released {manifest.name} {manifest.version} sha256 {manifest.weights_sha256} to {dest_dir}")


@model_group.command("fit-ood")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "data_root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with one subfolder per source (e.g. ../shared/data/cxr), as in the artefact's split.csv.")
@click.option("--components", default=20, show_default=True)
@click.option("--quantile", default=0.995, show_default=True, help="Share of training images the gate lets in.")
def fit_ood_command(model_dir: Path, data_root: Path, components: int, quantile: float) -> None:
    """Fit the out-of-distribution gate on the artefact's training images and record it in its manifest."""
    from .training.ood_reference import install_ood_reference, training_images

    images = training_images(model_dir, data_root)
    entry = install_ood_reference(model_dir, images, k=components, quantile=quantile)
    click.echo(json.dumps(entry, indent=2))


@click.command("label")
@click.argument("labels_csv", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("image")
@click.argument("label")
@click.argument("value")
@click.option("--patient-id", default=None, help="Needed when IMAGE is not yet in the file.")
def label_command(labels_csv: Path, image: str, label: str, value: str, patient_id: str | None) -> None:
    """Set or correct one label (1, 0, or "" for unknown) of IMAGE in a labels CSV."""
    from .datasets import set_label

    change = set_label(labels_csv, image, label, value, patient_id=patient_id)
    click.echo(str(change))


@click.command("score")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "output_format", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("-o", "--output", type=click.File("w"), default="-", help="Default: standard output.")
def score_command(
    paths: tuple[Path, ...], output_format: str, model_dir: Path | None, policy_path: str | None, output: Any
) -> None:
    """Score DICOM, PNG or JPEG files (or folders of them) outside the service; one row per file."""
    import sys

    from ..app.core.errors import TriageError
    from .evaluation.score_files import NoImagesError, score_files

    # score_files walks folders itself (image files by suffix or DICOM marker; labels CSVs beside them are skipped).
    try:
        score_files(paths, output, model_dir=model_dir, output_format=output_format, policy_path=policy_path,
                    progress=sys.stderr.isatty())
    except NoImagesError as exc:
        raise click.ClickException(str(exc)) from None
    except TriageError as exc:  # e.g. a model folder that is not a model artefact
        raise click.ClickException(f"{exc.code.value}: {exc.detail}") from None
