"""Schema migrations of the index (Alembic), run from code.

No ``alembic.ini`` is needed: the Alembic :class:`~alembic.config.Config` is built here
with ``script_location`` pointing at the ``migrations`` folder shipped inside the
package. :func:`upgrade` runs in one write transaction of the process's
:class:`~coffre.index.engine.Database`; on PostgreSQL it first takes a transaction-level
advisory lock, so that several Coffre nodes starting at once upgrade one after the
other (the later ones find the schema at head and do nothing). On SQLite the write
transaction starts with ``BEGIN IMMEDIATE``, which serialises them the same way.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from coffre.index.engine import Database

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: arbitrary 64-bit key of the PostgreSQL advisory lock that serialises upgrades
_PG_LOCK_KEY = 0x436F_6666_7265_0001


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # revision files are named NNNN_slug.py; keep that for new ones
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    return config


def head() -> str:
    """The revision the code expects (the single head of the migration scripts)."""
    script = ScriptDirectory.from_config(alembic_config())
    rev = script.get_current_head()
    if rev is None:  # pragma: no cover - the package always ships revisions
        raise RuntimeError(f"no migration scripts in {MIGRATIONS}")
    return rev


def current_revision(db: Database) -> str | None:
    """The revision the database is at, or ``None`` for an empty database."""
    with db.read() as conn:
        rev: str | None = MigrationContext.configure(conn).get_current_revision()
    return rev


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: head). Idempotent."""
    config = alembic_config()
    with db.write() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        elif conn.dialect.name == "sqlite":
            # a batch migration recreates tables that others reference: check the
            # foreign keys at commit, not at the intermediate DROP TABLE
            conn.exec_driver_sql("PRAGMA defer_foreign_keys=ON")
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
