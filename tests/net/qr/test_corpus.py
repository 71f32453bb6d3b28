"""The synthetic factory keeps the identifiers it is asked for (the corpus relies on it)."""

from __future__ import annotations

import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from coffre.dicom.synthetic import InstanceSpec, make_dataset


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_compressed_synthetic_instance_keeps_its_sop_instance_uid(syntax: str) -> None:
    """make_dataset() calls Dataset.compress(), whose generate_instance_uid defaults to True
    in pydicom 3: the instance silently gets a new SOP Instance UID."""
    spec = InstanceSpec(transfer_syntax=syntax)
    ds = make_dataset(spec)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.SOPInstanceUID == spec.sop_uid
    assert ds.file_meta.MediaStorageSOPInstanceUID == spec.sop_uid
