"""Alembic migrations: upgrade from empty, idempotence, and no drift from schema.py."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from coffre.index.engine import Database, open_database
from coffre.index.migrate import current_revision, head, upgrade
from coffre.index.schema import metadata


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database with no schema at all."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        url = request.getfixturevalue("fresh_pg_url")
    db = open_database(url)
    yield db
    db.dispose()


def _table_names(db: Database) -> set[str]:
    with db.read() as conn:
        return set(inspect(conn).get_table_names())


def test_revisions_form_one_linear_history() -> None:
    from alembic.script import ScriptDirectory

    from coffre.index.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    chain = [rev.revision for rev in script.walk_revisions()]
    assert script.get_heads() == [head()]
    assert chain[-1] == "0001" and head() == chain[0]


def test_upgrade_from_empty(empty_database: Database) -> None:
    assert current_revision(empty_database) is None
    assert _table_names(empty_database) == set()

    upgrade(empty_database)

    assert current_revision(empty_database) == head()
    assert _table_names(empty_database) == set(metadata.tables) | {"alembic_version"}


def test_upgrade_twice_is_idempotent(empty_database: Database) -> None:
    upgrade(empty_database)
    upgrade(empty_database)
    assert current_revision(empty_database) == head()
    with empty_database.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar_one() == 1


def test_concurrent_upgrades_serialise(empty_database: Database) -> None:
    """Several nodes starting at once: one migrates, the others find head."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upgrade(empty_database)
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert current_revision(empty_database) == head()


def _unquote(default: str | None) -> str | None:
    """Normalise a rendered server default: outer parentheses, quotes and PG casts."""
    if default is None:
        return None
    text = default.strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    text = re.sub(r"::[a-z ]+(\(\d+\))?$", "", text)  # PostgreSQL: ''::character varying
    if len(text) >= 2 and text[0] == text[-1] == "'":
        text = text[1:-1].replace("''", "'")
    return text


def _compare_default(
    _context: MigrationContext,
    _inspected_column: Any,
    _metadata_column: Any,
    rendered_inspected: str | None,
    _metadata_default: Any,
    rendered_metadata: str | None,
) -> bool:
    # Alembic's SQLite comparison reports ('') vs '' as a change (its regex needs one
    # character between the quotes); compare normalised literals ourselves.
    return _unquote(rendered_inspected) != _unquote(rendered_metadata)


def test_migrations_match_schema(database: Database) -> None:
    """Head of the migrations == schema.metadata: types, defaults, keys, indexes, FKs."""
    with database.read() as conn:
        context = MigrationContext.configure(
            conn,
            opts={"compare_type": True, "compare_server_default": _compare_default},
        )
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_migrations_match_named_constraints(database: Database) -> None:
    """Names follow schema.NAMING, so later migrations can address them on both DBs."""
    with database.read() as conn:
        insp = inspect(conn)
        assert insp.get_pk_constraint("patient")["name"] == "pk_patient"
        uniques = {u["name"] for u in insp.get_unique_constraints("patient")}
        assert "uq_patient_facility_id_issuer_patient_id" in uniques
        fks = {fk["name"] for fk in insp.get_foreign_keys("study")}
        assert fks == {"fk_study_facility_id_facility", "fk_study_patient_pk_patient"}
        indexes = {ix["name"] for ix in insp.get_indexes("study")}
        assert {
            "ix_study_patient_pk",
            "ix_study_facility_id_study_date",
            "ix_study_facility_id_accession_number",
        } <= indexes


def test_sqlite_pragmas_are_on(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'p.db'}", busy_timeout_ms=12_345, pool_size=2)
    try:
        upgrade(db)
        # several pooled connections, reads and writes: each one is configured
        for open_tx in (db.read, db.write, db.read, db.write):
            with open_tx() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 12_345
    finally:
        db.dispose()
