"""Usage per facility and month (services/usage.py) on SQLite and PostgreSQL: SQL GROUP BY
with months in UTC at the boundaries (also under a PostgreSQL session time zone far
from UTC), duplicates and new versions, end-of-month storage, scope by role, CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from coffre.app import Context
from coffre.dicom.synthetic import InstanceSpec, make_instance
from coffre.errors import BadRequest, NotAuthorized
from coffre.index.engine import Database
from coffre.model import Actor, Facility, Role
from coffre.services import facilities
from coffre.services.ingest import ingest
from coffre.services.usage import MAX_MONTHS, Month, UsageRow, months, to_csv, usage_by_month
from coffre.settings import Settings
from coffre.storage.memory import MemoryBlobStore

OPERATOR = Actor.system("tests")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Archive:
    def __init__(self, database: Database, tmp_path: Path) -> None:
        self.clock = Clock()
        self.ctx = Context(settings=Settings(data_dir=tmp_path), db=database, blobs=MemoryBlobStore(),
                           clock=self.clock)
        self.facilities: dict[str, Facility] = {
            slug: facilities.add_facility(self.ctx, OPERATOR, slug=slug, name=name, issuer=slug.upper())
            for slug, name in (("nord", "CHU Nord"), ("sud", "=HYPERLINK(\"http://evil\")"), ("est", "Est"))
        }

    def store(self, slug: str, at: datetime, spec: InstanceSpec) -> int:
        """Ingest one object at ``at``; its size in bytes."""
        self.clock.now = at
        data = make_instance(spec)
        ingest(self.ctx, Actor.system("tests", facility=self.facilities[slug]), data, source="test")
        return len(data)

    def user(self, role: Role, *slugs: str) -> Actor:
        facs = tuple(self.facilities[s] for s in slugs)
        return Actor.for_user(f"{role.value}.{'-'.join(slugs)}", "someone", frozenset({role}), facs, "127.0.0.1")


def at(text_: str) -> datetime:
    return datetime.fromisoformat(text_).replace(tzinfo=UTC)


@pytest.fixture
def archive(database: Database, tmp_path: Path) -> Archive:
    return Archive(database, tmp_path)


def row(rows: list[UsageRow], facility: str, month: str) -> UsageRow:
    [found] = [r for r in rows if r.facility == facility and r.month == month]
    return found


def test_counts_by_month_in_utc_with_versions_duplicates_and_storage(archive: Archive) -> None:
    a = archive
    # December 2025: one CT study of two instances at nord, the last one a microsecond
    # before midnight UTC on the 31st (still December)
    ct = InstanceSpec(study_uid="1.2.826.0.1.3680043.10.543.1", patient_id="N1", seed=1)
    dec = a.store("nord", at("2025-12-05 10:00:00"), ct)
    dec += a.store("nord", at("2025-12-31 23:59:59.999999"), replace(ct, sop_uid="1.2.826.0.1.3680043.10.543.2",
                                                                     instance_number=2, seed=2))
    # January 2026, from midnight UTC exactly: the same study gets a third instance (no
    # new study), the first instance comes again identical (not stored twice) and as a
    # new version (stored: both versions are kept)
    jan = a.store("nord", at("2026-01-01 00:00:00"), replace(ct, sop_uid="1.2.826.0.1.3680043.10.543.3",
                                                             instance_number=3, seed=3))
    a.store("nord", at("2026-01-02 08:00:00"), ct)
    jan += a.store("nord", at("2026-01-03 08:00:00"), replace(ct, seed=99, study_description="CORRECTED"))
    # and a new study, of one instance
    jan += a.store("nord", at("2026-01-31 23:30:00"), InstanceSpec(patient_id="N2", seed=4))
    # sud: one study in February only
    feb_sud = a.store("sud", at("2026-02-14 12:00:00"), InstanceSpec(patient_id="S1", modality="MR", seed=5))

    rows = usage_by_month(a.ctx, OPERATOR, Month(2025, 12), Month(2026, 2))
    assert [(r.month, r.facility) for r in rows] == [
        (m, f) for m in ("2025-12", "2026-01", "2026-02") for f in ("est", "nord", "sud")
    ]
    assert row(rows, "nord", "2025-12") == UsageRow("nord", "CHU Nord", "2025-12", studies=1, instances=2,
                                                    bytes_received=dec, bytes_stored=dec)
    nord_jan = row(rows, "nord", "2026-01")
    assert (nord_jan.studies, nord_jan.instances, nord_jan.bytes_received) == (1, 3, jan)
    assert nord_jan.bytes_stored == dec + jan
    nord_feb = row(rows, "nord", "2026-02")
    assert (nord_feb.studies, nord_feb.instances, nord_feb.bytes_received, nord_feb.bytes_stored) == (
        0, 0, 0, dec + jan)
    sud_feb = row(rows, "sud", "2026-02")
    assert (sud_feb.studies, sud_feb.instances, sud_feb.bytes_received, sud_feb.bytes_stored) == (
        1, 1, feb_sud, feb_sud)
    assert row(rows, "sud", "2026-01").bytes_stored == 0
    assert all(r.bytes_stored == 0 and r.instances == 0 for r in rows if r.facility == "est")

    # a period starting later carries the storage from before it
    later = usage_by_month(a.ctx, OPERATOR, Month(2026, 2), Month(2026, 3))
    assert row(later, "nord", "2026-03").bytes_stored == dec + jan
    assert row(later, "sud", "2026-03").bytes_stored == feb_sud
    # and one ending earlier ignores what came after
    early = usage_by_month(a.ctx, OPERATOR, Month(2025, 11), Month(2025, 12))
    assert row(early, "nord", "2025-11") == UsageRow("nord", "CHU Nord", "2025-11", 0, 0, 0, 0)
    assert row(early, "nord", "2025-12").bytes_stored == dec


def test_months_are_utc_whatever_the_postgresql_session_time_zone(archive: Archive) -> None:
    a = archive
    a.store("nord", at("2026-01-31 23:30:00"), InstanceSpec(patient_id="N1", seed=1))  # Feb 1 at UTC+14
    a.store("nord", at("2026-03-01 00:10:00"), InstanceSpec(patient_id="N2", seed=2))  # Feb 28 at UTC-10
    db = a.ctx.db
    for zone in ("Pacific/Kiritimati", "Pacific/Honolulu"):
        if db.dialect == "postgresql":
            with db.engine.connect() as conn:
                name = conn.execute(text("SELECT current_database()")).scalar_one()
                conn.execute(text(f"ALTER DATABASE \"{name}\" SET timezone TO '{zone}'"))
                conn.commit()
            db.engine.dispose()  # new sessions take the database's time zone
            with db.engine.connect() as conn:
                assert conn.execute(text("SHOW timezone")).scalar_one() == zone
        rows = usage_by_month(a.ctx, OPERATOR, Month(2026, 1), Month(2026, 3))
        assert [row(rows, "nord", m).studies for m in ("2026-01", "2026-02", "2026-03")] == [1, 0, 1]


def test_scope_by_role(archive: Archive) -> None:
    a = archive
    a.store("nord", at("2026-01-05 10:00:00"), InstanceSpec(patient_id="N1", seed=1))
    a.store("sud", at("2026-01-05 10:00:00"), InstanceSpec(patient_id="S1", seed=2))
    period = (Month(2026, 1), Month(2026, 1))
    territory = Actor.for_user("admin.territoire", "t", frozenset({Role.TERRITORY_ADMIN}), (), "127.0.0.1")
    assert {r.facility for r in usage_by_month(a.ctx, territory, *period)} == {"nord", "sud", "est"}
    admin_nord = a.user(Role.FACILITY_ADMIN, "nord")
    [only] = usage_by_month(a.ctx, admin_nord, *period)
    assert (only.facility, only.instances) == ("nord", 1)
    both = a.user(Role.FACILITY_ADMIN, "nord", "sud")
    assert {r.facility for r in usage_by_month(a.ctx, both, *period)} == {"nord", "sud"}
    for role in (Role.AUDITOR, Role.CLINICIAN, Role.RADIOLOGIST, Role.IDENTITY_MANAGER, Role.TECHNOLOGIST):
        with pytest.raises(NotAuthorized):
            usage_by_month(a.ctx, a.user(role, "nord"), *period)
    node_like = Actor.for_client("pacs", a.facilities["nord"], frozenset(), "127.0.0.1")
    with pytest.raises(NotAuthorized):
        usage_by_month(a.ctx, node_like, *period)


def test_periods_and_months_are_bounded() -> None:
    assert str(Month.parse("2026-03")) == "2026-03"
    assert Month(2026, 1).minus(1) == Month(2025, 12)
    assert Month(2026, 1).minus(13) == Month(2024, 12)
    assert Month(2025, 12).next() == Month(2026, 1)
    assert Month.of(datetime(2026, 3, 1, 0, 30, tzinfo=UTC) - timedelta(hours=1)) == Month(2026, 2)
    for bad in ("2026-13", "2026-00", "26-01", "2026-1", "", "2026-01; DROP TABLE x", "x" * 40):
        with pytest.raises(BadRequest):
            Month.parse(bad)
    with pytest.raises(BadRequest):
        months(Month(2026, 2), Month(2026, 1))
    assert len(months(Month(2016, 1), Month(2025, 12))) == MAX_MONTHS
    with pytest.raises(BadRequest):
        months(Month(2016, 1), Month(2026, 1))


def test_csv_has_a_header_and_defuses_formulas(archive: Archive) -> None:
    a = archive
    size = a.store("sud", at("2026-01-05 10:00:00"), InstanceSpec(patient_id="S1", seed=2))
    rows = usage_by_month(a.ctx, OPERATOR, Month(2026, 1), Month(2026, 1))
    parsed = list(csv.reader(io.StringIO(to_csv(rows))))
    assert parsed[0] == ["facility", "facility_name", "month", "studies", "instances", "bytes_received",
                         "bytes_stored"]
    assert ["sud", "'=HYPERLINK(\"http://evil\")", "2026-01", "1", "1", str(size), str(size)] in parsed
    assert len(parsed) == 4
