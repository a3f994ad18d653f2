"""Retention: purge studies' derived data and pixel caches older than a configured period, and audit it.

What "derived data" means is the storage's business (results, cached pixels, preprocessed images); this module
owns the policy and the audit around it. A purger is any callable ``purger(cutoff, dry_run=...) ->
PurgeReport`` that removes what was created before `cutoff` and says how much. `purge_expired` computes the
cutoff, runs the purgers and writes one ``retention-purge`` audit record each (DICOM "DICOM Study Deleted",
action D), with the outcome and the counts — also when a purger fails, which is then re-raised.

The audit trail itself is never a purger's target: its rows are protected by the database (migration 0003) and
retention here never touches them; a purge is itself a new audit record.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from .audit import RETENTION_PURGE, AuditAction, AuditContext, AuditOutcome, AuditRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeReport:
    """What one purger removed (or, in a dry run, would remove). Counts only: never identifiers of patients."""

    name: str
    items: int
    bytes_freed: int = 0
    studies: int = 0
    details: Mapping[str, str] = field(default_factory=dict)


class Purger(Protocol):
    """Removes derived data created before `cutoff`. Must be idempotent: a second run removes nothing more."""

    def __call__(self, cutoff: datetime, *, dry_run: bool) -> PurgeReport: ...


def cutoff_for(retention_days: int, now: datetime | None = None) -> datetime:
    """The instant before which data is expired. `retention_days` must be at least 1."""
    if retention_days < 1:
        raise ValueError("retention_days must be at least 1 (0 would purge what is being processed)")
    return (now or datetime.now(UTC)).astimezone(UTC) - timedelta(days=retention_days)


def purge_expired(
    purgers: Sequence[Purger],
    *,
    retention_days: int,
    audit: Callable[[AuditRecord], object],
    now: datetime | None = None,
    dry_run: bool = False,
    context: AuditContext | None = None,
) -> list[PurgeReport]:
    """Run each purger with the cutoff for `retention_days` and audit each run (`audit` writes one record).

    A dry run removes nothing and is audited as well (action E instead of D), so that even looking is on record.
    """
    cutoff = cutoff_for(retention_days, now)
    reports = []
    for purger in purgers:
        name = getattr(purger, "name", None) or getattr(purger, "__name__", type(purger).__name__)
        base = {"purger": str(name), "cutoff": cutoff.strftime("%Y-%m-%dT%H:%M:%SZ"), "dry-run": str(dry_run).lower()}
        try:
            report = purger(cutoff, dry_run=dry_run)
        except Exception as error:
            audit(
                AuditRecord.in_context(
                    RETENTION_PURGE,
                    context or AuditContext(),
                    action=AuditAction.EXECUTE if dry_run else None,
                    outcome=AuditOutcome.SERIOUS_FAILURE,
                    outcome_description=type(error).__name__,
                    details=base,
                )
            )
            raise
        audit(
            AuditRecord.in_context(
                RETENTION_PURGE,
                context or AuditContext(),
                action=AuditAction.EXECUTE if dry_run else None,
                details={
                    **base,
                    **dict(report.details),
                    "items": str(report.items),
                    "studies": str(report.studies),
                    "bytes": str(report.bytes_freed),
                },
            )
        )
        log.info(
            "retention purge %s: %d item(s) before %s%s", name, report.items, base["cutoff"], " (dry run)" * dry_run
        )
        reports.append(report)
    return reports


class FolderPurger:
    """Removes files under `folder` last modified before the cutoff (pixel caches, exported images).

    Empty folders left behind are removed too; `folder` itself is kept. Symbolic links are never followed.
    """

    def __init__(self, folder: str | Path, *, name: str = "pixel-cache") -> None:
        self.folder = Path(folder)
        self.name = name

    def __call__(self, cutoff: datetime, *, dry_run: bool) -> PurgeReport:
        if not self.folder.is_dir():
            return PurgeReport(self.name, 0)
        limit = cutoff.timestamp()
        items = freed = 0
        for root, dirs, files in os.walk(self.folder, topdown=False, followlinks=False):
            for filename in files:
                path = Path(root) / filename
                stat = path.lstat()
                if path.is_symlink() or stat.st_mtime >= limit:
                    continue
                items += 1
                freed += stat.st_size
                if not dry_run:
                    path.unlink()
            if not dry_run:
                for dirname in dirs:
                    directory = Path(root) / dirname
                    if not directory.is_symlink() and not any(directory.iterdir()):
                        directory.rmdir()
        return PurgeReport(self.name, items, freed)
