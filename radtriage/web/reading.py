"""The radiologist's side of a study: claimed (someone is reading it) and read. One row per job in
``study_reading``; the pages audit every change (`radtriage.compliance.audit.STUDY_CLAIMED`, `STUDY_MARKED_READ`).

A study is waiting from the order's arrival until it is claimed or read, whichever comes first: that is the
time the worklist shows and sorts by. A claim by one radiologist is not taken over silently by another: they
get a refusal naming who holds it (the holder, or an administrator, can release it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select, update

from ..app.storage.database import as_utc
from ..app.storage.web_tables import study_reading


@dataclass(frozen=True)
class Reading:
    job_id: str
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    read_by: str | None = None
    read_at: datetime | None = None

    @property
    def is_read(self) -> bool:
        return self.read_at is not None

    @property
    def waiting_ended_at(self) -> datetime | None:
        """When a radiologist first took the study (claim or read); None while it is still waiting."""
        times = [t for t in (self.claimed_at, self.read_at) if t is not None]
        return min(times) if times else None


class ReadingRefused(Exception):
    """A claim or release that is not allowed (someone else holds the study); the message names who."""


class ReadingLog:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get(self, job_id: str) -> Reading:
        with self._engine.connect() as connection:
            row = connection.execute(select(study_reading).where(study_reading.c.job_id == job_id)).first()
        if row is None:
            return Reading(job_id)
        return Reading(job_id, row.claimed_by, as_utc(row.claimed_at), row.read_by, as_utc(row.read_at))

    def _write(self, job_id: str, **values: object) -> Reading:
        with self._engine.begin() as connection:
            exists = connection.execute(
                select(study_reading.c.job_id).where(study_reading.c.job_id == job_id).with_for_update()
            ).first()
            if exists is None:
                connection.execute(insert(study_reading).values(job_id=job_id, **values))
            else:
                connection.execute(update(study_reading).where(study_reading.c.job_id == job_id).values(**values))
        return self.get(job_id)

    def claim(self, job_id: str, username: str) -> Reading:
        current = self.get(job_id)
        if current.claimed_by and current.claimed_by != username and not current.is_read:
            raise ReadingRefused(f"already claimed by {current.claimed_by}")
        if current.claimed_by == username:
            return current
        return self._write(job_id, claimed_by=username, claimed_at=datetime.now(UTC))

    def release(self, job_id: str, username: str, *, may_release_others: bool = False) -> Reading:
        current = self.get(job_id)
        if current.claimed_by and current.claimed_by != username and not may_release_others:
            raise ReadingRefused(f"claimed by {current.claimed_by}; only they or an administrator can release it")
        return self._write(job_id, claimed_by=None, claimed_at=None)

    def mark_read(self, job_id: str, username: str) -> Reading:
        current = self.get(job_id)
        if current.is_read:
            return current
        now = datetime.now(UTC)
        # Reading a study also claims it, so that the waiting time has an end even without an explicit claim.
        return self._write(
            job_id,
            read_by=username,
            read_at=now,
            claimed_by=current.claimed_by or username,
            claimed_at=current.claimed_at or now,
        )

    def mark_unread(self, job_id: str) -> Reading:
        return self._write(job_id, read_by=None, read_at=None)
