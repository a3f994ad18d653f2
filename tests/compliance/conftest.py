"""Fixtures of the compliance tests: a migrated database on SQLite and PostgreSQL, an audit log, an attacker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from radtriage.app.storage import create_database_engine, migrate
from radtriage.compliance.audit import AuditSource
from radtriage.compliance.audit_store import AuditLog

SOURCE = AuditSource(site="radtriage.test", observer="radtriage", address="radtriage.test")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A database migrated to head, on each backend (`database_url` parametrises over SQLite and PostgreSQL)."""
    engine = create_database_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def audit_log(engine: Engine) -> AuditLog:
    return AuditLog(engine, source=SOURCE)


def drop_append_only_triggers(engine: Engine) -> None:
    """What an attacker with the database owner's rights does first: remove the append-only protection."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("DROP TRIGGER audit_events_refuse_update_delete ON audit_events"))
            connection.execute(text("DROP TRIGGER audit_chain_head_advance_only ON audit_chain_head"))
        else:
            for name in ("audit_events_refuse_update", "audit_events_refuse_delete", "audit_chain_head_advance_only"):
                connection.execute(text(f"DROP TRIGGER {name}"))
