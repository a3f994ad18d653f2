"""Storage adapter: SQLAlchemy 2 over SQLite (embedded default, WAL) or PostgreSQL, schema by Alembic."""

from .database import as_utc, create_database_engine, migrate
from .order_store import SqlOrderStore

__all__ = ["SqlOrderStore", "as_utc", "create_database_engine", "migrate"]
