"""DT (datetime) values: ``normalize_dt`` (PS3.5 6.2) and DT matching in the query model
(PS3.4 C.2.2.2.5), from ingest to the filter a C-FIND or QIDO-RS key becomes.

The rows these filters match on SQLite and PostgreSQL are tested in
tests/index/test_datetime_query.py; findscu in tests/net/qr/test_find_datetime.py.
"""

from __future__ import annotations

import pytest

import factories
from coffre.dicom.attributes import BY_KEYWORD, Kind, Level
from coffre.dicom.instance import normalize_dt, parse_instance
from coffre.dicom.query import Filter, InvalidQuery, Match, Model, make_filter, parse_identifier
from coffre.settings import LimitsSettings

from .test_query import identifier

ACQ_DT = 0x0008002A


def test_acquisition_datetime_is_an_indexed_image_attribute() -> None:
    attr = BY_KEYWORD["AcquisitionDateTime"]
    assert (attr.tag, attr.vr, attr.level, attr.column, attr.kind) == (
        ACQ_DT, "DT", Level.IMAGE, "acquisition_datetime", Kind.DATETIME)
    # the longest canonical form fits: YYYYMMDDHHMMSS.FFFFFF+0000
    assert attr.length == len("20240101120000.000000+0000") == 26


@pytest.mark.parametrize(("raw", "start", "end"), [
    ("2024", "20240101000000.000000", "20241231235959.999999"),
    ("202402", "20240201000000.000000", "20240229235959.999999"),  # leap year
    ("202302", "20230201000000.000000", "20230228235959.999999"),
    ("20240315", "20240315000000.000000", "20240315235959.999999"),
    ("2024031508", "20240315080000.000000", "20240315085959.999999"),
    ("202403150830", "20240315083000.000000", "20240315083059.999999"),
    ("20240315083015", "20240315083015.000000", "20240315083015.999999"),
    ("20240315083015.5", "20240315083015.500000", "20240315083015.599999"),
    ("20240315083015.123456", "20240315083015.123456", "20240315083015.123456"),
    (" 20240315083015 ", "20240315083015.000000", "20240315083015.999999"),  # padding
    ("20241231235960", "20241231235960.000000", "20241231235960.999999"),  # leap second
    # with an offset: the instant in UTC, marked +0000
    ("20240101000000-0500", "20240101050000.000000+0000", "20240101050000.999999+0000"),
    ("20240101003000+0100", "20231231233000.000000+0000", "20231231233000.999999+0000"),
    ("20240101+1400", "20231231100000.000000+0000", "20240101095959.999999+0000"),
    ("20240101-1200", "20240101120000.000000+0000", "20240102115959.999999+0000"),
    ("20240301000000+0000", "20240301000000.000000+0000", "20240301000000.999999+0000"),
    ("20240229233000.25-0045", "20240301001500.250000+0000", "20240301001500.259999+0000"),
    ("2024+0100", "20231231230000.000000+0000", "20241231225959.999999+0000"),
    ("20241231235960.5-0100", "20250101005960.500000+0000", "20250101005960.599999+0000"),
])  # fmt: skip
def test_normalize_dt(raw: str, start: str, end: str) -> None:
    assert normalize_dt(raw) == start
    assert normalize_dt(raw, end=True) == end


@pytest.mark.parametrize("raw", [
    "", "abc", "202", "20241", "2024130", "20240230", "20230229", "2024010124", "202401011260",
    "20240101120061", "20240101120000.", "20240101120000.1234567", "2024-01-01T12:00",
    "20240101+1401", "20240101-1201", "20240101+0160", "20240101+01", "20240101 +0100",
    "2024\\2025", "٢٠٢٤",  # Arabic-Indic digits are no DT
    "0000+0100", "99991231235959-0100",  # outside year 1..9999 once in UTC
])  # fmt: skip
def test_normalize_dt_refuses_malformed_values(raw: str) -> None:
    assert normalize_dt(raw) is None
    assert normalize_dt(raw, end=True) is None


def test_offsets_make_the_same_instant_equal_and_order_instants() -> None:
    same = {normalize_dt(v) for v in ("20240101120000+0100", "20240101110000+0000",
                                      "20240101060000-0500", "20240101203000+0930")}  # fmt: skip
    assert same == {"20240101110000.000000+0000"}
    earlier, later = normalize_dt("20240101120000+0100"), normalize_dt("20240101113000+0000")
    assert earlier is not None and later is not None and earlier < later


def _parsed(value: object) -> tuple[str | int | None, tuple[str, ...]]:
    parsed = parse_instance(factories.make_instance(extra={"AcquisitionDateTime": value}), LimitsSettings())
    return parsed.attributes["acquisition_datetime"], parsed.warnings


def test_ingest_indexes_acquisition_datetime() -> None:
    assert _parsed("20240315083015.5") == ("20240315083015.500000", ())
    assert _parsed("20240315083015-0500") == ("20240315133015.000000+0000", ())
    assert _parsed(None) == ("", ())
    assert parse_instance(factories.make_instance(), LimitsSettings()).attributes["acquisition_datetime"] == ""


