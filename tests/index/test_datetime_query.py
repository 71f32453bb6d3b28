"""DT range matching (PS3.4 C.2.2.2.5) on AcquisitionDateTime, on SQLite and PostgreSQL,
and migration 0006 that adds and backfills its column.

The instances go through the real ingest path; what each filter must match is written
out per instance (the instant each stored value names, in UTC when it has an offset).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from alembic import command
from pydicom.uid import generate_uid
from sqlalchemy import inspect, select, update

import factories
from coffre.app import Context
from coffre.dicom.attributes import Level
from coffre.dicom.query import InvalidQuery, Model, Query, make_filter, parse_identifier
from coffre.index.engine import Database
from coffre.index.migrate import MIGRATIONS, alembic_config, current_revision, head, upgrade
from coffre.index.query import Scope, run_query
from coffre.index.schema import instance
from coffre.model import Actor
from coffre.services.ingest import ingest
from coffre.settings import Settings
from coffre.storage.memory import MemoryBlobStore
from conftest import migrated_database

from .test_query import _site, identifier

ACQ_DT, INSTANCE_NUMBER = 0x0008002A, 0x00200013

#: instance number -> AcquisitionDateTime as sent (None: absent)
SITE_A: dict[int, str | None] = {
    1: "20240101120000",  # no offset: compared as written
    2: "20240101120000+0100",  # 11:00 UTC
    3: "20240101060000-0500",  # 11:00 UTC, written in another zone
    4: "20240102",  # a day: stored as its first instant
    5: "20231231235959.999999",
    6: None,
    7: "2024AB",  # malformed: not indexed
    8: "20240101113000.5",
}
SITE_B: dict[int, str | None] = {1: "20240101120000"}


@dataclass(frozen=True)
class Archive:
    db: Database
    a: Scope
    study_uid: str
    series_uid: str


def _store(ctx: Context, actor: Actor, values: dict[int, str | None], study: str, series: str) -> None:
    for number, value in values.items():
        data = factories.make_instance(
            study_uid=study, series_uid=series, instance_number=number, rows=8, columns=8,
            extra={"AcquisitionDateTime": value},
        )  # fmt: skip
        ingest(ctx, actor, data, source="test")


def _populate(db: Database, data_dir: Path) -> Archive:
    ctx = Context(settings=Settings(data_dir=data_dir), db=db, blobs=MemoryBlobStore())
    study, series = generate_uid(), generate_uid()
    site_a, site_b = _site(ctx, "site-a", "MOD_A"), _site(ctx, "site-b", "MOD_B")
    _store(ctx, site_a, SITE_A, study, series)
    _store(ctx, site_b, SITE_B, study, series)  # same UIDs, another facility
    assert site_a.facility_id is not None
    return Archive(db, Scope(frozenset({site_a.facility_id})), study, series)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    tmp = tmp_path_factory.mktemp("dtquery")
    with migrated_database(request, tmp) as db:
        yield _populate(db, tmp)


def matches(archive: Archive, raw: str | None) -> list[int]:
    made = make_filter(ACQ_DT, raw) if raw is not None else None
    q = Query(level=Level.IMAGE, model=Model.STUDY_ROOT, filters=(made,) if made else (),
              return_tags=(INSTANCE_NUMBER, ACQ_DT))  # fmt: skip
    with archive.db.read() as conn:
        return sorted(int(row[INSTANCE_NUMBER]) for row in run_query(conn, q, archive.a))  # type: ignore[arg-type]


@pytest.mark.parametrize(("raw", "expected"), [
    # single values: the interval they name
    ("2024", [1, 2, 3, 4, 8]),
    ("2023", [5]),
    ("20240101", [1, 2, 3, 8]),
    ("2024010111", [2, 3, 8]),
    ("20240101110000", [2, 3]),  # both offset-bearing values are 11:00 UTC
    ("20240101120000+0100", [2, 3]),  # the same instant asked in another zone
    ("20240101070000-0500", [1]),  # 12:00 UTC; the value without offset as written
    ("20240101120000", [1]),
    ("20231231235959.999999", [5]),
    ("20240101113000.5", [8]),
    ("20240101113000.4", []),
    # closed ranges
    ("20240101-20240101", [1, 2, 3, 8]),
    ("20231231-20240101", [1, 2, 3, 5, 8]),
    ("20240101110000-20240101113000", [2, 3, 8]),
    ("20240101120000+0100-20240101113000", [2, 3, 8]),
    ("20240101-0500-20240101-0500", [1, 2, 3, 4, 8]),  # 05:00 UTC to 04:59:59.999999 next day
    ("20240102-20240101", []),
    # open ranges: absent and malformed values never match them
    ("-20231231", [5]),
    ("20240102-", [4]),
    ("20240101113000-", [1, 4, 8]),
    ("-20240101113000", [2, 3, 5, 8]),  # 11:30:00.5 is in 11:30:00
    ("20240101120000-0500-", [4]),  # from 17:00 UTC
    ("-20240101060000-0500", [2, 3, 5]),  # up to 11:00:00.999999 UTC
    # empty value and universal matching
    ('""', [6, 7]),
    ("", [1, 2, 3, 4, 5, 6, 7, 8]),
    ("*", [1, 2, 3, 4, 5, 6, 7, 8]),
    (None, [1, 2, 3, 4, 5, 6, 7, 8]),
])  # fmt: skip
def test_acquisition_datetime_matching(archive: Archive, raw: str | None, expected: list[int]) -> None:
    assert matches(archive, raw) == expected


def test_datetime_is_returned_as_a_dicom_dt(archive: Archive) -> None:
    q = Query(level=Level.IMAGE, model=Model.STUDY_ROOT, filters=(), return_tags=(INSTANCE_NUMBER, ACQ_DT))
    with archive.db.read() as conn:
        got = {row[INSTANCE_NUMBER]: row[ACQ_DT] for row in run_query(conn, q, archive.a)}
    assert got == {
        1: "20240101120000",
        2: "20240101110000+0000",  # the same instant, in UTC
        3: "20240101110000+0000",
        4: "20240102000000",
        5: "20231231235959.999999",
        6: None,
        7: None,
        8: "20240101113000.5",
    }


def test_cfind_identifier_at_image_level(archive: Archive) -> None:
    ds = identifier("IMAGE", StudyInstanceUID=archive.study_uid, SeriesInstanceUID=archive.series_uid,
                    SOPInstanceUID="", InstanceNumber="", AcquisitionDateTime="20240101-0500")  # fmt: skip
    with archive.db.read() as conn:
        rows = list(run_query(conn, parse_identifier(ds, Model.STUDY_ROOT), archive.a))
    assert sorted(r[INSTANCE_NUMBER] for r in rows) == [1, 2, 3, 4, 8]  # type: ignore[type-var]


@pytest.mark.parametrize("raw", ["2024AB", "20241301-", "20240101-1300", "20240101-2024-2025x"])
def test_malformed_datetime_queries_are_refused(raw: str) -> None:
    with pytest.raises(InvalidQuery):
        make_filter(ACQ_DT, raw)


# -- migration 0006 -------------------------------------------------------------------


def _migration() -> ModuleType:
    path = MIGRATIONS / "versions" / "0006_acquisition_datetime.py"
    spec = importlib.util.spec_from_file_location("coffre_migration_0006", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _downgrade(db: Database, revision: str) -> None:
    config = alembic_config()
    with db.write() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def _stored(db: Database) -> dict[Any, str]:
    with db.read() as conn:
        rows = conn.execute(select(instance.c.instance_number, instance.c.acquisition_datetime))
        return {number: value for number, value in rows}


def test_migration_0006_adds_and_backfills_the_column(database: Database, tmp_path: Path) -> None:
    ctx = Context(settings=Settings(data_dir=tmp_path), db=database, blobs=MemoryBlobStore())
    _store(ctx, _site(ctx, "site-a", "MOD_A"), SITE_A, generate_uid(), generate_uid())
    ingested = _stored(database)
    assert ingested[2] == "20240101110000.000000+0000" and ingested[6] == ingested[7] == ""

    _downgrade(database, "0005")
    assert current_revision(database) == "0005"
    with database.read() as conn:
        assert "acquisition_datetime" not in {c["name"] for c in inspect(conn).get_columns("instance")}

    upgrade(database)  # adds the column again, filled from each instance's DICOM JSON
    assert current_revision(database) == head()
    assert _stored(database) == ingested

    # in batches smaller than the table, from scratch
    with database.write() as conn:
        conn.execute(update(instance).values(acquisition_datetime=""))
        assert _migration().backfill(conn, batch=3) == 6  # 1-5 and 8; 6 absent, 7 malformed
    assert _stored(database) == ingested
