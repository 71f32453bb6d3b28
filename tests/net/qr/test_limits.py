"""The match cap (``limits.max_query_results``, 0xA700 after the cap) and C-CANCEL (0xFE00).

The capped server is a second ``coffre serve`` on the same data folder (and index) as
``qr``, started with ``COFFRE_LIMITS_MAX_QUERY_RESULTS=3``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import Archive
from .conftest import BULK, QR, start_server
from .qrtools import (
    CANCEL,
    OUT_OF_RESOURCES,
    PATIENT_ROOT_FIND,
    PENDING,
    SUCCESS,
    echo,
    find_association,
    find_on,
    findscu,
    raw_identifier,
)

pytestmark = pytest.mark.dcmtk

CAP = 3


@pytest.fixture(scope="module")
def capped(qr: QR) -> Iterator[Archive]:
    server = start_server(qr.data, COFFRE_LIMITS_MAX_QUERY_RESULTS=str(CAP))
    try:
        yield server
    finally:
        server.assert_healthy_exit(server.stop())


@pytest.mark.parametrize(("level", "keys", "total"), [
    ("IMAGE", ("StudyInstanceUID={ST6}", "SeriesInstanceUID={SE9}", "SOPInstanceUID"), BULK),
    ("STUDY", ("StudyInstanceUID",), 6),
    ("PATIENT", ("PatientID",), 5),
    ("STUDY", ("StudyDate=-20190315", "StudyInstanceUID"), 3),  # exactly the cap
    ("STUDY", ("PatientID=PA1", "StudyInstanceUID"), 2),
])
def test_match_cap(qr: QR, capped: Archive, tmp_path: Path, level: str, keys: tuple[str, ...],
                   total: int) -> None:
    names = {**qr.corpus.studies, **qr.corpus.series}
    model = "P" if level == "PATIENT" else "S"
    r = findscu(capped.host, capped.dicom_port, tmp_path / "rsp", level,
                *(k.format(**names) for k in keys), model=model)
    if total > CAP:
        assert r.statuses == [PENDING] * CAP + [OUT_OF_RESOURCES], r.log
    else:
        assert r.statuses == [PENDING] * total + [SUCCESS], r.log
    assert len(r.datasets) == min(total, CAP)
    assert r.pending == min(total, CAP)


def test_the_uncapped_server_returns_everything(qr: QR, tmp_path: Path) -> None:
    c = qr.corpus
    r = findscu(qr.host, qr.port, tmp_path / "rsp", "IMAGE", f"StudyInstanceUID={c.studies['ST6']}",
                f"SeriesInstanceUID={c.series['SE9']}", "SOPInstanceUID")
    assert r.statuses == [PENDING] * BULK + [SUCCESS]
    assert r.texts("SOPInstanceUID") == c.sop_uids("site-a", series_uid=c.series["SE9"])


def bulk_identifier(qr: QR) -> object:
    c = qr.corpus
    return raw_identifier(
        (0x00080052, "CS", b"IMAGE"),
        (0x00100020, "LO", b"BULK1"),
        (0x0020000D, "UI", c.studies["ST6"].encode()),
        (0x0020000E, "UI", c.series["SE9"].encode()),
        (0x00080018, "UI", b""),
    )


def test_c_cancel_stops_the_matches(qr: QR) -> None:
    with find_association(qr.port) as assoc:
        responses = find_on(assoc, bulk_identifier(qr), PATIENT_ROOT_FIND, msg_id=3, cancel_after=1)  # type: ignore[arg-type]
        statuses = [s for s, _ in responses]
        # The server sends pendings without waiting for the peer, so a C-CANCEL may land
        # after the last match (then Success with every match); when it lands before,
        # the matches stop. The handler's cancel logic itself is tested deterministically
        # in tests/net/test_handlers.py.
        assert statuses[-1] in (CANCEL, SUCCESS), [hex(s) for s in statuses]
        assert set(statuses[:-1]) == {PENDING}
        if statuses[-1] == CANCEL:
            assert 1 <= statuses.count(PENDING) < BULK
        else:
            assert statuses.count(PENDING) == BULK
        # the association is still usable after the cancel
        again = find_on(assoc, bulk_identifier(qr), PATIENT_ROOT_FIND, msg_id=4)  # type: ignore[arg-type]
        assert [s for s, _ in again] == [PENDING] * BULK + [SUCCESS]
    assert echo(qr.port) == SUCCESS
    qr.assert_no_traceback()
