"""Alembic environment of the Coffre index, driven from :mod:`coffre.index.migrate`.

There is no ``alembic.ini`` and no URL here: ``migrate.upgrade`` opens a write
transaction on the process's :class:`~coffre.index.engine.Database` and hands its
connection over in ``config.attributes["connection"]``. The migrations run inside that
transaction (transactional DDL on both SQLite and PostgreSQL), so an upgrade either
completes or leaves the schema as it was. SQLite uses batch mode (``render_as_batch``)
because it cannot ``ALTER`` most things in place.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from coffre.index.schema import metadata


def _run(connection: Connection) -> None:
    is_sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=is_sqlite,
        transactional_ddl=True,
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if context.is_offline_mode() or not isinstance(connection, Connection):
        raise RuntimeError(
            "Coffre migrations run online only, through coffre.index.migrate.upgrade()"
        )
    _run(connection)


_main()
