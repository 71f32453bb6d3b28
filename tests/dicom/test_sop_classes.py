"""Storage SOP Classes (PS3.4 B.5)."""

from __future__ import annotations

import pytest
from pydicom.uid import UID_dictionary

from coffre.dicom.sop_classes import STORAGE_SOP_CLASSES, is_storage_sop_class


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.1",  # CR
        "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
        "1.2.840.10008.5.1.4.1.1.1.2",  # MG for presentation
        "1.2.840.10008.5.1.4.1.1.6.1",  # US
        "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
        "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
        "1.2.840.10008.5.1.4.1.1.6",  # retired US Image Storage: still accepted
    ],
)
def test_known_storage_classes(uid: str) -> None:
    assert is_storage_sop_class(uid)
    assert "Storage" in STORAGE_SOP_CLASSES[uid]


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.1.20.1",  # Storage Commitment Push Model
        "1.2.840.10008.1.1",  # Verification
        "1.2.840.10008.1.3.10",  # Media Storage Directory Storage (DICOMDIR)
        "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root Q/R FIND
        "1.2.840.10008.1.2.1",  # a transfer syntax
        "1.2.3.4",
        "",
    ],
)
def test_non_storage_classes(uid: str) -> None:
    assert not is_storage_sop_class(uid)


def test_table_is_complete_against_pydicom() -> None:
    expected = {
        uid
        for uid, entry in UID_dictionary.items()
        if entry[1] == "SOP Class"
        and "Storage" in entry[0]
        and "Storage Commitment" not in entry[0]
        and entry[0] != "Media Storage Directory Storage"
    }
    assert set(STORAGE_SOP_CLASSES) == expected
    assert len(STORAGE_SOP_CLASSES) > 150
