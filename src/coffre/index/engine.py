"""One engine per process, configured for SQLite or PostgreSQL.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy
timeout. Python's sqlite3 driver is switched to autocommit and SQLAlchemy emits the
``BEGIN`` itself, so that write transactions start with ``BEGIN IMMEDIATE``: a writer
takes the write lock up front and waits (busy timeout) instead of failing on a lock
upgrade when several associations store at once. Readers use plain deferred
transactions and, thanks to WAL, never block writers.

SQLite's busy handler waits for a held write lock by sleeping (1, 2, 5, 10 … ms) and
retrying, so a writer that arrives while another commits sleeps well past the
release: with four associations storing at once 7 % of the store path was spent
there, and with two listener processes (``[dicom] workers``) the archive stored fewer
instances per second than with one (docs/performance.md). Write transactions on a
SQLite file therefore first pass a gate that hands over at once: a lock shared by the
process's threads, then ``flock`` on ``<index>-writer.lock`` shared by every process of
the archive (serve, its workers, the CLI). The kernel wakes the next waiter when the
lock is released, and the lock goes with the process if it dies.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool

_WRITE = "coffre_write"

#: The transaction handle services pass from ``Database.write()`` to index functions.
Tx = Connection


class WriterGate:
    """One writer at a time across the threads and processes of an archive (SQLite).

    Re-entrant in a thread (a nested ``write()`` reaches SQLite's own lock, as before);
    the file lock is taken by the outermost entry only.
    """

    def __init__(self, lock_path: Path | None) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._path = lock_path

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            self._depth += 1
            try:
                if self._depth == 1 and self._path is not None:
                    if self._fd is None:
                        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
                    fcntl.flock(self._fd, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    if self._depth == 1 and self._fd is not None:
                        fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                self._depth -= 1

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


@dataclass(frozen=True, slots=True)
class Database:
    """The engine and its two ways in: ``read()`` and ``write()`` transactions."""

    engine: Engine
    dialect: str
    #: SQLite only: serialises writers without SQLite's sleeping busy handler
    gate: WriterGate | None = field(default=None, compare=False)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed on exit, rolled back on error."""
        gate = self.gate.held() if self.gate is not None else nullcontext()
        with gate, self.engine.connect() as conn:
            conn = conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()
        if self.gate is not None:
            self.gate.close()


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
        database = parsed.database or ""
        on_disk = bool(database) and database != ":memory:" and not database.startswith("file:")
        gate = WriterGate(Path(f"{database}-writer.lock") if on_disk else None)
        return Database(engine=engine, dialect=backend, gate=gate)
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
