"""The one table of indexed attributes (``dicom.attributes``) drives the index columns.

Every attribute has its column in the table of its level, raw beside normalised for
person names (PS3.4 C.2.2.2.1: case-insensitive matching needs an upper-cased copy);
the migrated schema on SQLite and PostgreSQL has them too (``database`` fixture).
"""

from __future__ import annotations

import pytest
from sqlalchemy import BigInteger, String, inspect

from coffre.dicom.attributes import INDEXED_ATTRIBUTES, Kind, Level, at_level
from coffre.index import schema
from coffre.index.engine import Database

TABLES = {Level.PATIENT: schema.patient, Level.STUDY: schema.study,
          Level.SERIES: schema.series, Level.IMAGE: schema.instance}


def expected_columns(level: Level) -> set[str]:
    names = {a.column for a in at_level(level)}
    return names | {f"{a.column}_norm" for a in at_level(level) if a.kind is Kind.PN}


def test_every_level_has_attributes() -> None:
    assert {a.level for a in INDEXED_ATTRIBUTES} == set(Level)
    assert any(a.kind is Kind.PN for a in at_level(Level.PATIENT))  # PatientName


@pytest.mark.parametrize("level", list(Level))
def test_schema_columns_come_from_the_attribute_table(level: Level) -> None:
    table = TABLES[level]
    assert expected_columns(level) <= set(table.c.keys())
    for attr in at_level(level):
        column = table.c[attr.column]
        if attr.kind is Kind.INT:
            assert isinstance(column.type, BigInteger), attr.keyword
        else:
            assert isinstance(column.type, String) and column.type.length == attr.length, attr.keyword
        if attr.kind is Kind.PN:
            assert table.c[f"{attr.column}_norm"].type.length == attr.length


def test_migrated_index_has_the_attribute_columns(database: Database) -> None:
    with database.engine.connect() as conn:
        inspector = inspect(conn)
        for level, table in TABLES.items():
            present = {c["name"] for c in inspector.get_columns(table.name)}
            assert expected_columns(level) <= present, (level, expected_columns(level) - present)
