"""C-MOVE (PS3.4 C.4.2) with DCMTK ``movescu`` into a DCMTK ``storescp`` started here.

Destinations are nodes registered by the ``qr`` fixture on free ports: ``DEST_A`` and
``DEST_A2`` (site-a), ``DEST_B`` (site-b). ``storescp +B`` writes the received dataset
bytes as they came off the wire, so "the archive sent the stored bytes" is checked
byte for byte against the files that were stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from coffre.codecs import decode_frames

from ..dicomnet import association, dataset_part
from .conftest import BULK, JPEG_LOSSLESS_SV1, QR, Inst
from .qrtools import (
    CANCEL,
    MOVE_DESTINATION_UNKNOWN,
    PENDING,
    STUDY_ROOT_MOVE,
    SUCCESS,
    StoreSCP,
    ToolResult,
    context_id,
    echo,
    movescu,
    storescp,
)

pytestmark = pytest.mark.dcmtk

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


@pytest.fixture
def scp(qr: QR, tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """Factory: a storescp for a registered destination AE; all stopped at teardown."""
    with ExitStack() as stack:
        def start(ae: str, *options: str) -> StoreSCP:
            return stack.enter_context(storescp(ae, qr.ports[ae], tmp_path / ae, *options))
        yield start


def move(qr: QR, destination: str, level: str, *keys: str, model: str = "S") -> ToolResult:
    return movescu(qr.host, qr.port, destination, level, *keys, model=model)


def assert_complete(r: ToolResult, count: int) -> None:
    assert r.returncode == 0, r.log
    assert r.final.status == SUCCESS, r.log
    assert r.final.counts == {"remaining": 0, "completed": count, "failed": 0, "warning": 0}, r.log
    assert set(r.statuses[:-1]) <= {PENDING}, r.log


def assert_received_as_stored(received: StoreSCP, expected: list[Inst]) -> None:
    paths = received.paths()
    assert set(paths) == {i.sop_uid for i in expected}
    assert len(received.files()) == len(expected)  # no extra, no duplicate
    for inst in expected:
        got = dcmread(paths[inst.sop_uid], stop_before_pixels=True)
        assert got.file_meta.TransferSyntaxUID == inst.transfer_syntax
        assert dataset_part(paths[inst.sop_uid]) == dataset_part(inst.path), inst.sop_uid


def test_move_study_level(qr: QR, scp: Callable[..., StoreSCP]) -> None:
    c = qr.corpus
    dest = scp("DEST_A", "+xa")
    r = move(qr, "DEST_A", "STUDY", f"StudyInstanceUID={c.studies['ST1']}")
    expected = c.of("site-a", study_uid=c.studies["ST1"])  # site-b's half of ST1 never
    assert len(expected) == 3
    assert_complete(r, 3)
    assert_received_as_stored(dest, expected)


def test_move_series_level(qr: QR, scp: Callable[..., StoreSCP]) -> None:
    c = qr.corpus
    dest = scp("DEST_A", "+xa")
    r = move(qr, "DEST_A", "SERIES", f"StudyInstanceUID={c.studies['ST2']}",
             f"SeriesInstanceUID={c.series['SE2']}")
    assert_complete(r, 2)
    assert_received_as_stored(dest, c.of("site-a", series_uid=c.series["SE2"]))


def test_move_image_level_uid_list(qr: QR, scp: Callable[..., StoreSCP]) -> None:
    c = qr.corpus
    dest = scp("DEST_A", "+xa")
    chosen = sorted(c.of("site-a", series_uid=c.series["SE1"]), key=lambda i: i.sop_uid)[:2]
    uids = "\\".join(i.sop_uid for i in chosen)
    r = move(qr, "DEST_A", "IMAGE", f"StudyInstanceUID={c.studies['ST1']}",
             f"SeriesInstanceUID={c.series['SE1']}", f"SOPInstanceUID={uids}")
    assert_complete(r, 2)
    assert_received_as_stored(dest, chosen)


def test_move_patient_root(qr: QR, scp: Callable[..., StoreSCP]) -> None:
    c = qr.corpus
    dest = scp("DEST_A", "+xa")
    r = move(qr, "DEST_A", "PATIENT", "PatientID=PA2", model="P")
    assert_complete(r, 2)
    assert_received_as_stored(dest, c.of("site-a", patient_id="PA2"))


def test_move_patient_root_study_level_of_shared_patient_id(qr: QR, scp: Callable[..., StoreSCP]) -> None:
    """PA1 exists at both sites: only site-a's studies are sent to a site-a caller."""
    c = qr.corpus
    dest = scp("DEST_A", "+xa")
    r = move(qr, "DEST_A", "PATIENT", "PatientID=PA1", model="P")
    expected = c.of("site-a", patient_id="PA1")
    assert len(expected) == 6
    assert_complete(r, 6)
    assert_received_as_stored(dest, expected)


