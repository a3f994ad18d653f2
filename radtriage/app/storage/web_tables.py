"""Tables of the web pages (issue 14), on the shared `metadata`; migration 0008 creates them.

``web_sessions`` makes sign-in sessions revocable on the server: the signed cookie carries only a random session
id, and a session is live while its row exists without ``ended_at``. Signing out, disabling a user and changing
a password end the rows, so a cookie copied before then opens nothing.

``web_sign_in_failures`` holds recent wrong passwords (per user name and per address) for the account lockout
and the per-address slow-down (`radtriage.web.accounts`); a successful sign-in or an administrator's unlock
clears a user's rows.

``study_reading`` is the radiologist's side of a study: who claimed it and who read it (and when). Waiting time
runs from the order's arrival until the study is claimed or read.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, String, Table

from .tables import ID, metadata

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("username", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("end_reason", String(32)),
)
Index("ix_web_sessions_username", web_sessions.c.username)

web_sign_in_failures = Table(
    "web_sign_in_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64)),
    Column("address", String(255)),
    Column("at", DateTime(timezone=True), nullable=False),
)
Index("ix_web_sign_in_failures_username", web_sign_in_failures.c.username)
Index("ix_web_sign_in_failures_address", web_sign_in_failures.c.address)

study_reading = Table(
    "study_reading",
    metadata,
    Column("job_id", String(ID), primary_key=True),
    Column("claimed_by", String(64)),
    Column("claimed_at", DateTime(timezone=True)),
    Column("read_by", String(64)),
    Column("read_at", DateTime(timezone=True)),
)
