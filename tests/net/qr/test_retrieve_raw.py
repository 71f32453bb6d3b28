"""C-MOVE / C-GET sub-operations send the archived bytes (DESIGN rule 7, PS3.4 C.4.2, C.4.3).

``net.retrieve.raw_dataset`` turns the archived Part 10 bytes into a Dataset of undecoded
elements that pydicom (inside pynetdicom's ``send_c_store``) writes back byte for byte;
bytes it does not handle go to ``dcmread`` as before. The end-to-end tests store a
structure-rich object (undefined-length sequences and items, a private UN element of
undefined length, a non-ASCII character set) into a fresh archive and retrieve it:

- in the stored syntax, what the peer receives after the meta header is the archived
  data set, byte for byte (C-MOVE into DCMTK ``storescp +B``, C-GET into a pynetdicom SCU);
- when the peer accepts only Implicit VR Little Endian, the archive transcodes;
- an instance sent into another identifier domain is coerced (``payload`` with a
  ``Coercion``) and otherwise unchanged.
"""

from __future__ import annotations

import struct
import threading
import time
import warnings
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.dsutils import encode as pynetdicom_encode

from coffre.dicom.coercion import Coercion
from coffre.dicom.synthetic import InstanceSpec, make_dataset
from coffre.dicom.synthetic import encode as part10
from coffre.index.retrieve import InstanceRef
from coffre.net import retrieve
from coffre.net.retrieve import payload, raw_dataset
from coffre.settings import LimitsSettings

from ..conftest import COMPRESSED, Archive
from ..dicomnet import dataset_part, send_raw, status_of
from .conftest import free_port
from .qrtools import storescp

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"


# -- objects -------------------------------------------------------------------------


def _rich_dataset() -> Dataset:
    """A CT with what a plain walk could get wrong: undefined-length sequences and items,
    a nested sequence, private elements, a non-ASCII name (ISO_IR 192)."""
    ds = make_dataset(InstanceSpec(patient_id="RAW1", patient_name="MÜLLER^Jürgen", rows=16, columns=16))
    inner = Dataset()
    inner.CodeValue = "113691"
    inner.CodingSchemeDesignator = "DCM"
    inner.CodeMeaning = "IHE Radiation Dose"
    inner.is_undefined_length_sequence_item = True
    item = Dataset()
    item.ReferencedSOPClassUID = CT
    item.ReferencedSOPInstanceUID = generate_uid()
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    item["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.add_new(0x00090010, "LO", "COFFRE TEST")
    ds.add_new(0x00091001, "LO", "private text")
    ds.add_new(0x00091002, "OB", b"\x00\x01\x02\x03")
    return ds


def _un_undefined_length() -> bytes:
    """(7FE1,0010) private creator and (7FE1,1001) UN of undefined length, Explicit VR LE:
    after the pixel data, in tag order. Its value is Implicit VR LE (PS3.5 6.2.2)."""
    creator = b"COFFRE TEST "
    out = struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", len(creator)) + creator
    out += struct.pack("<HH2sHL", 0x7FE1, 0x1001, b"UN", 0, 0xFFFFFFFF)
    out += struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)  # item of undefined length
    out += struct.pack("<HHL", 0x0008, 0x0100, 4) + b"abcd"  # implicit VR inside
    out += struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    inner = struct.pack("<HHL", 0x0008, 0x0100, 2) + b"xy"
    out += struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner  # item of defined length
    out += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return out


def _rich(syntax: str = ExplicitVRLittleEndian, *, un: bool = False) -> bytes:
    ds = _rich_dataset()
    ds.file_meta.TransferSyntaxUID = syntax
    data = part10(ds)
    return data + _un_undefined_length() if un and syntax == ExplicitVRLittleEndian else data


def _after_meta(data: bytes) -> bytes:
    """The data set of Part 10 ``data``: the File Meta Information Group Length (PS3.10
    7.1) says where it starts."""
    assert data[128:132] == b"DICM"
    (meta_length,) = struct.unpack_from("<L", data, 132 + 8)
    return data[132 + 12 + meta_length:]


