"""The query compiler (PS3.4 C.2.2.2 matching, C.6 return keys), on SQLite and PostgreSQL.

The archive is filled through the real ingest path with two facilities that share a
StudyInstanceUID and a PatientID, names with accents, an accession number holding SQL
wild card characters and a PatientID holding SQL text.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import config
from pydicom.dataset import Dataset
from sqlalchemy import event, func, select
from sqlalchemy.dialects import postgresql, sqlite

from coffre.app import Context
from coffre.dicom.attributes import Level
from coffre.dicom.query import (
    Filter,
    InvalidQuery,
    Match,
    Model,
    Query,
    make_filter,
    parse_identifier,
)
from coffre.dicom.synthetic import MODALITY_SOP, InstanceSpec, make_instance
from coffre.index.engine import Database
from coffre.index.query import Row, Scope, compile_query, run_query
from coffre.index.schema import patient
from coffre.model import Actor, Permission
from coffre.services import facilities
from coffre.services.ingest import ingest
from coffre.settings import Settings
from coffre.storage.memory import MemoryBlobStore
from conftest import migrated_database

# tags
PATIENT_ID, PATIENT_NAME, BIRTH_DATE, SEX = 0x00100020, 0x00100010, 0x00100030, 0x00100040
STUDY_UID, STUDY_DATE, STUDY_TIME = 0x0020000D, 0x00080020, 0x00080030
ACCESSION, STUDY_DESCRIPTION = 0x00080050, 0x00081030
SERIES_UID, MODALITY, SERIES_NUMBER = 0x0020000E, 0x00080060, 0x00200011
SOP_UID, SOP_CLASS, INSTANCE_NUMBER, CONTENT_TIME = 0x00080018, 0x00080016, 0x00200013, 0x00080033
MODALITIES, SOP_CLASSES = 0x00080061, 0x00080062
PAT_STUDIES, PAT_SERIES, PAT_INSTANCES = 0x00201200, 0x00201202, 0x00201204
STUDY_SERIES, STUDY_INSTANCES, SERIES_INSTANCES = 0x00201206, 0x00201208, 0x00201209
UNKNOWN = 0x00091010  # a private tag the index does not hold

CT, MR, US = (MODALITY_SOP[m][0] for m in ("CT", "MR", "US"))
SQL_ID = "1'; DROP TABLE patient;--"


def uid(name: str) -> str:
    return "2.25." + "".join(str(ord(c)) for c in name)


SHARED = uid("SHARED")


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class Series:
    uid: str
    modality: str
    number: int
    instances: int


PA1 = Patient("PA1", "MÜLLER^Jürgen", "19650312", "M")
PA2 = Patient("PA2", "Dupont^Éloïse", "19800101", "F")
PA3 = Patient(SQL_ID, "SMITH^John", "19900101", "M")
PB1 = Patient("PA1", "LEROY^Sophie", "19700101", "F")  # same PatientID, another facility

#: facility A: (patient, study uid, date, time, accession, description, series)
SITE_A = [
    (PA1, uid("SA1"), "20240110", "081500", "A%1", "CT THORAX",
     [Series(uid("SA1S1"), "CT", 1, 3), Series(uid("SA1S2"), "MR", 2, 2)]),
    (PA1, SHARED, "20240215", "143000.25", "A_1", "", [Series(uid("SA2S1"), "US", 1, 1)]),
    (PA2, uid("SA3"), "20231231", "235959", "AB1", "IRM GENOU", [Series(uid("SA3S1"), "MR", 1, 2)]),
    (PA2, uid("SA4"), "20240301", "", "AX1", "ct thorax", [Series(uid("SA4S1"), "CT", 1, 1)]),
    (PA3, uid("SA5"), "", "120000", "", "CT HEAD", [Series(uid("SA5S1"), "CT", 3, 1)]),
]  # fmt: skip
SITE_B = [
    (PB1, SHARED, "20240215", "090000", "B1", "SCANNER",
     [Series(uid("SB1S1"), "CT", 1, 4), Series(uid("SB1S2"), "MR", 2, 1)]),
    (PB1, uid("SB2"), "20240110", "081500", "A%1", "CT THORAX", [Series(uid("SB2S1"), "CT", 1, 1)]),
]  # fmt: skip


@dataclass(frozen=True)
class Archive:
    db: Database
    a: Scope
    b: Scope
    facility_a: int
    facility_b: int


def _site(ctx: Context, slug: str, ae: str) -> Actor:
    op = Actor.system("test")
    fac = facilities.add_facility(ctx, op, slug=slug, name=slug, issuer=f"ISSUER-{slug}")
    node = facilities.add_node(ctx, op, ae_title=ae, host="127.0.0.1", port=104,
                               facility_slug=slug, permissions=frozenset({Permission.STORE}))  # fmt: skip
    return Actor.for_node(node, fac, "127.0.0.1")


def _store(ctx: Context, actor: Actor, studies: list[Any]) -> None:
    for pat, study_uid, date, time, accession, description, series_list in studies:
        for s in series_list:
            for number in range(1, s.instances + 1):
                spec = InstanceSpec(
                    modality=s.modality, patient_id=pat.patient_id, patient_name=pat.name,
                    birth_date=pat.birth_date, sex=pat.sex, study_uid=study_uid, series_uid=s.uid,
                    study_date=date, study_time=time, accession=accession,
                    study_description=description, series_number=s.number,
                    instance_number=number, rows=8, columns=8, seed=number,
                )  # fmt: skip
                ingest(ctx, actor, make_instance(spec), source="test")


def _populate(database: Database, data_dir: Path) -> Archive:
    ctx = Context(settings=Settings(data_dir=data_dir), db=database, blobs=MemoryBlobStore())
    site_a = _site(ctx, "site-a", "MOD_A")
    site_b = _site(ctx, "site-b", "MOD_B")
    _store(ctx, site_a, SITE_A)
    _store(ctx, site_b, SITE_B)
    fa, fb = site_a.facility_id, site_b.facility_id
    assert fa is not None and fb is not None and fa != fb
    return Archive(database, Scope(frozenset({fa})), Scope(frozenset({fb})), fa, fb)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    """The archive, filled once per module and backend: every test here only reads it.

    Same databases as conftest's ``database`` fixture (a migrated SQLite file; a copy of
    the session's migrated PostgreSQL template), built once instead of once per test.
    """
    tmp = tmp_path_factory.mktemp("query")
    with migrated_database(request, tmp) as db:
        yield _populate(db, tmp)


# -- helpers ------------------------------------------------------------------------------


def query(level: Level, filters: dict[int, str] | None = None, returns: tuple[int, ...] = (),
          **options: Any) -> Query:  # fmt: skip
    made = [make_filter(tag, raw) for tag, raw in (filters or {}).items()]
    return Query(level=level, model=Model.STUDY_ROOT, filters=tuple(f for f in made if f),
                 return_tags=returns, **options)  # fmt: skip


def find(archive: Archive, q: Query, scope: Scope | None = None) -> list[Row]:
    with archive.db.read() as conn:
        return list(run_query(conn, q, scope or archive.a))


def values(archive: Archive, q: Query, tag: int, scope: Scope | None = None) -> list[Any]:
    return [row[tag] for row in find(archive, q, scope)]


def identifier(level: str, **keys: Any) -> Dataset:
    """A C-FIND identifier; values are not validated (an SCU may send anything)."""
    ds = Dataset()
    with config.disable_value_validation():
        ds.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return ds


def cfind(archive: Archive, ds: Dataset, model: Model = Model.STUDY_ROOT,
          scope: Scope | None = None) -> list[Row]:  # fmt: skip
    return find(archive, parse_identifier(ds, model), scope)


def studies(archive: Archive, filters: dict[int, str], scope: Scope | None = None) -> list[str]:
    """Accession numbers (or '' → None) of the matching studies, in pk order."""
    return values(archive, query(Level.STUDY, filters, (ACCESSION,)), ACCESSION, scope)


# -- PATIENT level --------------------------------------------------------------------------


def test_patient_single_value_returns_the_raw_attributes(archive: Archive) -> None:
    ds = identifier("PATIENT", PatientID="PA1", PatientName="", PatientBirthDate="", PatientSex="")
    rows = cfind(archive, ds, Model.PATIENT_ROOT)
    assert rows == [
        {PATIENT_ID: "PA1", PATIENT_NAME: "MÜLLER^Jürgen", BIRTH_DATE: "19650312", SEX: "M"}
    ]


def test_patient_id_holding_sql_text_is_only_a_value(archive: Archive) -> None:
    rows = cfind(
        archive, identifier("PATIENT", PatientID=SQL_ID, PatientName=""), Model.PATIENT_ROOT
    )
    assert rows == [{PATIENT_ID: SQL_ID, PATIENT_NAME: "SMITH^John"}]
    with archive.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(patient)).scalar_one() == 4
    for dialect, module in (("sqlite", sqlite), ("postgresql", postgresql)):
        sql = str(compile_query(query(Level.PATIENT, {PATIENT_ID: SQL_ID}), archive.a, dialect)
                  .compile(dialect=module.dialect()))  # fmt: skip
        assert "DROP" not in sql and "PA1" not in sql


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("muller^jurgen", ["PA1"]),  # single value: case and accents ignored
        ("MÜLLER^JÜRGEN", ["PA1"]),
        ("dupont^éloïse", ["PA2"]),
        ("müll*", ["PA1"]),
        ("dupont^elo?se", ["PA2"]),
        ("*^J*", ["PA1", SQL_ID]),
        ("*", ["PA1", "PA2", SQL_ID]),  # universal
        ("SMITH*\\dupont^eloise", ["PA2", SQL_ID]),  # list, one item with a wild card
        ("mull?r", []),  # ? is one character: the component continues
        ("LEROY*", []),  # facility B's patient
    ],
)
def test_patient_name_matching(archive: Archive, raw: str, expected: list[str]) -> None:
    rows = cfind(archive, identifier("PATIENT", PatientName=raw, PatientID=""), Model.PATIENT_ROOT)
    assert [r[PATIENT_ID] for r in rows] == expected


def test_universal_matching_returns_every_patient_of_the_scope(archive: Archive) -> None:
    rows = cfind(archive, identifier("PATIENT", PatientName="", PatientID=""), Model.PATIENT_ROOT)
    assert [(r[PATIENT_ID], r[PATIENT_NAME]) for r in rows] == [
        ("PA1", "MÜLLER^Jürgen"), ("PA2", "Dupont^Éloïse"), (SQL_ID, "SMITH^John")]  # fmt: skip
    rows = cfind(archive, identifier("PATIENT", PatientID=""), Model.PATIENT_ROOT, archive.b)
    assert rows == [{PATIENT_ID: "PA1"}]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("jur", ["PA1"]),  # prefix of the given name
        ("mul", ["PA1"]),  # prefix of the family name
        ("ELO", ["PA2"]),
        ("john", [SQL_ID]),
        ("uller", []),  # not a prefix of a component
        ("%", []),  # SQL wild card characters are escaped
        ("_", []),
        ("d*", ["PA2"]),  # an explicit wild card keeps wild card matching
    ],
)
def test_fuzzy_person_name_matches_the_prefix_of_any_component(
    archive: Archive, raw: str, expected: list[str]
) -> None:
    q = query(Level.PATIENT, {PATIENT_NAME: raw}, (PATIENT_ID,), fuzzy=True)
    assert values(archive, q, PATIENT_ID) == expected


def test_without_fuzzy_a_name_prefix_does_not_match(archive: Archive) -> None:
    assert (
        values(archive, query(Level.PATIENT, {PATIENT_NAME: "jur"}, (PATIENT_ID,)), PATIENT_ID)
        == []
    )


def test_patient_computed_counts(archive: Archive) -> None:
    q = query(Level.PATIENT, {}, (PATIENT_ID, PAT_STUDIES, PAT_SERIES, PAT_INSTANCES))
    assert [tuple(r.values()) for r in find(archive, q)] == [
        ("PA1", 2, 3, 6), ("PA2", 2, 2, 3), (SQL_ID, 1, 1, 1)]  # fmt: skip
    assert [tuple(r.values()) for r in find(archive, q, archive.b)] == [("PA1", 2, 3, 6)]


# -- STUDY level ----------------------------------------------------------------------------


def test_study_uid_list(archive: Archive) -> None:
    ds = identifier(
        "STUDY", StudyInstanceUID=[uid("SA3"), uid("SA1"), uid("nope")], AccessionNumber=""
    )
    rows = cfind(archive, ds)
    assert rows == [
        {STUDY_UID: uid("SA1"), ACCESSION: "A%1"},
        {STUDY_UID: uid("SA3"), ACCESSION: "AB1"},
    ]


def test_patient_root_and_study_root_give_the_same_rows(archive: Archive) -> None:
    patient_root = cfind(
        archive, identifier("STUDY", PatientID="PA1", StudyInstanceUID=""), Model.PATIENT_ROOT
    )
    study_root = cfind(archive, identifier("STUDY", PatientID="PA1", StudyInstanceUID=""))
    assert patient_root == study_root == [
        {PATIENT_ID: "PA1", STUDY_UID: uid("SA1")}, {PATIENT_ID: "PA1", STUDY_UID: SHARED}]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A%1", ["A%1"]),  # not AB1
        ("A_1", ["A_1"]),  # not AX1
        ("A?1", ["A%1", "A_1", "AB1", "AX1"]),
        ("A%*", ["A%1"]),
        ("A_*", ["A_1"]),
        ("*%*", ["A%1"]),
        ("*_?", ["A_1"]),
        ("A*", ["A%1", "A_1", "AB1", "AX1"]),
        ("a*", []),  # wild cards are case-sensitive except for PN (C.2.2.2.4)
        ("A!1", []),  # the LIKE escape character is escaped too
        ("A[%]1", []),  # GLOB brackets are literal
    ],
)
def test_accession_wildcards_and_escaping(archive: Archive, raw: str, expected: list[str]) -> None:
    assert studies(archive, {ACCESSION: raw}) == expected


def test_description_wildcard_is_case_sensitive(archive: Archive) -> None:
    q = query(Level.STUDY, {STUDY_DESCRIPTION: "CT*"}, (STUDY_DESCRIPTION,))
    assert values(archive, q, STUDY_DESCRIPTION) == ["CT THORAX", "CT HEAD"]
    q = query(Level.STUDY, {STUDY_DESCRIPTION: "ct*"}, (STUDY_DESCRIPTION,))
    assert values(archive, q, STUDY_DESCRIPTION) == ["ct thorax"]
    q = query(Level.STUDY, {STUDY_DESCRIPTION: "ct thorax"}, (STUDY_DESCRIPTION,))
    assert values(archive, q, STUDY_DESCRIPTION) == ["ct thorax"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("20240110", ["A%1"]),
        ("20240101-20240228", ["A%1", "A_1"]),
        ("20240110-20240215", ["A%1", "A_1"]),  # bounds are inclusive
        ("-20240110", ["A%1", "AB1"]),  # open start: the empty date does not match
        ("20240215-", ["A_1", "AX1"]),  # open end
        ("2024.03.01", ["AX1"]),  # ACR-NEMA form
        ("20250101-", []),
        ('""', [None]),  # empty value matching: the study without a date
        ("*", ["A%1", "A_1", "AB1", "AX1", None]),  # universal
    ],
)
def test_study_date_matching(archive: Archive, raw: str, expected: list[str | None]) -> None:
    assert studies(archive, {STUDY_DATE: raw}) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("081500", ["A%1"]),
        ("0815", ["A%1"]),  # a time with less precision names an interval
        ("08", ["A%1"]),
        ("143000", ["A_1"]),  # 14:30:00.25 is within 14:30:00
        ("143000.25", ["A_1"]),
        ("143000.3", []),
        ("0800-1000", ["A%1"]),
        ("-1200", ["A%1", None]),  # 12:00 included, the empty time is not
        ("14:30-", ["A_1", "AB1"]),
        ("1200-1430", ["A_1", None]),  # 14:30 names the minute 14:30:00-14:30:59.999999
        ('""', ["AX1"]),
    ],
)
def test_study_time_matching(archive: Archive, raw: str, expected: list[str | None]) -> None:
    assert studies(archive, {STUDY_TIME: raw}) == expected


def test_malformed_date_is_refused() -> None:
    with pytest.raises(InvalidQuery):
        make_filter(STUDY_DATE, "2024-13-01")


def test_empty_value_matching_on_a_string(archive: Archive) -> None:
    rows = cfind(archive, identifier("STUDY", StudyDescription='""', AccessionNumber=""))
    assert rows == [{STUDY_DESCRIPTION: None, ACCESSION: "A_1", STUDY_UID: SHARED}]
    assert studies(archive, {ACCESSION: '""'}) == [None]


def test_time_is_returned_as_dicom_tm(archive: Archive) -> None:
    q = query(Level.STUDY, {}, (ACCESSION, STUDY_TIME))
    assert [(r[ACCESSION], r[STUDY_TIME]) for r in find(archive, q)] == [
        ("A%1", "081500"), ("A_1", "143000.25"), ("AB1", "235959"), ("AX1", None), (None, "120000")]  # fmt: skip
    q = query(Level.IMAGE, {STUDY_UID: SHARED}, (CONTENT_TIME,))
    assert find(archive, q) == [{CONTENT_TIME: "143000.25"}]


@pytest.mark.parametrize(
    ("filters"),
    [
        {PATIENT_NAME: "MÜLLER\x00^Jürgen"},  # NUL inside the value
        {ACCESSION: "A" * 2000},
        {STUDY_DESCRIPTION: "CT\x01*"},
        {SERIES_NUMBER: "one"},
    ],
)
def test_impossible_values_match_nothing(archive: Archive, filters: dict[int, str]) -> None:
    q = query(Level.SERIES, filters, (SERIES_UID,))
    assert [f.match for f in q.filters] == [Match.NOTHING]
    assert find(archive, q) == []


def test_impossible_values_from_a_cfind_identifier_match_nothing(archive: Archive) -> None:
    assert cfind(archive, identifier("STUDY", AccessionNumber="A" * 2000)) == []
    assert cfind(archive, identifier("STUDY", PatientName="DUPONT\x00*")) == []


def test_modalities_in_study_matching_and_return(archive: Archive) -> None:
    def match(raw: str, scope: Scope | None = None) -> list[tuple[Any, ...]]:
        rows = cfind(
            archive, identifier("STUDY", ModalitiesInStudy=raw, AccessionNumber=""), scope=scope
        )
        return [(r[ACCESSION], r[MODALITIES]) for r in rows]

    assert match("MR") == [("A%1", ["CT", "MR"]), ("AB1", ["MR"])]
    assert match("CT\\US") == [
        ("A%1", ["CT", "MR"]),
        ("A_1", ["US"]),
        ("AX1", ["CT"]),
        (None, ["CT"]),
    ]
    assert match("M*") == [("A%1", ["CT", "MR"]), ("AB1", ["MR"])]
    assert match("?S") == [("A_1", ["US"])]
    assert match("XA") == []
    assert match("") == [
        ("A%1", ["CT", "MR"]), ("A_1", ["US"]), ("AB1", ["MR"]), ("AX1", ["CT"]), (None, ["CT"])]  # fmt: skip
    assert match("MR", archive.b) == [("B1", ["CT", "MR"])]
    assert match("US", archive.b) == []  # facility A's US series of the shared study is not B's


def test_sop_classes_in_study_matching_and_return(archive: Archive) -> None:
    q = query(Level.STUDY, {SOP_CLASSES: MR}, (ACCESSION, SOP_CLASSES))
    assert [(r[ACCESSION], r[SOP_CLASSES]) for r in find(archive, q)] == [
        ("A%1", sorted([CT, MR])), ("AB1", [MR])]  # fmt: skip
    q = query(Level.STUDY, {SOP_CLASSES: f"{US}\\{MR}"}, (ACCESSION,))
    assert values(archive, q, ACCESSION) == ["A%1", "A_1", "AB1"]


def test_study_computed_counts(archive: Archive) -> None:
    q = query(Level.STUDY, {}, (ACCESSION, STUDY_SERIES, STUDY_INSTANCES))
    assert [tuple(r.values()) for r in find(archive, q)] == [
        ("A%1", 2, 5), ("A_1", 1, 1), ("AB1", 1, 2), ("AX1", 1, 1), (None, 1, 1)]  # fmt: skip


def test_shared_study_uid_is_seen_and_counted_per_facility(archive: Archive) -> None:
    ds = identifier("STUDY", StudyInstanceUID=SHARED, AccessionNumber="", PatientName="",
                    NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="",
                    ModalitiesInStudy="")  # fmt: skip
    expected_a = {STUDY_UID: SHARED, ACCESSION: "A_1", PATIENT_NAME: "MÜLLER^Jürgen",
                  STUDY_SERIES: 1, STUDY_INSTANCES: 1, MODALITIES: ["US"]}  # fmt: skip
    expected_b = {STUDY_UID: SHARED, ACCESSION: "B1", PATIENT_NAME: "LEROY^Sophie",
                  STUDY_SERIES: 2, STUDY_INSTANCES: 5, MODALITIES: ["CT", "MR"]}  # fmt: skip
    assert cfind(archive, ds, scope=archive.a) == [expected_a]
    assert cfind(archive, ds, scope=archive.b) == [expected_b]
    assert cfind(archive, ds, scope=Scope(None)) == [expected_a, expected_b]
    both = Scope(frozenset({archive.facility_a, archive.facility_b}))
    assert cfind(archive, ds, scope=both) == [expected_a, expected_b]
    assert cfind(archive, ds, scope=Scope(frozenset())) == []
    assert cfind(archive, ds, scope=Scope(frozenset({archive.facility_b + 100}))) == []


def test_scope_applies_to_every_level(archive: Archive) -> None:
    for level, tag in ((Level.PATIENT, PATIENT_ID), (Level.STUDY, STUDY_UID),
                       (Level.SERIES, SERIES_UID), (Level.IMAGE, SOP_UID)):  # fmt: skip
        a = values(archive, query(level, {}, (tag,)), tag, archive.a)
        b = values(archive, query(level, {}, (tag,)), tag, archive.b)
        everything = values(archive, query(level, {}, (tag,)), tag, Scope(None))
        counts = {
            Level.PATIENT: (3, 1),
            Level.STUDY: (5, 2),
            Level.SERIES: (6, 3),
            Level.IMAGE: (10, 6),
        }
        assert (len(a), len(b)) == counts[level]
        assert everything == a + b  # A was stored first: pk order
        assert values(archive, query(level, {}, (tag,)), tag, Scope(frozenset())) == []


# -- SERIES and IMAGE levels ----------------------------------------------------------------


def test_series_level_filters_on_patient_and_study_attributes(archive: Archive) -> None:
    ds = identifier("SERIES", StudyInstanceUID=uid("SA1"), PatientName="muller*", Modality="MR",
                    SeriesInstanceUID="", SeriesNumber="", NumberOfSeriesRelatedInstances="")  # fmt: skip
    assert cfind(archive, ds) == [{STUDY_UID: uid("SA1"), PATIENT_NAME: "MÜLLER^Jürgen", MODALITY: "MR",
                                   SERIES_UID: uid("SA1S2"), SERIES_NUMBER: 2,
                                   SERIES_INSTANCES: 2}]  # fmt: skip
    ds.PatientName = "DUPONT*"
    assert cfind(archive, ds) == []


def test_series_computed_counts_and_study_keys(archive: Archive) -> None:
    q = query(
        Level.SERIES, {}, (SERIES_UID, SERIES_INSTANCES, STUDY_INSTANCES, MODALITIES, PAT_STUDIES)
    )
    assert [tuple(r.values()) for r in find(archive, q)] == [
        (uid("SA1S1"), 3, 5, ["CT", "MR"], 2),
        (uid("SA1S2"), 2, 5, ["CT", "MR"], 2),
        (uid("SA2S1"), 1, 1, ["US"], 2),
        (uid("SA3S1"), 2, 2, ["MR"], 2),
        (uid("SA4S1"), 1, 1, ["CT"], 2),
        (uid("SA5S1"), 1, 1, ["CT"], 1),
    ]
    assert values(archive, q, SERIES_INSTANCES, archive.b) == [4, 1, 1]


def test_series_number_matching(archive: Archive) -> None:
    q = query(Level.SERIES, {SERIES_NUMBER: "2"}, (SERIES_UID,))
    assert values(archive, q, SERIES_UID) == [uid("SA1S2")]
    q = query(Level.SERIES, {SERIES_NUMBER: "*"}, (SERIES_UID,))  # universal, not "nothing"
    assert len(find(archive, q)) == 6


def test_image_level(archive: Archive) -> None:
    ds = identifier("IMAGE", StudyInstanceUID=uid("SA1"), SeriesInstanceUID=uid("SA1S1"),
                    SOPInstanceUID="", SOPClassUID="", InstanceNumber="", ContentTime="",
                    Modality="", PatientID="")  # fmt: skip
    rows = cfind(archive, ds)
    assert [(r[INSTANCE_NUMBER], r[SOP_CLASS], r[CONTENT_TIME], r[MODALITY], r[PATIENT_ID]) for r in rows] == [
        (1, CT, "081500", "CT", "PA1"), (2, CT, "081500", "CT", "PA1"), (3, CT, "081500", "CT", "PA1")]  # fmt: skip
    sops = [r[SOP_UID] for r in rows]
    assert all(isinstance(s, str) and s for s in sops)
    ds.SOPInstanceUID = [sops[2], sops[0]]
    assert [r[INSTANCE_NUMBER] for r in cfind(archive, ds)] == [1, 3]
    ds.SOPInstanceUID = sops[1]
    assert [r[INSTANCE_NUMBER] for r in cfind(archive, ds, scope=archive.b)] == []


def test_image_level_instance_number_and_class(archive: Archive) -> None:
    q = query(Level.IMAGE, {SOP_CLASS: MR, INSTANCE_NUMBER: "2"}, (SERIES_UID,))
    assert values(archive, q, SERIES_UID) == [uid("SA1S2"), uid("SA3S1")]


def test_paging_is_stable_and_complete(archive: Archive) -> None:
    everything = values(archive, query(Level.IMAGE, {}, (SOP_UID,)), SOP_UID)
    assert len(everything) == 10 == len(set(everything))
    pages = [values(archive, query(Level.IMAGE, {}, (SOP_UID,), limit=3, offset=o), SOP_UID)
             for o in (0, 3, 6, 9)]  # fmt: skip
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [sop for page in pages for sop in page] == everything
    assert values(archive, query(Level.IMAGE, {}, (SOP_UID,), offset=8), SOP_UID) == everything[8:]
    assert values(archive, query(Level.IMAGE, {}, (SOP_UID,), limit=0), SOP_UID) == []
    assert values(archive, query(Level.IMAGE, {}, (SOP_UID,), limit=2), SOP_UID) == everything[:2]


def test_negative_paging_is_refused(archive: Archive) -> None:
    with pytest.raises(InvalidQuery):
        find(archive, query(Level.STUDY, {}, (), offset=-1))
    with pytest.raises(InvalidQuery):
        find(archive, query(Level.STUDY, {}, (), limit=-1))


# -- return keys and robustness -------------------------------------------------------------


def test_rows_hold_every_requested_tag(archive: Archive) -> None:
    returns = (
        UNKNOWN,
        STUDY_DESCRIPTION,
        MODALITY,
        SERIES_INSTANCES,
        PAT_STUDIES,
        0x00081030,
        ACCESSION,
    )
    rows = find(archive, query(Level.STUDY, {ACCESSION: "A%1"}, returns))
    # Modality and NumberOfSeriesRelatedInstances are below the STUDY level: empty
    assert rows == [{UNKNOWN: None, STUDY_DESCRIPTION: "CT THORAX", MODALITY: None,
                     SERIES_INSTANCES: None, PAT_STUDIES: 2, ACCESSION: "A%1"}]  # fmt: skip
    assert list(rows[0]) == [
        UNKNOWN,
        STUDY_DESCRIPTION,
        MODALITY,
        SERIES_INSTANCES,
        PAT_STUDIES,
        ACCESSION,
    ]
    assert find(archive, query(Level.STUDY, {ACCESSION: "A%1"}, ())) == [{}]


def test_filters_the_index_cannot_match_are_ignored_and_lower_levels_refused(
    archive: Archive,
) -> None:
    q = Query(Level.STUDY, Model.STUDY_ROOT, (Filter(UNKNOWN, Match.SINGLE, ("x",)),), (ACCESSION,))
    assert len(find(archive, q)) == 5
    q = Query(
        Level.STUDY, Model.STUDY_ROOT, (Filter(MODALITY, Match.SINGLE, ("CT",)),), (ACCESSION,)
    )
    with pytest.raises(InvalidQuery):
        find(archive, q)


def test_rows_stream_and_an_abandoned_iterator_leaves_the_connection_usable(
    archive: Archive,
) -> None:
    executed: list[tuple[object, object]] = []

    def capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        context = args[-2]  # (parameters, context, executemany)
        executed.append((context.execution_options.get("yield_per"), getattr(cursor, "name", None)))

    event.listen(archive.db.engine, "before_cursor_execute", capture)
    try:
        with archive.db.read() as conn:
            rows = run_query(conn, query(Level.IMAGE, {}, (SOP_UID,)), Scope(None))
            first = next(rows)
            assert set(first) == {SOP_UID}
            assert isinstance(rows, Generator)
            rows.close()
            # the caller's connection keeps its own options
            assert "yield_per" not in conn.get_execution_options()
            again = list(
                run_query(conn, query(Level.STUDY, {ACCESSION: "A%1"}, (ACCESSION,)), Scope(None))
            )
    finally:
        event.remove(archive.db.engine, "before_cursor_execute", capture)
    assert again == [{ACCESSION: "A%1"}, {ACCESSION: "A%1"}]
    queries = [e for e in executed if e[0] is not None]
    assert [e[0] for e in queries] == [500, 500]
    if archive.db.dialect == "postgresql":  # a server-side (named) cursor
        assert all(name for _, name in queries)
