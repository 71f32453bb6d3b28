"""Accepted transfer syntaxes and their encoding flags (PS3.5 10, Annex A)."""

from __future__ import annotations

import pytest
from pydicom.uid import UID

from coffre.dicom import transfer_syntaxes as ts
from coffre.errors import UnsupportedTransferSyntax

# uid: (encapsulated, deflated, little endian, implicit)
EXPECTED = {
    "1.2.840.10008.1.2": (False, False, True, True),
    "1.2.840.10008.1.2.1": (False, False, True, False),
    "1.2.840.10008.1.2.2": (False, False, False, False),
    "1.2.840.10008.1.2.1.99": (False, True, True, False),
    "1.2.840.10008.1.2.4.50": (True, False, True, False),
    "1.2.840.10008.1.2.4.51": (True, False, True, False),
    "1.2.840.10008.1.2.4.57": (True, False, True, False),
    "1.2.840.10008.1.2.4.70": (True, False, True, False),
    "1.2.840.10008.1.2.4.80": (True, False, True, False),
    "1.2.840.10008.1.2.4.81": (True, False, True, False),
    "1.2.840.10008.1.2.4.90": (True, False, True, False),
    "1.2.840.10008.1.2.4.91": (True, False, True, False),
    "1.2.840.10008.1.2.4.201": (True, False, True, False),
    "1.2.840.10008.1.2.4.202": (True, False, True, False),
    "1.2.840.10008.1.2.4.203": (True, False, True, False),
    "1.2.840.10008.1.2.5": (True, False, True, False),
    "1.2.840.10008.1.2.4.100": (True, False, True, False),
    "1.2.840.10008.1.2.4.101": (True, False, True, False),
    "1.2.840.10008.1.2.4.102": (True, False, True, False),
    "1.2.840.10008.1.2.4.103": (True, False, True, False),
    "1.2.840.10008.1.2.4.104": (True, False, True, False),
    "1.2.840.10008.1.2.4.105": (True, False, True, False),
    "1.2.840.10008.1.2.4.106": (True, False, True, False),
    "1.2.840.10008.1.2.4.107": (True, False, True, False),
    "1.2.840.10008.1.2.4.108": (True, False, True, False),
}
VIDEO = {f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)}


def test_accepted_set_is_exactly_the_expected_one() -> None:
    uids = [t.uid for t in ts.ACCEPTED_TRANSFER_SYNTAXES]
    assert len(uids) == len(set(uids))
    assert set(uids) == set(EXPECTED)
    assert all(t.name for t in ts.ACCEPTED_TRANSFER_SYNTAXES)


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_classification(uid: str) -> None:
    encapsulated, deflated, little, implicit = EXPECTED[uid]
    assert ts.is_encapsulated(uid) is encapsulated
    assert ts.is_deflated(uid) is deflated
    assert ts.is_little_endian(uid) is little
    assert ts.is_implicit(uid) is implicit
    assert ts.is_video(uid) is (uid in VIDEO)
    assert ts.is_accepted(uid)


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_classification_agrees_with_pydicom(uid: str) -> None:
    ref = UID(uid)
    if not ref.is_transfer_syntax:  # pragma: no cover - pydicom knows them all
        pytest.fail(f"pydicom does not know {uid}")
    assert ts.is_encapsulated(uid) is ref.is_compressed
    assert ts.is_deflated(uid) is ref.is_deflated
    assert ts.is_little_endian(uid) is ref.is_little_endian
    assert ts.is_implicit(uid) is ref.is_implicit_VR


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2, not accepted
        "1.2.840.10008.1.2.4.94",  # JPIP referenced
        "1.2.840.10008.1.2.6.1",  # RFC 2557 MIME
        "1.2.3",
        "",
        "../etc",
    ],
)
def test_unaccepted_syntaxes_raise(uid: str) -> None:
    assert not ts.is_accepted(uid)
    with pytest.raises(UnsupportedTransferSyntax):
        ts.is_encapsulated(uid)