def test_a_malformed_datetime_is_not_indexed_with_a_warning() -> None:
    value, notes = _parsed("20241301")
    assert value == ""
    assert notes == ("AcquisitionDateTime: malformed datetime; not indexed",)


# -- matching (PS3.4 C.2.2.2.5) ---------------------------------------------------------


@pytest.mark.parametrize(("raw", "low", "high"), [
    # single value: the whole interval it names, as a range
    ("2024", "20240101000000.000000", "20241231235959.999999+0000"),
    ("20240315083015.123456", "20240315083015.123456", "20240315083015.123456+0000"),
    ("20240315083015", "20240315083015.000000", "20240315083015.999999+0000"),
    # closed and open ranges
    ("20240101-20240131", "20240101000000.000000", "20240131235959.999999+0000"),
    ("202401011200-202401011300", "20240101120000.000000", "20240101130059.999999+0000"),
    ("20240101-", "20240101000000.000000", ""),
    ("-20240131", "", "20240131235959.999999+0000"),
    ("2023-2024", "20230101000000.000000", "20241231235959.999999+0000"),
    # a hyphen and four digits ending a component of >= 8 digits: a negative offset
    ("20240101-0500", "20240101050000.000000", "20240102045959.999999+0000"),
    ("202401011200-0500", "20240101170000.000000", "20240101170059.999999+0000"),
    ("20240101120000.5-0500", "20240101170000.500000", "20240101170000.599999+0000"),
    ("20240101-0500-20240102-0500", "20240101050000.000000", "20240103045959.999999+0000"),
    ("20240101-0500-", "20240101050000.000000", ""),
    ("-20240101-0500", "", "20240102045959.999999+0000"),
    ("20240101+0100-20240102", "20231231230000.000000", "20240102235959.999999+0000"),
    ("20240101-20240102-0500", "20240101000000.000000", "20240103045959.999999+0000"),
    ("20240101120000+0100", "20240101110000.000000", "20240101110000.999999+0000"),
    # fewer than 8 digits before the hyphen: the range separator
    ("2024-0500", "20240101000000.000000", "05001231235959.999999+0000"),
    ("202401-202402", "20240101000000.000000", "20240229235959.999999+0000"),
])  # fmt: skip
def test_datetime_filters(raw: str, low: str, high: str) -> None:
    assert make_filter(ACQ_DT, raw) == Filter(ACQ_DT, Match.RANGE, (low, high))


def test_a_lower_bound_takes_in_both_stored_forms_and_an_upper_bound_too() -> None:
    """A value stored with an offset (``X+0000``) and one stored without (``X``) at the
    same written instant both fall within [X, X] and are cut by bounds around them."""
    f = make_filter(ACQ_DT, "20240101120000")
    assert f is not None
    low, high = f.values
    for stored in ("20240101120000.000000", "20240101120000.000000+0000",
                   "20240101120000.999999", "20240101120000.999999+0000"):  # fmt: skip
        assert low <= stored <= high
    for outside in ("20240101115959.999999+0000", "20240101120001.000000", "20240101120001.000000+0000"):
        assert not low <= outside <= high


@pytest.mark.parametrize(("raw", "expected"), [
    ('""', Filter(ACQ_DT, Match.EMPTY)),
    ("", None), ("*", None), ("  ", None),
    ("2024\x00", Filter(ACQ_DT, Match.RANGE, ("20240101000000.000000", "20241231235959.999999+0000"))),
    ("2024\x01", Filter(ACQ_DT, Match.NOTHING)),
])  # fmt: skip
def test_datetime_empty_universal_and_impossible_values(raw: str, expected: Filter | None) -> None:
    assert make_filter(ACQ_DT, raw) == expected


@pytest.mark.parametrize("raw", [
    "-", "abc", "2024AB", "20241301", "20240101-20241301", "20240101-2024-2025",
    "20240101-0500-0600", "20240101-1300", "20240101+1500", "2024*", "2024?", "2024\\2025",
])  # fmt: skip
def test_malformed_datetimes_are_refused(raw: str) -> None:
    with pytest.raises(InvalidQuery, match="AcquisitionDateTime"):
        make_filter(ACQ_DT, raw)


def test_cfind_identifier_with_a_datetime_key_at_image_level() -> None:
    ds = identifier("IMAGE", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4",
                    SOPInstanceUID="", AcquisitionDateTime="20240101-0500-")  # fmt: skip
    q = parse_identifier(ds, Model.STUDY_ROOT)
    assert q.filter_for(ACQ_DT) == Filter(ACQ_DT, Match.RANGE, ("20240101050000.000000", ""))
    assert ACQ_DT in q.return_tags
    # a lower level's key does not constrain a SERIES query (C.4.1.2.1): return key only
    ds = identifier("SERIES", StudyInstanceUID="1.2.3", AcquisitionDateTime="2024")
    assert parse_identifier(ds, Model.STUDY_ROOT).filter_for(ACQ_DT) is None
