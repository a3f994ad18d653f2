"""Server-side state of people's accounts: live sessions, and the sign-in throttle (lockout and slow-down).

Sessions (`SessionStore`): the cookie holds a random id; the session is live while its row in ``web_sessions``
has no ``ended_at``. Sign-out ends one row; disabling a user or changing a password (`radtriage users ...`, which
writes the same database) ends all of that user's rows. So a cookie saved before any of those opens nothing.

Throttle (`SignInGuard`), after the OWASP Authentication Cheat Sheet ("account lockout", "login throttling"):

- account lockout: `LOCKOUT_FAILURES` wrong passwords for one user name within `LOCKOUT_WINDOW` lock that account
  for `LOCKOUT_DURATION` from the last of them; while locked even the right password is refused, without being
  checked. A successful sign-in or an administrator's ``radtriage users unlock NAME`` clears the count.
- per-address slow-down: after `SLOWDOWN_FREE` wrong passwords from one address within the window, each further
  attempt from it must wait 1, 2, 4 ... (at most `SLOWDOWN_MAX`) seconds after the previous failure; earlier
  attempts are answered "try again in N s" (HTTP 429) without checking the password. Refusing instead of
  sleeping keeps the server's threads free.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, func, insert, select, update

from ..app.storage.database import as_utc
from ..app.storage.web_tables import web_sessions, web_sign_in_failures

LOCKOUT_FAILURES = 5
LOCKOUT_WINDOW = timedelta(minutes=15)
LOCKOUT_DURATION = timedelta(minutes=15)
SLOWDOWN_FREE = 3
SLOWDOWN_MAX = timedelta(seconds=60)


def _now() -> datetime:
    return datetime.now(UTC)


class SessionStore:
    """Live web sessions, by random id."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def start(self, username: str) -> str:
        session_id = secrets.token_urlsafe(32)
        with self._engine.begin() as connection:
            connection.execute(insert(web_sessions).values(id=session_id, username=username, created_at=_now()))
        return session_id

    def is_live(self, session_id: str, username: str) -> bool:
        with self._engine.connect() as connection:
            row = connection.execute(
                select(web_sessions.c.username, web_sessions.c.ended_at).where(web_sessions.c.id == session_id)
            ).first()
        return row is not None and row.username == username and row.ended_at is None

    def end(self, session_id: str, reason: str = "signed-out") -> None:
        with self._engine.begin() as connection:
            connection.execute(
                update(web_sessions)
                .where(web_sessions.c.id == session_id, web_sessions.c.ended_at.is_(None))
                .values(ended_at=_now(), end_reason=reason)
            )

    def end_all(self, username: str, reason: str) -> int:
        """End every live session of `username`; how many were live."""
        with self._engine.begin() as connection:
            result = connection.execute(
                update(web_sessions)
                .where(web_sessions.c.username == username, web_sessions.c.ended_at.is_(None))
                .values(ended_at=_now(), end_reason=reason)
            )
        return int(result.rowcount or 0)


@dataclass(frozen=True)
class Refusal:
    """Why a sign-in attempt is refused before its password is checked, and for how long."""

    reason: str  # "account-locked" | "address-throttled"
    retry_after_s: int


class SignInGuard:
    """Counts wrong passwords per user name and per address, and says when to refuse an attempt outright."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def refusal(self, username: str, address: str | None, now: datetime | None = None) -> Refusal | None:
        now = now or _now()
        locked_until = self.locked_until(username, now)
        if locked_until is not None:
            return Refusal("account-locked", _seconds(locked_until - now))
        if address:
            wait_until = self._address_wait_until(address, now)
            if wait_until is not None:
                return Refusal("address-throttled", _seconds(wait_until - now))
        return None

    def locked_until(self, username: str, now: datetime | None = None) -> datetime | None:
        now = now or _now()
        with self._engine.connect() as connection:
            recent = [
                as_utc(at)
                for (at,) in connection.execute(
                    select(web_sign_in_failures.c.at)
                    .where(web_sign_in_failures.c.username == username)
                    .order_by(web_sign_in_failures.c.at.desc())
                    .limit(LOCKOUT_FAILURES)
                )
            ]
        if len(recent) < LOCKOUT_FAILURES or recent[0] - recent[-1] > LOCKOUT_WINDOW:
            return None
        until = recent[0] + LOCKOUT_DURATION
        return until if until > now else None

    def _address_wait_until(self, address: str, now: datetime) -> datetime | None:
        with self._engine.connect() as connection:
            count, last = connection.execute(
                select(func.count(), func.max(web_sign_in_failures.c.at)).where(
                    web_sign_in_failures.c.address == address, web_sign_in_failures.c.at > now - LOCKOUT_WINDOW
                )
            ).one()
        if count <= SLOWDOWN_FREE or last is None:
            return None
        delay = min(SLOWDOWN_MAX, timedelta(seconds=2 ** (count - SLOWDOWN_FREE - 1)))
        until = as_utc(last) + delay
        return until if until > now else None

    def failed(self, username: str | None, address: str | None, now: datetime | None = None) -> bool:
        """Record a wrong password; True when it has just locked the account."""
        now = now or _now()
        with self._engine.begin() as connection:
            connection.execute(insert(web_sign_in_failures).values(username=username or None, address=address, at=now))
            # Keep the table small: rows older than the window no longer count for anything.
            connection.execute(delete(web_sign_in_failures).where(web_sign_in_failures.c.at < now - 2 * LOCKOUT_WINDOW))
        return bool(username) and self.locked_until(username or "", now) is not None

    def succeeded(self, username: str) -> None:
        self.unlock(username)

    def unlock(self, username: str) -> int:
        """Forget the user's failures (an administrator's unlock); how many there were."""
        with self._engine.begin() as connection:
            result = connection.execute(delete(web_sign_in_failures).where(web_sign_in_failures.c.username == username))
        return int(result.rowcount or 0)


def _seconds(delta: timedelta) -> int:
    return max(1, int(delta.total_seconds() + 0.999))
