"""C-FIND with DCMTK ``findscu`` at IMAGE level on AcquisitionDateTime (DT, PS3.4
C.2.2.2.5): single value, closed and open ranges, values with offsets from UTC, empty
value matching, a malformed value; on SQLite and PostgreSQL.

Its own archive (``dt_qr``), not the folder's shared ``qr`` one: the instances below
would change the counts the other tests of the folder assert. Stored with ``storescu``:

site-a, one study and series (``InstanceNumber``: AcquisitionDateTime as sent)

- 1: ``20240101120000`` (no offset: compared as written);
- 2: ``20240101120000+0100`` and 3: ``20240101060000-0500`` (both 11:00 UTC);
- 4: ``20240102083000.25``; 5: ``20231231235959``; 6: none;

site-b, the same study and series UIDs, one instance ``20240101120000`` (never seen).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from coffre.dicom.synthetic import InstanceSpec, encode, make_dataset

from ..conftest import Archive, prepare_territory
from .conftest import start_server, store_files, write_index_url
from .qrtools import IDENTIFIER_DOES_NOT_MATCH, PENDING, SUCCESS, ToolResult, findscu

pytestmark = pytest.mark.dcmtk

SITE_A: dict[int, str | None] = {
    1: "20240101120000",
    2: "20240101120000+0100",
    3: "20240101060000-0500",
    4: "20240102083000.25",
    5: "20231231235959",
    6: None,
}
SITE_B: dict[int, str | None] = {7: "20240101120000"}
_names = itertools.count(1)


@dataclass
class DtArchive:
    archive: Archive
    study: str
    series: str


def _write(folder: Path, values: dict[int, str | None], study: str, series: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number, acquired in values.items():
        ds = make_dataset(InstanceSpec(patient_id="DT1", patient_name="TEMPS^Date", study_uid=study,
                                       series_uid=series, instance_number=number, rows=8, columns=8))  # fmt: skip
        if acquired is not None:
            ds.AcquisitionDateTime = acquired
        (folder / f"{ds.SOPInstanceUID}.dcm").write_bytes(encode(ds))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def dt_qr(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DtArchive]:
    backend: str = request.param
    root = tmp_path_factory.mktemp(f"dt-{backend}")
    data = root / "data"
    pg, db_name = None, ""
    if backend == "postgresql":
        pg = request.getfixturevalue("pg_server")
        db_name = f"qr_dt_{next(_names)}_{int(time.time())}"
        write_index_url(data, pg.create_database(db_name))
    prepare_territory(data)
    study, series = generate_uid(), generate_uid()
    _write(root / "corpus" / "site-a", SITE_A, study, series)
    _write(root / "corpus" / "site-b", SITE_B, study, series)
    archive = start_server(data)
    try:
        store_files(archive, root / "corpus" / "site-a", "MODALITY_A", len(SITE_A))
        store_files(archive, root / "corpus" / "site-b", "MODALITY_B", len(SITE_B))
        yield DtArchive(archive, study, series)
    finally:
        archive.assert_healthy_exit(archive.stop())
        if pg is not None:
            pg.drop_database(db_name)


def find(dt: DtArchive, tmp_path: Path, value: str, model: str = "S") -> ToolResult:
    keys = [f"StudyInstanceUID={dt.study}", f"SeriesInstanceUID={dt.series}", "SOPInstanceUID",
            "InstanceNumber", f"AcquisitionDateTime={value}"]
    if model == "P":
        keys.insert(0, "PatientID=DT1")
    return findscu(dt.archive.host, dt.archive.dicom_port, tmp_path / "rsp", "IMAGE", *keys, model=model)


def numbers(result: ToolResult) -> list[int]:
    assert result.returncode == 0, result.log
    assert result.statuses[-1] == SUCCESS, result.log
    assert set(result.statuses[:-1]) <= {PENDING}, result.log
    return sorted(int(n) for n in result.values("InstanceNumber"))


@pytest.mark.parametrize(("value", "expected"), [
    ("20240101", [1, 2, 3]),  # single value: the day it names
    ("2024", [1, 2, 3, 4]),
    ("20240101110000", [2, 3]),  # both offset-bearing values are 11:00 UTC
    ("20240101120000", [1]),
    ("20240102083000.25", [4]),
    ("20240101120000+0100", [2, 3]),  # an instant asked with an offset
    ("20240101070000-0500", [1]),  # 12:00 UTC: a negative offset, not a range
    ("20240101-20240102", [1, 2, 3, 4]),  # closed range
    ("20240101113000-20240102083000", [1, 4]),  # 08:30:00.25 is within 08:30:00
    ("20231231-20240101113000", [2, 3, 5]),
    ("-20240101", [1, 2, 3, 5]),  # open ranges: 6 has no value
    ("20240101113000-", [1, 4]),
    ("20240101120000-0500-", [4]),  # from 17:00 UTC: an offset, then the range separator
    ("20240101-0500-20240101-0500", [1, 2, 3]),  # one day in UTC-5 (to 04:59:59.999999 UTC)
    ('""', [6]),  # empty value matching
    ("", [1, 2, 3, 4, 5, 6]),  # universal matching
])  # fmt: skip
def test_findscu_acquisition_datetime(dt_qr: DtArchive, tmp_path: Path, value: str,
                                      expected: list[int]) -> None:  # fmt: skip
    assert numbers(find(dt_qr, tmp_path, value)) == expected


def test_datetimes_are_returned_as_dt_in_utc_when_sent_with_an_offset(dt_qr: DtArchive, tmp_path: Path) -> None:
    result = find(dt_qr, tmp_path, "2024")
    got = {int(ds.InstanceNumber): str(ds.AcquisitionDateTime) for ds in result.datasets}
    assert got == {1: "20240101120000", 2: "20240101110000+0000", 3: "20240101110000+0000",
                   4: "20240102083000.25"}  # fmt: skip
    assert numbers(find(dt_qr, tmp_path, "20240101110000+0000", model="P")) == [2, 3]


def test_malformed_datetime_is_refused(dt_qr: DtArchive, tmp_path: Path) -> None:
    result = find(dt_qr, tmp_path, "20241301-")
    assert result.statuses == [IDENTIFIER_DOES_NOT_MATCH], result.log
    assert result.datasets == []
    assert "Traceback (most recent call last)" not in dt_qr.archive.stderr()
