"""``radtriage jobs list|retry|cancel``: what operators need during and after an outage.

Registered by the CLI. These commands work on the database the service uses, so they can run beside a running
service: ``retry`` marks a failed job as due now and the service's retry scheduler (radtriage.app.retry) queues
it within ``retry_poll_interval`` seconds; ``cancel`` moves the job to cancelled at once (a worker holding it
stops at its next step). Output holds job ids, states and codes, never patient data.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .factory import Components


@contextmanager
def _components(obj: Any) -> Iterator[Components]:
    from .config import load_settings
    from .factory import build_components

    config = obj.get("config") if isinstance(obj, dict) else None
    components = build_components(load_settings(config))
    try:
        yield components
    finally:
        components.engine.dispose()


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


@click.group("jobs")
def jobs_group() -> None:
    """List, retry and cancel triage jobs (e.g. after the PACS was down)."""


@jobs_group.command("list")
@click.option("--state", "states", multiple=True, help="Only jobs in this state (repeatable), e.g. failed, queued.")
@click.option("--waiting", is_flag=True, help="Only failed jobs waiting for an automatic retry.")
@click.option("--limit", default=50, show_default=True)
@click.pass_obj
def list_command(obj: Any, states: tuple[str, ...], waiting: bool, limit: int) -> None:
    """Jobs, most urgent first: id, state, priority, attempts, failure code, next attempt."""
    from .core.domain import JobState

    try:
        wanted = [JobState(s) for s in states] or ([JobState.FAILED] if waiting else None)
    except ValueError as exc:
        raise click.UsageError(f"{exc}; states are {', '.join(s.value for s in JobState)}") from None
    with _components(obj) as components:
        jobs, total = components.store.list_jobs(states=wanted, limit=max(1, limit) if not waiting else 10_000)
    if waiting:
        jobs = [job for job in jobs if job.waiting_to_retry][: max(1, limit)]
        total = len(jobs)
    click.echo(f"{'job':32}  {'state':10}  {'priority':8}  {'tries':>5}  {'failure':20}  next attempt")
    for job in jobs:
        failure = (job.failure_code or "-") + (" (r)" if job.retryable else "")
        click.echo(
            f"{job.id:32}  {job.state.value:10}  {job.priority.code:8}  {job.attempts:>5}  {failure:20}  "
            f"{_when(job.next_attempt_at)}"
        )
    click.echo(f"{len(jobs)} of {total} job(s); (r) = retryable")


@jobs_group.command("retry")
@click.argument("job_ids", nargs=-1, required=True)
@click.pass_obj
def retry_command(obj: Any, job_ids: tuple[str, ...]) -> None:
    """Try failed jobs again at once (with a new retry window); audited."""
    failed = 0
    with _components(obj) as components:
        planner = components.retries.planner if components.retries else None
        if planner is None:
            raise click.ClickException("automatic retries are not configured")
        for job_id in job_ids:
            if planner.request_retry(job_id, by="operator: radtriage jobs retry"):
                click.echo(f"{job_id}: will be retried by the running service")
            else:
                failed += 1
                job = components.store.get_job(job_id)
                click.echo(f"{job_id}: not retried ({'no such job' if job is None else 'it is ' + job.state.value})")
    if failed:
        raise SystemExit(1)


@jobs_group.command("cancel")
@click.argument("job_ids", nargs=-1, required=True)
@click.pass_obj
def cancel_command(obj: Any, job_ids: tuple[str, ...]) -> None:
    """Cancel jobs that have not finished (or failed jobs waiting for a retry); audited."""
    from .core.errors import TriageError

    failed = 0
    with _components(obj) as components:
        for job_id in job_ids:
            try:
                job = components.service.job(job_id)
                order = components.service.order(job.order_id)
                job = components.service.cancel_order(order.source, order.source_key, "cancelled by an operator")
                click.echo(f"{job_id}: {job.state.value}")
            except TriageError as err:
                failed += 1
                click.echo(f"{job_id}: not cancelled ({err.detail})")
    if failed:
        raise SystemExit(1)
