"""PS3.5 9.1 UID rules."""

from __future__ import annotations

import pytest

from coffre.dicom.uid import check_uid, is_valid_uid
from coffre.errors import InvalidUID

VALID = [
    "0",
    "1",
    "1.2",
    "1.2.840.10008.5.1.4.1.1.2",
    "2.25.329800735698586629295641978511506172918",
    "1.0.2",
    "1.2.0",
    "0.0",
    "9" * 64,
    "1." + "2" * 62,
]

INVALID = [
    ("", "empty"),
    ("1..2", "empty component"),
    (".1.2", "leading dot"),
    ("1.2.", "trailing dot"),
    ("1.02", "leading zero"),
    ("01.2", "leading zero first component"),
    ("00", "double zero"),
    ("1.2.a", "letter"),
    ("1.2 ", "trailing space"),
    (" 1.2", "leading space"),
    ("1.2\0", "trailing NUL left after the reader"),
    ("1.2\n", "trailing newline"),
    ("1,2", "comma"),
    ("-1.2", "sign"),
    ("1.2\\1.3", "multi-valued"),
    ("../../etc/passwd", "path"),
    ("1.2/3", "slash"),
    ("9" * 65, "too long"),
    ("1." + "2" * 63, "65 characters"),
    ("\u0661.\u0662", "non-ASCII digits"),
]


@pytest.mark.parametrize("value", VALID)
def test_valid_uids(value: str) -> None:
    assert is_valid_uid(value)
    assert check_uid(value, "StudyInstanceUID") == value


@pytest.mark.parametrize(("value", "why"), INVALID)
def test_invalid_uids(value: str, why: str) -> None:
    assert not is_valid_uid(value), why
    with pytest.raises(InvalidUID) as info:
        check_uid(value, "SeriesInstanceUID")
    message = str(info.value)
    assert "SeriesInstanceUID" in message
    if value.strip():
        assert value.strip() not in message, "the value must never be echoed"


@pytest.mark.parametrize("value", [None, 12, b"1.2", ["1.2"]])
def test_non_strings_are_invalid(value: object) -> None:
    assert not is_valid_uid(value)
    with pytest.raises(InvalidUID, match="SOPInstanceUID"):
        check_uid(value, "SOPInstanceUID")


def test_invalid_uid_is_reported_as_dimse_failure() -> None:
    with pytest.raises(InvalidUID) as info:
        check_uid("1.02", "SOPInstanceUID")
    assert info.value.http_status == 400
    assert 0xC000 <= info.value.dimse_status <= 0xCFFF
