"""One engine per process, configured for SQLite or PostgreSQL.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy
timeout. Python's sqlite3 driver is switched to autocommit and SQLAlchemy emits the
``BEGIN`` itself, so that write transactions start with ``BEGIN IMMEDIATE``: a writer
takes the write lock up front and waits (busy timeout) instead of failing on a lock
upgrade when several associations store at once. Readers use plain deferred
transactions and, thanks to WAL, never block writers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool

_WRITE = "coffre_write"

#: The transaction handle services pass from ``Database.write()`` to index functions.
Tx = Connection


@dataclass(frozen=True, slots=True)
class Database:
    """The engine and its two ways in: ``read()`` and ``write()`` transactions."""

    engine: Engine
    dialect: str

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed on exit, rolled back on error."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(url: str, *, busy_timeout_ms: int = 30_000, pool_size: int = 10) -> Database:
    """Create the process's engine for ``url`` (``sqlite:///…`` or ``postgresql+psycopg://…``)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(
            url,
            poolclass=QueuePool,
            pool_size=pool_size,
            max_overflow=pool_size * 2,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
        )
        _configure_sqlite(engine, busy_timeout_ms)
    elif backend == "postgresql":
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size * 2,
            pool_pre_ping=True,
        )
    else:
        raise ValueError(f"unsupported index backend {backend!r}")
    return Database(engine=engine, dialect=backend)


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # FULL: the WAL is fsynced at every commit; an acknowledged instance survives power loss.
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")
