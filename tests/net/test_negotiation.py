"""What a running ``coffre serve`` negotiates and archives, for every accepted syntax.

The files of pydicom and pydicom-data cover the common compressed syntaxes
(``test_echo_store_dcmtk``, ``test_store_pynetdicom``); neither ships HTJ2K, MPEG or
HEVC objects, nor JPEG Lossless Process 14. Here every transfer syntax of
``dicom.transfer_syntaxes`` is negotiated and stored by a pynetdicom SCU: the
encapsulated ones with synthetic fragments (the store path never decodes pixel data,
PS3.5 A.4), the native ones with synthetic pixels. Each object must be archived as
received, and the frame offsets recorded at ingest must point at the frames in the
archived bytes (DESIGN rule 6). Also checked here: every Storage SOP Class is
accepted, the maximum PDU length comes from the settings, and the same process
answers the HTTP health check.
"""

from __future__ import annotations

import json
import urllib.request
import zlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import factories
from coffre.dicom import transfer_syntaxes as tsx
from coffre.dicom.sop_classes import STORAGE_SOP_CLASSES

from . import dicomnet as net
from .conftest import Archive

MAX_PDU = 65536
#: Video Endoscopic Image Storage (PS3.4 B.5): the SOP class of an MPEG/HEVC object
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
#: JPEG 2000 Part 2 multi-component: a syntax the archive does not accept
NOT_ACCEPTED = "1.2.840.10008.1.2.4.92"


@pytest.fixture(scope="module")
def archive_env() -> dict[str, str]:
    return {"COFFRE_DICOM_MAX_PDU": str(MAX_PDU)}


def _frames(ts: tsx.TransferSyntax) -> list[bytes]:
    """Distinct, even-length fragments: one stream for video, two frames for images."""
    if ts.video:
        return [b"\x00\x00\x01\xb3" + ts.uid.encode().ljust(60, b"v") + bytes(range(256)) * 4]
    # SOC + SIZ markers of a (JPEG 2000 family) codestream, then filler: never decoded
    return [b"\xff\x4f\xff\x51" + bytes([n]) * 301 + b"\xff" for n in (1, 2)]


def _instance(ts: tsx.TransferSyntax) -> tuple[bytes, list[bytes]]:
    """Part 10 bytes in ``ts`` and the frames the archive must locate in them."""
    if not ts.encapsulated:
        ds = factories.make_dataset(patient_id="TSX", transfer_syntax=ts.uid)
        return factories.encode(ds, ts.uid), [bytes(ds.PixelData)]
    frames = _frames(ts)
    ds = factories.make_dataset(patient_id="TSX", modality="US" if ts.video else "CT",
                                frames=len(frames))
    if ts.video:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = VIDEO_ENDOSCOPIC
        ds.Modality = "ES"
    ds.PixelData = encapsulate(frames, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = ts.uid
    return factories.encode(ds), frames


@pytest.mark.parametrize("ts", tsx.ACCEPTED_TRANSFER_SYNTAXES, ids=lambda t: t.uid)
def test_every_accepted_syntax_is_stored_as_received(
    archive: Archive, tmp_path: Path, ts: tsx.TransferSyntax
) -> None:
    data, frames = _instance(ts)
    path = tmp_path / "object.dcm"
    path.write_bytes(data)
    sent = dcmread(path, stop_before_pixels=True)
    uid = str(sent.SOPInstanceUID)
    assert str(sent.file_meta.TransferSyntaxUID) == ts.uid

    # one presentation context, proposing this syntax alone: no fallback possible
    rsp = net.send_raw(archive.dicom_port, path)

    assert net.status_of(rsp) == 0x0000, rsp
    row = archive.instance(uid)
    assert row is not None and row["slug"] == "site-a"
    assert row["transfer_syntax_uid"] == ts.uid
    blob = archive.assert_intact(uid)
    assert net.dataset_part(blob) == net.dataset_part(path), "archived bytes differ from the sent ones"
    kept = dcmread(blob, stop_before_pixels=True)
    assert kept.file_meta.TransferSyntaxUID == ts.uid
    assert kept.file_meta.MediaStorageSOPClassUID == sent.SOPClassUID
    assert kept.file_meta.MediaStorageSOPInstanceUID == uid

    offsets = json.loads(row["frame_offsets"])
    archived = blob.read_bytes()
    if ts.deflated:
        # frames of a deflated data set have no place in the archived bytes
        body = zlib.decompress(net.dataset_part(blob), -zlib.MAX_WBITS)
        assert frames[0] in body
        return
    assert [archived[o:o + n] for o, n in offsets] == frames


def test_each_syntax_is_accepted_in_its_own_presentation_context(archive: Archive) -> None:
    syntaxes = [ts.uid for ts in tsx.ACCEPTED_TRANSFER_SYNTAXES] + [NOT_ACCEPTED]
    contexts = [(net.CT_IMAGE, [uid]) for uid in syntaxes]
    with net.association(archive.dicom_port, contexts=contexts) as assoc:
        accepted = {str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        rejected = list(assoc.rejected_contexts)
    assert accepted == {ts.uid for ts in tsx.ACCEPTED_TRANSFER_SYNTAXES}
    # PS3.8 9.3.3.2: result 4, transfer syntaxes not supported
    assert [(str(cx.transfer_syntax[0]), cx.result) for cx in rejected] == [(NOT_ACCEPTED, 4)]


def test_every_storage_sop_class_is_accepted(archive: Archive) -> None:
    classes = sorted(STORAGE_SOP_CLASSES)
    accepted: set[str] = set()
    for start in range(0, len(classes), 120):  # at most 128 contexts per association (PS3.8 9.3.2.2)
        contexts = [(uid, [ExplicitVRLittleEndian]) for uid in classes[start:start + 120]]
        with net.association(archive.dicom_port, contexts=contexts) as assoc:
            assert not assoc.rejected_contexts, [cx.abstract_syntax for cx in assoc.rejected_contexts]
            accepted |= {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    assert accepted == set(classes)


def test_maximum_pdu_length_comes_from_the_settings(archive: Archive) -> None:
    with net.association(archive.dicom_port) as assoc:
        # PS3.8 D.1: the acceptor's Maximum Length Sub-Item
        assert assoc.acceptor.maximum_length == MAX_PDU
        # and an object larger than one PDU still arrives whole
        ds: Dataset = factories.make_dataset(patient_id="PDU", rows=256, columns=256)
        ds.SOPInstanceUID = generate_uid()
        assert net.status_of(assoc.send_c_store(ds)) == 0x0000
    blob = archive.assert_intact(str(ds.SOPInstanceUID))
    assert dcmread(blob).PixelData == ds.PixelData


def test_the_same_process_answers_the_health_check(archive: Archive) -> None:
    url = f"http://{archive.host}:{archive.http_port}/healthz"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        body = json.loads(response.read())
    assert body["status"] == "ok"
    assert archive.proc is not None and archive.proc.poll() is None
