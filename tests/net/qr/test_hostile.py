"""Hostile C-FIND values (DESIGN 4.5: untrusted input never becomes a SQL fragment).

Each value is sent on several keys of different VRs. The archive must answer either
no match (Success, no Pending) or a failure status; never a match (in particular never
one of another facility), never crash, keep serving (a C-ECHO afterwards succeeds),
and write no traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from .conftest import QR
from .qrtools import (
    IDENTIFIER_DOES_NOT_MATCH,
    PATIENT_ROOT_FIND,
    PENDING,
    SUCCESS,
    UNABLE_TO_PROCESS,
    Responses,
    echo,
    find_association,
    find_on,
    findscu,
    pyfind,
    raw_identifier,
)

pytestmark = pytest.mark.dcmtk

ALLOWED_FINAL = {SUCCESS, IDENTIFIER_DOES_NOT_MATCH, UNABLE_TO_PROCESS}

HOSTILE: dict[str, bytes] = {
    "10000-chars": b"A" * 10_000,
    "10000-wildcards": b"*" + b"A" * 9_998 + b"*",
    "or-1-eq-1": b"' OR 1=1 --",
    "or-quoted": b"%' OR '1'='1",
    "percent": b"%",
    "underscore": b"_",
    "like-prefix": b"PA%",
    "like-char": b"PA_",
    "glob-class": b"[P]A1",
    "glob-class-star": b"[MP]*",
    "drop-table": b"x'; DROP TABLE instance; --",
    "nul-inside": b"PA\x001",
    "nul-wildcard": b"M\x00*",
    "invalid-utf8": b"\xff\xfe*",
    "escape-char": b"PA!1",
    "backslash-flood": b"PA1\\" * 5_000 + b"PA1",
    "control-chars": b"PA1\x07\x08\x1b[2J",
}

#: keys of several VRs (tag, VR) the hostile values are sent on
KEYS = {
    "PatientName": (0x00100010, "PN"),
    "PatientID": (0x00100020, "LO"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "AccessionNumber": (0x00080050, "SH"),
    "StudyDate": (0x00080020, "DA"),
    "ModalitiesInStudy": (0x00080061, "CS"),
}


def check(qr: QR, what: str, responses: Responses, failures: list[str]) -> None:
    statuses = [s for s, _ in responses]
    if PENDING in statuses:
        failures.append(f"{what}: matched {statuses.count(PENDING)} records")
    elif len(statuses) != 1 or statuses[0] not in ALLOWED_FINAL:
        failures.append(f"{what}: statuses {[hex(s) for s in statuses]}")


def assert_alive(qr: QR) -> None:
    assert echo(qr.port) == SUCCESS
    qr.assert_no_traceback()


def study_identifier(tag: int, vr: str, value: bytes) -> Dataset:
    elements = [
        (0x00080005, "CS", b"ISO_IR 192"),
        (0x00080052, "CS", b"STUDY"),
        (0x0020000D, "UI", b""),
        (0x00100020, "LO", b""),
    ]
    return raw_identifier(*[e for e in elements if e[0] != tag], (tag, vr, value))


@pytest.mark.parametrize("key", list(KEYS))
def test_hostile_values_at_study_level(qr: QR, key: str) -> None:
    """Every hostile value on one key, over one association: no match or a failure."""
    tag, vr = KEYS[key]
    failures: list[str] = []
    with find_association(qr.port) as assoc:
        for n, (name, value) in enumerate(HOSTILE.items(), start=1):
            check(qr, name, find_on(assoc, study_identifier(tag, vr, value), msg_id=n), failures)
    assert failures == []
    assert_alive(qr)


@pytest.mark.parametrize("key", list(KEYS))
def test_value_of_nul_padding_only_is_universal_within_the_facility(qr: QR, key: str) -> None:
    """NUL bytes are padding: a value made only of them is empty (universal matching);
    the matches are then exactly the caller's own studies, never another facility's."""
    tag, vr = KEYS[key]
    responses = pyfind(qr.port, study_identifier(tag, vr, b"\x00\x00"))
    assert [s for s, _ in responses] == [PENDING] * 6 + [SUCCESS]
    assert {str(ds.StudyInstanceUID) for _, ds in responses[:-1]} == qr.corpus.study_uids("site-a")  # type: ignore[union-attr]
    assert_alive(qr)


def test_hostile_unique_key_above_the_level(qr: QR) -> None:
    """Patient Root SERIES level: the hostile PatientID is the required single value."""
    c = qr.corpus
    failures: list[str] = []
    with find_association(qr.port) as assoc:
        for n, (name, value) in enumerate(HOSTILE.items(), start=1):
            ident = raw_identifier(
                (0x00080005, "CS", b"ISO_IR 192"),
                (0x00080052, "CS", b"SERIES"),
                (0x00100020, "LO", value),
                (0x0020000D, "UI", c.studies["ST1"].encode()),
                (0x0020000E, "UI", b""),
            )
            check(qr, name, find_on(assoc, ident, PATIENT_ROOT_FIND, msg_id=n), failures)
    assert failures == []
    assert_alive(qr)


def test_hostile_query_retrieve_level(qr: QR) -> None:
    failures: list[str] = []
    with find_association(qr.port) as assoc:
        for n, level in enumerate((b"STUDY' OR 1=1", b"\x00\x00", b"X" * 10_000, b"IMAGE\\STUDY", b""), 1):
            ident = raw_identifier((0x00080052, "CS", level), (0x0020000D, "UI", b""))
            responses = find_on(assoc, ident, msg_id=n)
            check(qr, repr(level[:20]), responses, failures)
            if [s for s, _ in responses] != [IDENTIFIER_DOES_NOT_MATCH]:
                failures.append(f"{level[:20]!r}: {[hex(s) for s, _ in responses]} is not 0xA900")
    assert failures == []
    assert_alive(qr)


def test_positive_control_of_the_raw_path(qr: QR) -> None:
    """The same raw encoding with a legitimate value matches: the hostile cases are meaningful."""
    ident = raw_identifier((0x00080005, "CS", b"ISO_IR 192"), (0x00080052, "CS", b"STUDY"),
                           (0x00100010, "PN", "MÜLLER^Jürgen".encode()),
                           (0x00100020, "LO", b""), (0x0020000D, "UI", b""))
    responses = pyfind(qr.port, ident)
    assert [s for s, _ in responses] == [PENDING, PENDING, SUCCESS]
    assert {str(ds.StudyInstanceUID) for _, ds in responses[:2]} == {  # type: ignore[union-attr]
        qr.corpus.studies["ST1"], qr.corpus.studies["ST2"]}


FINDSCU_VALUES = ["A" * 10_000, "' OR 1=1 --", "%", "_", "[P]A1", "MÜL%"]


@pytest.mark.parametrize("key", ["PatientName", "PatientID", "StudyInstanceUID"])
def test_hostile_values_with_findscu(qr: QR, tmp_path: Path, key: str) -> None:
    failures: list[str] = []
    other = "PatientID" if key == "StudyInstanceUID" else "StudyInstanceUID"
    for value in FINDSCU_VALUES:
        r = findscu(qr.host, qr.port, tmp_path / "rsp", "STUDY", f"{key}={value}", other)
        if r.pending or r.statuses[-1] not in ALLOWED_FINAL:
            failures.append(f"{value[:20]!r}: {[hex(s) for s in r.statuses]}")
    assert failures == []
    assert_alive(qr)