def test_move_compressed_in_the_stored_syntax(qr: QR, scp: Callable[..., StoreSCP]) -> None:
    """A destination accepting every syntax receives the J2K and JPEG lossless bytes as stored."""
    c = qr.corpus
    dest = scp("DEST_A", "+xa")
    for study, count in (("ST4", 2), ("ST5", 1)):
        assert_complete(move(qr, "DEST_A", "STUDY", f"StudyInstanceUID={c.studies[study]}"), count)
    expected = c.of("site-a", study_uid=c.studies["ST4"]) + c.of("site-a", study_uid=c.studies["ST5"])
    assert {i.transfer_syntax for i in expected} == {J2K_LOSSLESS, JPEG_LOSSLESS_SV1}
    assert_received_as_stored(dest, expected)


def assert_same_pixels(received: Path, original: Inst) -> None:
    got = dcmread(received)
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert "PixelData" in got
    source = original.path.read_bytes()
    want = decode_frames(source)
    mine = got.pixel_array  # pydicom's own reading of the native pixels
    assert mine.reshape(want.shape).dtype.kind == want.dtype.kind
    assert np.array_equal(mine.reshape(want.shape), want), original.sop_uid
    kept = dcmread(original.path, stop_before_pixels=True)
    for keyword in ("SOPInstanceUID", "SOPClassUID", "PatientID", "PatientName", "StudyInstanceUID",
                    "Rows", "Columns", "BitsStored", "PhotometricInterpretation"):
        assert got[keyword].value == kept[keyword].value, keyword


def test_move_transcodes_for_an_uncompressed_only_destination(qr: QR, scp: Callable[..., StoreSCP]) -> None:
    """storescp's default accepts only uncompressed syntaxes (+xe: explicit VR LE first)."""
    c = qr.corpus
    dest = scp("DEST_A2", "+xe")
    for study, count in (("ST4", 2), ("ST5", 1)):
        assert_complete(move(qr, "DEST_A2", "STUDY", f"StudyInstanceUID={c.studies[study]}"), count)
    expected = c.of("site-a", study_uid=c.studies["ST4"]) + c.of("site-a", study_uid=c.studies["ST5"])
    paths = dest.paths()
    assert set(paths) == {i.sop_uid for i in expected}
    for inst in expected:
        assert_same_pixels(paths[inst.sop_uid], inst)


@pytest.mark.parametrize("destination", ["NOWHERE", "DEST_B", "MODALITY_A", "pacs_a"])
def test_move_to_a_refused_destination(qr: QR, scp: Callable[..., StoreSCP], destination: str) -> None:
    """Unknown AE, another facility's node, a node without move-destination: 0xA801."""
    c = qr.corpus
    other = scp("DEST_B", "+xa")
    r = move(qr, destination, "STUDY", f"StudyInstanceUID={c.studies['ST1']}")
    assert r.statuses == [MOVE_DESTINATION_UNKNOWN], r.log
    assert other.files() == []


def test_move_of_another_facility_series_sends_nothing(qr: QR, scp: Callable[..., StoreSCP]) -> None:
    c = qr.corpus
    dest = scp("DEST_A", "+xa")
    r = move(qr, "DEST_A", "SERIES", f"StudyInstanceUID={c.studies['ST1']}",
             f"SeriesInstanceUID={c.series['SEB1']}")
    assert r.final.counts.get("completed", 0) == 0, r.log
    assert r.final.counts.get("failed", 0) == 0, r.log
    assert r.final.status == SUCCESS, r.log
    assert dest.files() == []


def test_move_cancel_midway(qr: QR, scp: Callable[..., StoreSCP]) -> None:
    from pydicom.dataset import Dataset

    c = qr.corpus
    dest = scp("DEST_A", "+xa")
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = c.studies["ST6"]
    statuses: list[int] = []
    final: Dataset | None = None
    contexts = [(STUDY_ROOT_MOVE, [ExplicitVRLittleEndian])]
    with association(qr.port, "PACS_A", contexts=contexts) as assoc:
        for status, _ in assoc.send_c_move(ident, "DEST_A", STUDY_ROOT_MOVE, msg_id=5):
            assert status is not None and "Status" in status
            statuses.append(int(status.Status))
            final = status
            if len(statuses) == 1:
                assoc.send_c_cancel(5, context_id(assoc, STUDY_ROOT_MOVE))
    assert statuses[-1] == CANCEL, [hex(s) for s in statuses]
    assert final is not None
    completed = int(final.NumberOfCompletedSuboperations)
    assert 1 <= completed < BULK
    assert int(final.NumberOfFailedSuboperations) == 0
    assert len(dest.files()) == completed
    assert echo(qr.port) == SUCCESS
    qr.assert_no_traceback()

