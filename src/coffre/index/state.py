"""Archive-wide key/value state (markers such as the loaded demo territory)."""

from __future__ import annotations

from sqlalchemy import Connection, select

from coffre.index.schema import archive_state


def get(conn: Connection, key: str) -> bytes | None:
    row = conn.execute(select(archive_state.c.value).where(archive_state.c.key == key)).first()
    return None if row is None else bytes(row.value)


def put(conn: Connection, key: str, value: bytes) -> None:
    conn.execute(archive_state.delete().where(archive_state.c.key == key))
    conn.execute(archive_state.insert().values(key=key, value=value))