def _sent(ds: Dataset, syntax: str) -> bytes:
    """What pynetdicom's send_c_store puts on the wire for ``ds`` in ``syntax``."""
    uid = UID(syntax)
    ds.SOPClassUID, ds.SOPInstanceUID  # send_c_store reads them first (converting them)
    encoded = pynetdicom_encode(ds, uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated)
    assert encoded is not None
    return encoded


def _all_raw(ds: Dataset) -> bool:
    return all(isinstance(ds.get_item(tag), RawDataElement) for tag in ds.keys())


# -- raw_dataset, without a network ----------------------------------------------------


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_raw_dataset_encodes_back_to_the_archived_bytes(syntax: str) -> None:
    data = _rich(syntax, un=True)
    ds = raw_dataset(data, syntax)
    assert _all_raw(ds), "the walk fell back to dcmread"
    assert str(ds.file_meta.TransferSyntaxUID) == syntax
    assert ds.original_encoding == (syntax == ImplicitVRLittleEndian, True)
    assert _sent(ds, syntax) == _after_meta(data)


def test_raw_dataset_keeps_what_dcmread_does_not() -> None:
    """An undefined-length UN (PS3.5 6.2.2): pydicom 3.0's reader takes it for a sequence,
    reads its Implicit VR items as Explicit and fails (or, elsewhere, writes it back as
    SQ); the raw path sends the archived element."""
    data = _rich(un=True)
    raw = _sent(raw_dataset(data, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    assert raw == _after_meta(data)
    assert b"UN\x00\x00\xff\xff\xff\xff" in raw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            reread = _sent(dcmread(BytesIO(data)), ExplicitVRLittleEndian)
        except OSError:
            return
    assert reread != raw


@pytest.mark.parametrize("path", sorted(p for p, ts in COMPRESSED.items() if ts != DeflatedExplicitVRLittleEndian),
                         ids=lambda p: p.name)
def test_raw_dataset_of_encapsulated_pixel_data(path: Path) -> None:
    """Encapsulated syntaxes (PS3.5 A.4): the fragments are items of defined length."""
    assert path.exists(), f"{path.name} is missing: pydicom-data is a dev dependency"
    data = path.read_bytes()
    syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    ds = raw_dataset(data, syntax)
    assert _all_raw(ds)
    # pydicom drops group lengths (gggg,0000) of groups > 6 whichever way it read
    assert _sent(ds, syntax) == _sent(dcmread(BytesIO(data)), syntax)
    if b"\x08\x00\x00\x00UL" not in _after_meta(data)[:8]:
        assert _sent(raw_dataset(data, syntax), syntax) == _after_meta(data)


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_raw_dataset_leaves_big_endian_and_deflate_to_dcmread(syntax: str) -> None:
    ds = make_dataset(InstanceSpec(rows=8, columns=8))
    ds.file_meta.TransferSyntaxUID = syntax
    data = part10(ds)
    got = raw_dataset(data, syntax)
    assert _sent(got, syntax) == _sent(dcmread(BytesIO(data)), syntax)


def test_raw_dataset_falls_back_when_the_meta_names_another_syntax() -> None:
    data = _rich()
    got = raw_dataset(data, ImplicitVRLittleEndian)  # the index says otherwise: trust the file
    assert str(got.file_meta.TransferSyntaxUID) == ExplicitVRLittleEndian


@pytest.mark.parametrize("cut", [1, 7, 300])
def test_raw_dataset_of_truncated_bytes_behaves_like_dcmread(cut: int) -> None:
    data = _rich()[:-cut]

    def outcome(read: Callable[[], Dataset]) -> Any:
        try:
            ds = read()
            return _sent(ds, ExplicitVRLittleEndian)
        except Exception as exc:  # compare the failure, whatever it is
            return type(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom may warn about the truncated value
        assert outcome(lambda: raw_dataset(data, ExplicitVRLittleEndian)) == outcome(
            lambda: dcmread(BytesIO(data)))


def test_raw_dataset_leaves_what_the_bounded_walk_refuses_to_dcmread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk is ingest's (``part10.scan``) with the archive's limits: sequences nested
    deeper than ``max_sequence_depth`` are not cut out but read by ``dcmread``."""
    calls: list[int] = []
    real = retrieve._read

    def spy(data: bytes) -> Dataset:
        calls.append(1)
        return real(data)

    monkeypatch.setattr(retrieve, "_read", spy)
    raw_dataset(_rich(), ExplicitVRLittleEndian)
    assert calls == []
    raw_dataset(_rich(), ExplicitVRLittleEndian, LimitsSettings(max_sequence_depth=1))
    assert calls == [1]


# -- payload: raw, coerced, transcoded ----------------------------------------------------


class _Blobs:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, key: str) -> bytes:
        return self.data


def _ref(data: bytes, coercion: Coercion | None = None) -> InstanceRef:
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    return InstanceRef(id=1, facility_id=1, study_instance_uid=str(ds.StudyInstanceUID),
                       series_instance_uid=str(ds.SeriesInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                       sop_instance_uid=str(ds.SOPInstanceUID),
                       transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), blob_key="k",
                       size=len(data), patient_id=str(ds.PatientID), coercion=coercion)


def _ctx(data: bytes) -> Any:
    from coffre.settings import LimitsSettings

    return SimpleNamespace(blobs=_Blobs(data), settings=SimpleNamespace(limits=LimitsSettings()))


def test_payload_in_the_stored_syntax_is_the_raw_dataset() -> None:
    data = _rich()
    ref = _ref(data)
    ds = payload(_ctx(data), ref, {CT: {ExplicitVRLittleEndian}})
    assert _all_raw(ds)
    assert _sent(ds, ExplicitVRLittleEndian) == _after_meta(data)


def test_payload_coerces_into_the_callers_domain() -> None:
    data = _rich()
    coercion = Coercion(patient_id="B-7", issuer="SITE-B", original_id="RAW1", original_issuer="")
    ds = payload(_ctx(data), _ref(data, coercion), {CT: {ExplicitVRLittleEndian}})
    sent = dcmread(BytesIO(_sent(ds, ExplicitVRLittleEndian)), force=True)
    assert (sent.PatientID, sent.IssuerOfPatientID) == ("B-7", "SITE-B")
    assert sent.OtherPatientIDsSequence[0].PatientID == "RAW1"
    original = dcmread(BytesIO(data))
    assert sent.PatientName == original.PatientName == "MÜLLER^Jürgen"
    assert sent.PixelData == original.PixelData


def test_payload_transcodes_for_a_peer_without_the_stored_syntax() -> None:
    data = _rich()
    ds = payload(_ctx(data), _ref(data), {CT: {ImplicitVRLittleEndian}})
    assert str(ds.file_meta.TransferSyntaxUID) == ImplicitVRLittleEndian
    original = dcmread(BytesIO(data))
    assert ds.PatientName == original.PatientName
    assert ds.PixelData == original.PixelData


# -- the pynetdicom reactor helpers --------------------------------------------------------


def test_poll_faster_is_restored() -> None:
    assoc = SimpleNamespace(dul=SimpleNamespace(_run_loop_delay=0.001))
    previous = retrieve._poll_faster(assoc)
    assert previous == 0.001
    assert assoc.dul._run_loop_delay == retrieve._RETRIEVE_POLL
    retrieve._restore_poll(assoc, previous)
    assert assoc.dul._run_loop_delay == 0.001
    assert retrieve._poll_faster(SimpleNamespace()) is None  # not a pynetdicom association: untouched
    waiting = SimpleNamespace(dul=SimpleNamespace(_run_loop_delay=0))  # a DUL woken by events
    assert retrieve._poll_faster(waiting) is None
    assert waiting.dul._run_loop_delay == 0


def test_settle_reactor_waits_for_the_reactor_to_wake_and_no_longer() -> None:
    assoc = SimpleNamespace(_is_paused=True, is_established=True)

    def wake() -> None:
        time.sleep(0.001)
        assoc._is_paused = False

    threading.Thread(target=wake).start()
    started = time.monotonic()
    retrieve._settle_reactor(assoc)
    assert assoc._is_paused is False
    assert time.monotonic() - started < 1.0
    stuck = SimpleNamespace(_is_paused=True, is_established=True)
    started = time.monotonic()
    retrieve._settle_reactor(stuck)  # a reactor that never wakes costs the timeout, then pynetdicom's own wait
    assert time.monotonic() - started < retrieve._SETTLE_TIMEOUT + 0.5


# -- end to end ---------------------------------------------------------------------------


@pytest.fixture
def rich_archive(start_archive: Callable[..., Archive], tmp_path: Path) -> tuple[Archive, Path]:
    archive = start_archive()
    path = tmp_path / "rich.dcm"
    path.write_bytes(_rich())
    assert status_of(send_raw(archive.dicom_port, path)) == 0x0000
    return archive, path


def _identifier(path: Path) -> Dataset:
    ds = dcmread(path, stop_before_pixels=True)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ds.StudyInstanceUID
    return identifier


@pytest.mark.dcmtk
def test_move_sends_the_archived_bytes(rich_archive: tuple[Archive, Path], tmp_path: Path) -> None:
    archive, path = rich_archive
    port = free_port()
    archive.cli("node", "add", "DEST_RAW", "--facility", "site-a", "--host", "127.0.0.1", "--port", str(port),
                "--allow", "move-destination")
    ae = AE(ae_title="PACS_A")
    ae.add_requested_context(STUDY_ROOT_MOVE)
    with storescp("DEST_RAW", port, tmp_path / "received") as scp:
        assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title=archive.ae_title)
        assert assoc.is_established
        statuses = [int(s.Status) for s, _ in assoc.send_c_move(_identifier(path), "DEST_RAW", STUDY_ROOT_MOVE)
                    if "Status" in s]
        assoc.release()
        assert statuses[-1] == 0x0000, statuses
        files = scp.files()
    assert len(files) == 1
    assert dataset_part(files[0]) == dataset_part(path)


def _get(archive: Archive, path: Path, syntax: str) -> list[tuple[str, bytes]]:
    """C-GET the study as PACS_A with a pynetdicom SCU that accepts ``syntax`` for CT;
    (transfer syntax, dataset bytes as received) per C-STORE."""
    got: list[tuple[str, bytes]] = []

    def on_store(event: Any) -> int:
        got.append((str(event.context.transfer_syntax), event.request.DataSet.getvalue()))
        return 0x0000

    ae = AE(ae_title="PACS_A")
    ae.add_requested_context(STUDY_ROOT_GET)
    ae.add_requested_context(CT, [syntax])
    assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title=archive.ae_title,
                         ext_neg=[build_role(CT, scp_role=True)], evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    statuses = [int(s.Status) for s, _ in assoc.send_c_get(_identifier(path), STUDY_ROOT_GET) if "Status" in s]
    assoc.release()
    assert statuses[-1] == 0x0000, statuses
    return got


def test_get_sends_the_archived_bytes(rich_archive: tuple[Archive, Path]) -> None:
    archive, path = rich_archive
    [(syntax, received)] = _get(archive, path, ExplicitVRLittleEndian)
    assert syntax == ExplicitVRLittleEndian
    assert received == dataset_part(path)


def test_get_transcodes_for_an_implicit_only_peer(rich_archive: tuple[Archive, Path]) -> None:
    archive, path = rich_archive
    [(syntax, received)] = _get(archive, path, ImplicitVRLittleEndian)
    assert syntax == ImplicitVRLittleEndian
    ds = read_dataset(BytesIO(received), is_implicit_VR=True, is_little_endian=True)
    original = dcmread(path)
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert ds.PatientName == original.PatientName
    assert ds.PixelData == original.PixelData
