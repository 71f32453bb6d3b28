"""C-STORE of an object holding a UN element of undefined length (PS3.5 6.2.2, 7.5.1).

An element whose VR the sender did not know, and that was a sequence of undefined
length, travels as UN with undefined length: its value is a sequence encoded in Implicit
VR Little Endian (items, Item and Sequence Delimitation Items). The archive must take it,
keep the bytes as sent (DESIGN rule 7) and give them back as they were; a truncated one
(no Sequence Delimitation Item) is refused and leaves nothing behind.

The objects are sent by a pynetdicom SCU as encoded bytes: DCMTK's ``storescu`` decodes
the file and re-encodes that element as SQ in explicit VR, so it never sends a UN.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt

from coffre.dicom.synthetic import InstanceSpec
from dicom import un_sequences

from . import dicomnet as net
from .conftest import Archive

STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"


def instance_with_un(patient_id: str, *, truncated: bool = False) -> tuple[bytes, str]:
    """A CT object with (0099,0010) private creator and (0099,1010) UN of undefined
    length before its Pixel Data (group 0099 sorts after the synthetic header).

    ``truncated``: the object ends after the UN's last item, without its Sequence
    Delimitation Item (and without Pixel Data).
    """
    ds, pixels = net._base(InstanceSpec(patient_id=patient_id))
    uid = str(ds.SOPInstanceUID)
    un = struct.pack("<HH2s2xI", 0x0099, 0x1010, b"UN", 0xFFFFFFFF)
    body = (
        net.encode_body(ds)
        + net.element(0x00990010, "LO", b"ACME 1")
        + un
        + un_sequences.un_value(terminated=not truncated)
    )
    if not truncated:
        body += net.element(net.PIXEL_DATA, "OW", pixels)
    return net.part10(net.CT_IMAGE, uid, body), uid


def c_get(archive: Archive, study_uid: str) -> list[bytes]:
    """C-GET a study as PACS_A in Explicit VR Little Endian; the data sets as received."""
    got: list[bytes] = []

    def on_store(event: Any) -> int:
        got.append(event.request.DataSet.getvalue())
        return 0x0000

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    ae = AE(ae_title="PACS_A")
    ae.add_requested_context(STUDY_ROOT_GET)
    ae.add_requested_context(net.CT_IMAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate(
        "127.0.0.1", archive.dicom_port, ae_title=archive.ae_title,
        ext_neg=[build_role(net.CT_IMAGE, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    try:
        assert assoc.is_established
        statuses = [
            int(s.Status) for s, _ in assoc.send_c_get(identifier, STUDY_ROOT_GET) if "Status" in s
        ]
        assert statuses[-1] == 0x0000, statuses
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return got


def test_un_of_undefined_length_is_archived_byte_for_byte(archive: Archive, tmp_path: Path) -> None:
    data, uid = instance_with_un("UNSEQ")
    path = tmp_path / "un.dcm"
    path.write_bytes(data)

    rsp = net.send_raw(archive.dicom_port, path)

    assert net.status_of(rsp) == 0x0000, rsp
    blob = archive.assert_intact(uid)
    assert net.dataset_part(blob) == net.dataset_part(path)
    row = archive.instance(uid)
    assert row is not None and row["slug"] == "site-a"
    kept = dcmread(blob)
    assert kept.PatientID == "UNSEQ"
    assert [item.CodeValue for item in kept[un_sequences.UN_TAG].value] == ["CODE01", "CODE02"]
    # and it comes back as it was sent
    assert c_get(archive, str(kept.StudyInstanceUID)) == [net.dataset_part(path)]


def test_un_without_sequence_delimiter_is_refused(archive: Archive, tmp_path: Path) -> None:
    data, uid = instance_with_un("UNTRUNC", truncated=True)
    path = tmp_path / "un-truncated.dcm"
    path.write_bytes(data)
    before = archive.snapshot()

    rsp = net.send_raw(archive.dicom_port, path)

    assert net.status_of(rsp) == 0xC000, rsp
    assert "(0099,1010) is not terminated (truncated)" in str(rsp.ErrorComment)
    assert archive.snapshot() == before
    assert archive.instance(uid) is None
