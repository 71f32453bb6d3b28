"""C-GET (PS3.4 C.4.3) with DCMTK ``getscu`` and a pynetdicom SCU.

The instances come back on the requesting association (SCP/SCU role selection). When the
requestor accepted the stored syntax the dataset bytes are the stored ones; otherwise the
archive transcodes, and the decoded pixels must equal the original's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
)
from pynetdicom import AE, build_role, evt

from coffre.codecs import decode_frames

from ..dicomnet import dataset_part
from .conftest import QR, SC, Inst
from .qrtools import PENDING, STUDY_ROOT_GET, SUCCESS, ToolResult, echo, getscu

pytestmark = pytest.mark.dcmtk

CT = "1.2.840.10008.5.1.4.1.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"


def get(qr: QR, tmp_path: Path, level: str, *keys: str, model: str = "S",
        extra: tuple[str, ...] = ()) -> ToolResult:
    return getscu(qr.host, qr.port, tmp_path / "received", level, *keys, model=model, extra=extra)


def assert_complete(r: ToolResult, count: int) -> None:
    assert r.returncode == 0, r.log
    assert r.final.status == SUCCESS, r.log
    assert r.final.counts == {"remaining": 0, "completed": count, "failed": 0, "warning": 0}, r.log
    assert set(r.statuses[:-1]) <= {PENDING}, r.log


def received(r: ToolResult) -> dict[str, Path]:
    out = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in r.files}
    assert len(out) == len(r.files)
    return out


def assert_same_content(path: Path, inst: Inst) -> None:
    """Every element of the original is in the received object with the same value."""
    got, want = dcmread(path), dcmread(inst.path)
    for elem in want:
        if elem.tag == 0x7FE00010 and got.file_meta.TransferSyntaxUID != want.file_meta.TransferSyntaxUID:
            continue  # compared decoded, below
        assert elem.tag in got, elem
        assert got[elem.tag].value == elem.value, elem
    assert_same_pixels(path, inst)


def assert_same_pixels(path: Path, inst: Inst) -> None:
    want = decode_frames(inst.path.read_bytes())
    mine = dcmread(path).pixel_array
    assert np.array_equal(mine.reshape(want.shape), want), inst.sop_uid


def test_getscu_study_root_study_level(qr: QR, tmp_path: Path) -> None:
    c = qr.corpus
    r = get(qr, tmp_path, "STUDY", f"StudyInstanceUID={c.studies['ST1']}")
    expected = c.of("site-a", study_uid=c.studies["ST1"])
    assert_complete(r, len(expected))
    files = received(r)
    assert set(files) == {i.sop_uid for i in expected}
    for inst in expected:
        assert_same_content(files[inst.sop_uid], inst)


def test_getscu_patient_root(qr: QR, tmp_path: Path) -> None:
    c = qr.corpus
    r = get(qr, tmp_path, "PATIENT", "PatientID=PA2", model="P")
    expected = c.of("site-a", patient_id="PA2")
    assert_complete(r, 2)
    files = received(r)
    assert set(files) == {i.sop_uid for i in expected}
    for inst in expected:
        assert_same_content(files[inst.sop_uid], inst)


def test_getscu_series_level_study_root(qr: QR, tmp_path: Path) -> None:
    c = qr.corpus
    r = get(qr, tmp_path, "SERIES", f"StudyInstanceUID={c.studies['ST2']}",
            f"SeriesInstanceUID={c.series['SE3']}")
    assert_complete(r, 1)
    assert set(received(r)) == c.sop_uids("site-a", series_uid=c.series["SE3"])


def test_getscu_explicit_only_transcodes_j2k(qr: QR, tmp_path: Path) -> None:
    """getscu 3.6.7 ``+xi`` proposes a single syntax for storage, Explicit VR Little Endian
    (seen in its ``+v`` log, whatever the help says): the J2K study is decoded."""
    c = qr.corpus
    r = get(qr, tmp_path, "STUDY", f"StudyInstanceUID={c.studies['ST4']}", extra=("+xi",))
    expected = c.of("site-a", study_uid=c.studies["ST4"])
    assert_complete(r, 2)
    files = received(r)
    assert set(files) == {i.sop_uid for i in expected}
    for inst in expected:
        assert dcmread(files[inst.sop_uid]).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert_same_content(files[inst.sop_uid], inst)


def test_getscu_preferring_explicit_gets_explicit_vr_little_endian(qr: QR, tmp_path: Path) -> None:
    """``+xe`` proposes Explicit VR LE first (then big endian, implicit): the conformance
    statement promises transcoding "to Explicit, then Implicit VR Little Endian"."""
    c = qr.corpus
    r = get(qr, tmp_path, "STUDY", f"StudyInstanceUID={c.studies['ST4']}", extra=("+xe",))
    assert_complete(r, 2)
    for inst in c.of("site-a", study_uid=c.studies["ST4"]):
        path = received(r)[inst.sop_uid]
        assert dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert_same_pixels(path, inst)


def test_getscu_proposing_the_stored_syntax_gets_the_stored_bytes(qr: QR, tmp_path: Path) -> None:
    """``+xv`` proposes JPEG 2000 lossless first: DESIGN rule 7 and the conformance
    statement ("the stored syntax ... when the peer accepts it") → bytes as stored."""
    c = qr.corpus
    r = get(qr, tmp_path, "STUDY", f"StudyInstanceUID={c.studies['ST4']}", extra=("+xv",))
    assert_complete(r, 2)
    files = received(r)
    for inst in c.of("site-a", study_uid=c.studies["ST4"]):
        assert dcmread(files[inst.sop_uid]).file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert dataset_part(files[inst.sop_uid]) == dataset_part(inst.path)


# -- pynetdicom C-GET SCU ------------------------------------------------------------


def pyget(qr: QR, identifier: Dataset, storage: list[tuple[str, list[str]]],
          model: str = STUDY_ROOT_GET) -> tuple[list[Dataset], dict[str, tuple[str, bytes]]]:
    """(C-GET responses, SOP Instance UID -> (transfer syntax, raw dataset bytes))."""
    got: dict[str, tuple[str, bytes]] = {}

    def on_store(event: Any) -> int:
        raw = event.request.DataSet.getvalue()
        got[str(event.request.AffectedSOPInstanceUID)] = (str(event.context.transfer_syntax), raw)
        return 0x0000

    ae = AE(ae_title="PACS_A")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(model, [ExplicitVRLittleEndian])
    roles = []
    for sop_class, syntaxes in storage:
        for ts in syntaxes:  # one context per syntax: the archive accepts each
            ae.add_requested_context(sop_class, [ts])
        roles.append(build_role(sop_class, scp_role=True))
    responses: list[Dataset] = []
    assoc = ae.associate(qr.host, qr.port, ae_title="COFFRE", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        assert assoc.is_established
        for status, _ in assoc.send_c_get(identifier, model, msg_id=9):
            assert status is not None and "Status" in status
            responses.append(status)
        assoc.release()
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()
    return responses, got


def study(uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    return ds


def test_pynetdicom_get_in_the_stored_syntax(qr: QR) -> None:
    c = qr.corpus
    expected = c.of("site-a", study_uid=c.studies["ST4"])
    responses, got = pyget(qr, study(c.studies["ST4"]), [(CT, [JPEG2000Lossless, ExplicitVRLittleEndian])])
    assert int(responses[-1].Status) == SUCCESS
    assert int(responses[-1].NumberOfCompletedSuboperations) == 2
    assert set(got) == {i.sop_uid for i in expected}
    for inst in expected:
        ts, raw = got[inst.sop_uid]
        assert ts == JPEG2000Lossless
        assert raw == dataset_part(inst.path)


def test_pynetdicom_get_transcodes_jpeg_lossless(qr: QR, tmp_path: Path) -> None:
    c = qr.corpus
    (inst,) = c.of("site-a", study_uid=c.studies["ST5"])
    assert inst.transfer_syntax == JPEGLosslessSV1
    responses, got = pyget(qr, study(c.studies["ST5"]), [(SC, [ExplicitVRLittleEndian])])
    assert int(responses[-1].Status) == SUCCESS
    assert int(responses[-1].NumberOfCompletedSuboperations) == 1
    ts, raw = got[inst.sop_uid]
    assert ts == ExplicitVRLittleEndian
    from io import BytesIO

    from pydicom.filereader import read_dataset

    ds = read_dataset(BytesIO(raw), is_implicit_VR=False, is_little_endian=True)
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    want = decode_frames(inst.path.read_bytes())
    assert np.array_equal(ds.pixel_array.reshape(want.shape), want)
    assert str(ds.PatientName) == "NGUYEN^Thi"


def test_pynetdicom_get_of_another_facility_series_sends_nothing(qr: QR) -> None:
    c = qr.corpus
    ident = study(c.studies["ST1"])
    ident.QueryRetrieveLevel = "SERIES"
    ident.SeriesInstanceUID = c.series["SEB1"]
    responses, got = pyget(qr, ident, [(CT, [ExplicitVRLittleEndian])])
    assert got == {}
    assert int(responses[-1].Status) == SUCCESS
    assert int(responses[-1].get("NumberOfCompletedSuboperations", 0)) == 0
    assert echo(qr.port) == SUCCESS
    qr.assert_no_traceback()
