"""`radtriage api` and `radtriage worker`: the service split into processes with one job each (queue = "celery").

    radtriage api                 FHIR REST + web pages; publishes job ids to the broker; never imports torch
    radtriage mllp                the HL7 door (MLLP listener + outbox sender); publishes job ids; no torch
    radtriage worker              scores studies (a Celery worker) and runs the broker sweeper

`radtriage serve` stays the embedded default: one process, the in-process queue, SQLite, no broker.
deploy/ has a Procfile, systemd units and a compose file for these processes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

import click

from .config import Settings, load_settings

if TYPE_CHECKING:
    from .core.service import TriageService
    from .factory import Components

log = logging.getLogger(__name__)

QUEUE_CHOICES = ("stat", "asap", "urgent", "routine", "explain")


def _broker_settings(obj: dict[str, object], **overrides: object) -> Settings:
    settings = load_settings(obj["config"], **overrides)  # type: ignore[arg-type]
    if settings.queue != "celery" or not settings.broker_url:
        raise click.UsageError(
            'this process talks to a broker: set queue = "celery" and broker_url (RADTRIAGE_QUEUE, '
            "RADTRIAGE_BROKER_URL); `radtriage serve` runs everything in one process without one"
        )
    return settings


def _logging(obj: dict[str, object]) -> None:
    from ..compliance.phi import install_phi_filter, quiet_third_party_loggers

    logging.basicConfig(
        level=logging.DEBUG if obj["verbose"] else logging.INFO,
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )
    quiet_third_party_loggers()  # dicomweb-client and retrying log UIDs and URLs (issue 15)
    install_phi_filter()


@click.command("api")
@click.option("--host", help="Address to listen on (default from settings: 127.0.0.1).")
@click.option("--port", type=int, help="HTTP port (default from settings: 8080).")
@click.option("--threads", type=int, default=None, help="waitress request threads (default: http_threads, 8).")
@click.pass_obj
def api_command(obj: dict[str, object], host: str | None, port: int | None, threads: int | None) -> None:
    """Run the FHIR REST API and the web pages only; `radtriage worker` processes score (queue = "celery")."""
    from .factory import build_components, create_app
    from .http_server import create_http_server

    _logging(obj)
    settings = _broker_settings(obj, host=host, port=port)
    components = build_components(settings)
    app = create_app(components=components)
    components.start()
    # The HTTP limits of radtriage/app/http_server.py (slow clients, per-address connections; issue 15).
    server = create_http_server(app, replace(settings, http_threads=threads) if threads else settings)
    log.info("FHIR API on http://%s:%s/fhir (scoring by radtriage worker)", settings.host, server.effective_port)
    try:
        server.run()
    finally:
        server.stop()
        components.close()


def _parse_queues(text: str) -> list[str]:
    from .celery_queue import ALL_QUEUES

    wanted = {f"radtriage.{name.strip()}" for name in text.split(",") if name.strip()}
    unknown = sorted(wanted - set(ALL_QUEUES))
    if unknown or not wanted:
        raise click.BadParameter(f"choose from {', '.join(QUEUE_CHOICES)}", param_hint="--queues")
    return [name for name in ALL_QUEUES if name in wanted]  # served in priority order


class WorkerService:
    """The worker's components, built on first use in each worker process (after the pool forks)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._components: Components | None = None
        self._lock = threading.Lock()

    def __call__(self) -> TriageService:
        with self._lock:
            if self._components is None:
                from ..hl7.door import build_hl7_door
                from .factory import build_components

                components = build_components(self.settings)
                # Registers the HL7 outbox publisher (one stored update per job); `radtriage mllp` sends them.
                build_hl7_door(components, replace(self.settings, mllp_port=0))
                self._components = components
            return self._components.service


@click.command("worker")
@click.option("--concurrency", type=int, default=1, show_default=True, help="Studies scored at once.")
@click.option(
    "--queues",
    default=",".join(QUEUE_CHOICES),
    show_default=True,
    help="Queues to serve (served in priority order whatever the order given); e.g. explain alone on a spare box.",
)
@click.option(
    "--pool",
    type=click.Choice(["prefork", "solo", "threads"]),
    default="prefork",
    show_default=True,
    help="Celery pool: prefork (one process per --concurrency), solo (this process), threads.",
)
@click.option(
    "--no-sweeper",
    is_flag=True,
    help="Run none of the parent's duties here (broker sweeper, automatic retries, DICOM results sender).",
)
@click.pass_obj
def worker_command(obj: dict[str, object], concurrency: int, queues: str, pool: str, no_sweeper: bool) -> None:
    """Score studies: a Celery worker on the priority queues, the broker sweeper (radtriage.app.sweeper), the
    automatic retries of failed jobs (radtriage.app.retry) and, when on, the DICOM results sender."""
    from .celery_queue import CeleryJobQueue, celery_app
    from .factory import build_components
    from .sweeper import QueueSweeper

    _logging(obj)
    settings = _broker_settings(obj)
    queue_names = _parse_queues(queues)
    app = celery_app(settings, WorkerService(settings))
    # This (parent) process runs the duties that publish or send (sweeper, retries, DICOM results sender); the
    # pool's processes score.
    duties = build_components(settings)
    sweeper = None
    if not no_sweeper:
        assert isinstance(duties.queue, CeleryJobQueue)
        sweeper = QueueSweeper(
            duties.store,
            duties.queue,
            max_wait_s=settings.queue_max_wait,
            lease_s=settings.job_lease,
            interval_s=settings.sweep_interval,
        )
        sweeper.start()
        if duties.retries is not None:
            duties.retries.start()
        if duties.dicom_results is not None:  # results into the PACS by STOW-RS, from the outbox the workers fill
            duties.dicom_results.start()
    try:
        app.worker_main(
            [
                "worker",
                f"--concurrency={max(1, concurrency)}",
                f"--queues={','.join(queue_names)}",
                f"--pool={pool}",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--prefetch-multiplier=1",
            ]
        )
    finally:
        if sweeper is not None:
            sweeper.stop()
        duties.close()
