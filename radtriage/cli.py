"""The `radtriage` command line. Each command is a thin shell over the composition root."""

from __future__ import annotations

import logging
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import click

from .app.config import load_settings, load_settings_with_sources


def _setup_logging(verbose: bool) -> None:
    from .compliance.phi import quiet_third_party_loggers

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_third_party_loggers()  # they log UIDs and URLs at INFO, even with -v


class _Commands(click.Group):
    """The command group; a setting that cannot be used ends any command with one line and exit status 2, not
    a traceback (`radtriage.app.config.SettingsError`, and production mode's missing secrets)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ValueError as refused:
            from .app.config import SettingsError
            from .compliance.auth import InsecureConfiguration

            if not isinstance(refused, SettingsError | InsecureConfiguration):
                raise
            click.echo(f"radtriage: {refused}", err=True)
            ctx.exit(2)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML settings file.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """radtriage: chest X-ray triage over FHIR, HL7 v2 and DICOMweb.

    Settings come from a TOML file (--config or RADTRIAGE_CONFIG) and RADTRIAGE_* environment variables.
    """
    ctx.obj = {"config": config_path, "verbose": verbose}


@main.command()
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A folder of DICOM, PNG or JPEG chest X-rays (PNG/JPEG are wrapped into DICOM studies).",
)
@click.option("--limit", default=12, show_default=True, help="At most this many images from --images.")
@click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), help="Working folder (default: a new temp dir)."
)
@click.option("--show-fhir", type=int, default=None, help="Print FHIR resources for this many studies (default: all).")
@click.pass_obj
def demo(obj: dict[str, object], images: Path | None, limit: int, home: Path | None, show_fhir: int | None) -> None:
    """Run the whole flow on the embedded default and print the worklist and FHIR resources.

    Without --images it orders studies from the PyPI package pydicom-data: an adult chest CR (routine and STAT
    orders), a non-chest radiograph, an MR, a lateral-only chest and a study the archive does not have.
    """
    from .app.demo import reset_demo_home, run_demo

    if obj["verbose"]:
        _setup_logging(True)
    else:  # the demo's output is the worklist; keep routine log lines out of it
        logging.basicConfig(level=logging.WARNING)
    home = home or Path(tempfile.mkdtemp(prefix="radtriage-demo-"))
    home.mkdir(parents=True, exist_ok=True)
    reset_demo_home(home)
    settings = load_settings(
        obj["config"],  # type: ignore[arg-type]
        home=str(home),
        database_url=f"sqlite:///{home / 'radtriage.sqlite3'}",
        study_source="folder",
        study_folder=str(home / "studies"),
    )
    if show_fhir is None and images is not None:
        show_fhir = 1
    sys.exit(run_demo(settings, images, limit, sys.stdout, show_fhir))


def _check_production(settings: object, sources: dict[str, str]) -> None:
    """Production mode's requirements, all named at once (access control and the web pages' secrets)."""
    from .compliance.auth import InsecureConfiguration, check_production_secrets
    from .web.settings import WebSettings

    if str(getattr(settings, "mode", "")).lower() != "production":
        return
    problems = []
    for check in (check_production_secrets, lambda s: WebSettings.from_settings(s).checked_secret()):
        try:
            check(settings)
        except InsecureConfiguration as refused:
            problems.append(str(refused).split(": ", 1)[-1])
    if problems:
        raise InsecureConfiguration(
            f"production mode (mode from {sources.get('mode', 'default')}) refuses to start: " + "; ".join(problems)
        )


@main.command()
@click.option("--host", help="Address to listen on (default from settings: 127.0.0.1).")
@click.option("--port", type=int, help="HTTP port, 1-65535 (default from settings: 8080).")
@click.pass_obj
def serve(obj: dict[str, object], host: str | None, port: int | None) -> None:
    """Run the FHIR REST API, the web pages (/login) and the worker until interrupted.

    Every other setting comes from the --config TOML file and RADTRIAGE_* environment variables (the README's
    Configuration table lists them): `radtriage config show` prints the effective settings and where each came
    from. A setting that cannot be used stops the start with one line naming it. Production mode (mode =
    "production") needs auth_required, auth_issuer, auth_signing_key, auth_clients, web_users and a
    web_secret_key of at least 32 characters.
    """
    from .app.factory import build_components, create_app
    from .app.http_server import create_http_server
    from .compliance.phi import install_phi_filter
    from .hl7.door import build_hl7_door

    _setup_logging(bool(obj["verbose"]))
    install_phi_filter()
    settings, sources = load_settings_with_sources(obj["config"], host=host, port=port)  # type: ignore[arg-type]
    _check_production(settings, sources)
    components = build_components(settings)
    app = create_app(components=components)
    components.start()
    hl7_door = build_hl7_door(components, settings)
    hl7_door.start()
    # Bound before the log line, so a port in use fails the start; limits: radtriage/app/http_server.py.
    server = create_http_server(app, settings)
    logging.getLogger("radtriage").info("FHIR API on http://%s:%d/fhir", settings.host, int(server.effective_port))
    try:
        server.run()
    finally:
        server.stop()
        hl7_door.stop()
        components.close()


@main.command()
@click.option("--port", type=int, help="MLLP port (default from settings: mllp_port).")
@click.pass_obj
def mllp(obj: dict[str, object], port: int | None) -> None:
    """Run only the HL7 v2 door (MLLP listener, outbox to the RIS) and the worker, until interrupted."""
    import signal
    import threading

    from .app.factory import build_components
    from .compliance.phi import install_phi_filter
    from .hl7.door import build_hl7_door

    _setup_logging(bool(obj["verbose"]))
    install_phi_filter()
    settings = load_settings(obj["config"], mllp_port=port)  # type: ignore[arg-type]
    if settings.mllp_port <= 0:
        raise click.UsageError("set --port or mllp_port (RADTRIAGE_MLLP_PORT) to run the HL7 listener")
    components = build_components(settings)
    door = build_hl7_door(components, settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    components.start()  # with the inline queue, the process that accepts an order also runs it
    door.start()
    logging.getLogger("radtriage").info("MLLP listener on %s:%d", settings.mllp_host, door.port)
    try:
        stop.wait()
    finally:
        door.stop()
        components.close()


@main.command()
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing (still audited).")
@click.pass_obj
def retention(obj: dict[str, object], dry_run: bool) -> None:
    """Purge studies' derived data and caches older than retention_days; audited. The audit trail is kept."""
    from .app.storage import SqlOrderStore, create_database_engine, migrate
    from .compliance.audit_store import AuditLog
    from .compliance.retention import FolderPurger, Purger, PurgeReport, purge_expired

    settings = load_settings(obj["config"])  # type: ignore[arg-type]
    if settings.retention_days < 1:
        raise click.UsageError("retention_days is 0 (keep forever): nothing to purge")
    engine = create_database_engine(settings.resolved_database_url())
    migrate(engine)
    store = SqlOrderStore(engine)

    def stored_results(cutoff: datetime, *, dry_run: bool) -> PurgeReport:
        return PurgeReport("results", store.purge_results_before(cutoff, dry_run=dry_run))

    purgers: list[Purger] = [stored_results, FolderPurger(Path(settings.home) / "cache")]
    for report in purge_expired(
        purgers, retention_days=settings.retention_days, audit=AuditLog(engine).record, dry_run=dry_run
    ):
        click.echo(f"{report.name}: {report.items} item(s){' would be' if dry_run else ''} removed")


def _register_command_groups() -> None:
    from .app.job_commands import jobs_group
    from .app.process_commands import api_command, worker_command
    from .compliance.cli_commands import audit_group
    from .model.cli_commands import label_command, model_group, score_command
    from .model.site_cli import shadow_command, validate_site_command
    from .monitoring.cli_commands import monitor_group
    from .web.cli_commands import users_group

    model_group.add_command(shadow_command)  # issue 10, site acceptance: radtriage/model/site_cli.py
    model_group.add_command(validate_site_command)
    for command in (audit_group, model_group, label_command, score_command, monitor_group, users_group, jobs_group):
        main.add_command(command)
    for command in (api_command, worker_command):  # the scaled-out processes (radtriage/app/process_commands.py)
        main.add_command(command)
    _register_operator_commands()


def _register_operator_commands() -> None:
    """Issue 14's commands for administrators: SMART clients, the settings (users are registered above)."""
    from .app.config_commands import config_group
    from .app.importer import import_command
    from .compliance.client_commands import clients_group

    main.add_command(clients_group)
    main.add_command(config_group)
    main.add_command(import_command)


_register_command_groups()

if __name__ == "__main__":
    main()
