"""Query/Retrieve behaviour of issue 3 that the other modules of this folder left unproven.

- C-MOVE: the counters of every Pending response; the Failed SOP Instance UID List and
  the final 0xB000 / 0xA702 when sub-operations fail at a real destination; a DCMTK
  ``storescp`` that accepts *only* Explicit VR Little Endian (a configuration profile,
  not ``+xe`` which also takes big endian and implicit) and one that accepts only
  Implicit VR Little Endian (``+xi``), both fed the archived JPEG 2000 and JPEG lossless
  instances; an invalid identifier (0xC514, nothing sent).
- C-GET: the same failure semantics (Failed SOP Instance UID List, 0xB000 / 0xA702,
  a storage SOP class the requestor did not offer), C-CANCEL mid-way, an invalid
  identifier (0xC413).
- C-FIND: a node without the query permission (0x0124), time ranges and empty-value
  matching with ``findscu``, and the status of a malformed range against the
  conformance statement.

Every test runs on SQLite and on PostgreSQL (the ``qr`` fixture).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt

from coffre.codecs import decode_frames
from coffre.conformance import statement

from ..conftest import Archive
from ..dicomnet import association
from .conftest import BULK, CT, MR, QR, SC, US, Inst, start_server
from .qrtools import (
    CANCEL,
    IDENTIFIER_DOES_NOT_MATCH,
    PENDING,
    STUDY_ROOT_GET,
    SUCCESS,
    StoreSCP,
    context_id,
    echo,
    findscu,
    getscu,
    movescu,
    storescp,
)

pytestmark = pytest.mark.dcmtk

PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
WARNING_SOME_FAILED = 0xB000
ALL_FAILED = 0xA702
NOT_AUTHORIZED = 0x0124
MOVE_INVALID_IDENTIFIER = 0xC514
GET_INVALID_IDENTIFIER = 0xC413
STORE_OUT_OF_RESOURCES = 0xA700

#: a storescp association profile (DCMTK asccfg syntax): only the listed SOP classes,
#: each with only the listed transfer syntaxes
_PROFILE = """\
[[TransferSyntaxes]]
[Only]
{syntaxes}

[[PresentationContexts]]
[Contexts]
{contexts}

[[Profiles]]
[Audit]
PresentationContexts = Contexts
"""


def profile(folder: Path, sop_classes: list[str], syntaxes: list[str]) -> Path:
    path = folder / "storescp-profile.cfg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_PROFILE.format(
        syntaxes="\n".join(f"TransferSyntax{n} = {ts}" for n, ts in enumerate(syntaxes, 1)),
        contexts="\n".join(f"PresentationContext{n} = {uid}\\Only" for n, uid in enumerate(sop_classes, 1)),
    ), encoding="utf-8")
    return path


@pytest.fixture
def scp(qr: QR, tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    with ExitStack() as stack:
        def start(ae: str, *options: str) -> StoreSCP:
            return stack.enter_context(storescp(ae, qr.ports[ae], tmp_path / ae, *options))
        yield start


def as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def assert_same_pixels(path: Path, inst: Inst, syntax: str) -> None:
    """Received in ``syntax``; the pixels are the original's, decoded; identity kept."""
    got = dcmread(path)
    assert got.file_meta.TransferSyntaxUID == syntax, inst.sop_uid
    want = decode_frames(inst.path.read_bytes())
    mine = got.pixel_array
    assert mine.dtype.kind == want.dtype.kind
    assert np.array_equal(mine.reshape(want.shape), want), inst.sop_uid
    kept = dcmread(inst.path, stop_before_pixels=True)
    for keyword in ("SOPInstanceUID", "SOPClassUID", "PatientID", "StudyInstanceUID", "Rows", "Columns",
                    "BitsStored", "PhotometricInterpretation"):
        assert got[keyword].value == kept[keyword].value, keyword


def compressed(qr: QR) -> list[Inst]:
    c = qr.corpus
    insts = c.of("site-a", study_uid=c.studies["ST4"]) + c.of("site-a", study_uid=c.studies["ST5"])
    assert {i.transfer_syntax for i in insts} == {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.70"}
    return insts


# -- C-MOVE --------------------------------------------------------------------------


def test_move_pending_responses_count_every_sub_operation(qr: QR, scp: Callable[..., StoreSCP]) -> None:
    """PS3.4 C.4.2.1.3: each Pending response carries remaining/completed/failed/warning."""
    c = qr.corpus
    dest = scp("DEST_A", "+xa")
    r = movescu(qr.host, qr.port, "DEST_A", "STUDY", f"StudyInstanceUID={c.studies['ST6']}")
    pending = [resp for resp in r.responses if resp.status == PENDING]
    assert len(pending) >= BULK - 1, r.log
    completed = [p.counts["completed"] for p in pending]
    assert completed == sorted(completed) and completed[-1] <= BULK, completed
    assert completed[: BULK - 1] == list(range(1, BULK)), completed
    for p in pending:
        assert p.counts["failed"] == p.counts["warning"] == 0, p
        assert p.counts["remaining"] == BULK - p.counts["completed"], p
    assert r.final.status == SUCCESS
    assert r.final.counts == {"remaining": 0, "completed": BULK, "failed": 0, "warning": 0}, r.log
    assert len(dest.files()) == BULK


def _pymove(qr: QR, identifier: Dataset, destination: str, model: str = STUDY_ROOT_MOVE) -> list[tuple[Dataset, Dataset | None]]:
    responses: list[tuple[Dataset, Dataset | None]] = []
    with association(qr.port, "PACS_A", contexts=[(model, [ExplicitVRLittleEndian])]) as assoc:
        for status, ident in assoc.send_c_move(identifier, destination, model, msg_id=11):
            assert status is not None and "Status" in status, "no C-MOVE response"
            responses.append((status, ident))
    return responses


def test_move_lists_the_instances_the_destination_refused(qr: QR, scp: Callable[..., StoreSCP], tmp_path: Path) -> None:
    """A storescp that supports CT Image Storage only: PA1's MR and US instances are failed
    sub-operations, named in the Failed SOP Instance UID List of the final 0xB000."""
    c = qr.corpus
    cfg = profile(tmp_path / "cfg", [CT], [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    dest = scp("DEST_A", "-xf", str(cfg), "Audit")
    ident = Dataset()
    ident.QueryRetrieveLevel = "PATIENT"
    ident.PatientID = "PA1"
    responses = _pymove(qr, ident, "DEST_A", PATIENT_ROOT_MOVE)
    final, identifier = responses[-1]
    expected_failed = {i.sop_uid for i in c.of("site-a", patient_id="PA1") if i.sop_class != CT}
    expected_sent = {i.sop_uid for i in c.of("site-a", patient_id="PA1") if i.sop_class == CT}
    assert (len(expected_failed), len(expected_sent)) == (3, 3)
    assert int(final.Status) == WARNING_SOME_FAILED
    assert int(final.NumberOfCompletedSuboperations) == 3
    assert int(final.NumberOfFailedSuboperations) == 3
    assert int(final.get("NumberOfWarningSuboperations", 0)) == 0
    assert identifier is not None
    assert set(as_list(identifier.FailedSOPInstanceUIDList)) == expected_failed
    assert set(dest.paths()) == expected_sent
    assert {int(s.Status) for s, _ in responses[:-1]} <= {PENDING}


@contextmanager
def refusing_scp(port: int, ae_title: str) -> Iterator[list[str]]:
    """A pynetdicom Storage SCP that answers 0xA700 to every C-STORE (a full disk)."""
    seen: list[str] = []
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        with lock:
            seen.append(str(event.request.AffectedSOPInstanceUID))
        return STORE_OUT_OF_RESOURCES

    ae = AE(ae_title=ae_title)
    for sop_class in (CT, MR, US, SC):
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield seen
    finally:
        ae.shutdown()  # stops ``server`` too


def test_move_where_every_sub_operation_fails(qr: QR) -> None:
    c = qr.corpus
    expected = c.sop_uids("site-a", study_uid=c.studies["ST2"])
    with refusing_scp(qr.ports["DEST_A"], "DEST_A") as seen:
        r = movescu(qr.host, qr.port, "DEST_A", "STUDY", f"StudyInstanceUID={c.studies['ST2']}")
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = c.studies["ST2"]
        responses = _pymove(qr, ident, "DEST_A")
    assert r.final.status == ALL_FAILED, r.log
    assert r.final.counts == {"remaining": 0, "completed": 0, "failed": 3, "warning": 0}, r.log
    assert "FailedSOPInstanceUIDList" in r.log
    final, identifier = responses[-1]
    assert int(final.Status) == ALL_FAILED
    assert identifier is not None and set(as_list(identifier.FailedSOPInstanceUIDList)) == expected
    assert sorted(seen) == sorted([*expected, *expected])  # each was offered, once per move


def test_move_to_an_explicit_vr_little_endian_only_destination(
    qr: QR, scp: Callable[..., StoreSCP], tmp_path: Path
) -> None:
    """Issue 3: the destination accepts only Explicit VR LE, the archive holds JPEG 2000
    and JPEG lossless: the received pixels equal the original decompressed pixels."""
    c = qr.corpus
    cfg = profile(tmp_path / "cfg", [CT, SC], [ExplicitVRLittleEndian])
    dest = scp("DEST_A2", "-xf", str(cfg), "Audit")
    for study, count in (("ST4", 2), ("ST5", 1)):
        r = movescu(qr.host, qr.port, "DEST_A2", "STUDY", f"StudyInstanceUID={c.studies[study]}")
        assert r.final.status == SUCCESS, r.log
        assert r.final.counts == {"remaining": 0, "completed": count, "failed": 0, "warning": 0}, r.log
    paths = dest.paths()
    insts = compressed(qr)
    assert set(paths) == {i.sop_uid for i in insts}
    for inst in insts:
        assert_same_pixels(paths[inst.sop_uid], inst, ExplicitVRLittleEndian)


def test_move_to_an_implicit_vr_little_endian_only_destination(qr: QR, scp: Callable[..., StoreSCP]) -> None:
    """``storescp +xi`` accepts Implicit VR Little Endian only: the second fallback."""
    c = qr.corpus
    dest = scp("DEST_A2", "+xi")
    for study, count in (("ST4", 2), ("ST5", 1)):
        r = movescu(qr.host, qr.port, "DEST_A2", "STUDY", f"StudyInstanceUID={c.studies[study]}")
        assert r.final.status == SUCCESS, r.log
        assert r.final.counts == {"remaining": 0, "completed": count, "failed": 0, "warning": 0}, r.log
    paths = dest.paths()
    insts = compressed(qr)
    assert set(paths) == {i.sop_uid for i in insts}
    for inst in insts:
        assert_same_pixels(paths[inst.sop_uid], inst, ImplicitVRLittleEndian)


@pytest.fixture(scope="module")
def second(qr: QR) -> Iterator[Archive]:
    """A second ``coffre serve`` on ``qr``'s data folder and index, for requests that make
    the server write a traceback (which would fail ``qr.assert_no_traceback`` elsewhere)."""
    server = start_server(qr.data)
    try:
        yield server
    finally:
        code = server.stop()  # not assert_healthy_exit: the tracebacks are the xfail below
        assert server.killed or code == 0, server.stderr()


@pytest.mark.parametrize("keys", [
    ("PatientID=PA1",),  # STUDY level without StudyInstanceUID
    ("StudyInstanceUID=*",),  # not a single value or a list of UIDs
])
def test_move_with_an_invalid_identifier(
    qr: QR, second: Archive, scp: Callable[..., StoreSCP], keys: tuple[str, ...]
) -> None:
    """Conformance statement 4.6: 0xC514, and nothing is sent."""
    dest = scp("DEST_A", "+xa")
    r = movescu(second.host, second.dicom_port, "DEST_A", "STUDY", *keys)
    assert r.statuses == [MOVE_INVALID_IDENTIFIER], r.log
    assert dest.files() == []
    assert echo(second.dicom_port) == SUCCESS


# -- C-GET ---------------------------------------------------------------------------


def pyget(qr: QR, identifier: Dataset, storage: list[tuple[str, list[Any]]], *,
          refuse: frozenset[str] = frozenset(), cancel_after: int | None = None,
          ) -> tuple[list[tuple[Dataset, Dataset | None]], list[str]]:
    """C-GET with pynetdicom: (responses, SOP Instance UIDs stored). C-STOREs of a SOP
    class in ``refuse`` are answered 0xA700; with ``cancel_after`` a C-CANCEL follows
    that many responses."""
    stored: list[str] = []

    def on_store(event: Any) -> int:
        if str(event.request.AffectedSOPClassUID) in refuse:
            return STORE_OUT_OF_RESOURCES
        stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="PACS_A")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(STUDY_ROOT_GET, [ExplicitVRLittleEndian])
    roles: list[Any] = []
    for sop_class, syntaxes in storage:
        ae.add_requested_context(sop_class, syntaxes)
        roles.append(build_role(sop_class, scp_role=True))
    responses: list[tuple[Dataset, Dataset | None]] = []
    assoc = ae.associate(qr.host, qr.port, ae_title="COFFRE", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        assert assoc.is_established
        for status, ident in assoc.send_c_get(identifier, STUDY_ROOT_GET, msg_id=21):
            assert status is not None and "Status" in status, "no C-GET response"
            responses.append((status, ident))
            if cancel_after is not None and len(responses) == cancel_after:
                assoc.send_c_cancel(21, context_id(assoc, STUDY_ROOT_GET))
        assoc.release()
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()
    return responses, stored


def study(uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    return ds


def test_get_lists_the_instances_the_requestor_refused(qr: QR) -> None:
    c = qr.corpus
    insts = c.of("site-a", study_uid=c.studies["ST2"])
    storage = [(MR, [ExplicitVRLittleEndian]), (US, [ExplicitVRLittleEndian])]
    responses, stored = pyget(qr, study(c.studies["ST2"]), storage, refuse=frozenset({MR}))
    final, identifier = responses[-1]
    assert int(final.Status) == WARNING_SOME_FAILED
    assert int(final.NumberOfCompletedSuboperations) == 1
    assert int(final.NumberOfFailedSuboperations) == 2
    assert identifier is not None
    assert set(as_list(identifier.FailedSOPInstanceUIDList)) == {i.sop_uid for i in insts if i.sop_class == MR}
    assert stored == [i.sop_uid for i in insts if i.sop_class == US]


def test_get_of_a_sop_class_the_requestor_did_not_offer_is_a_failed_sub_operation(qr: QR) -> None:
    """Only MR Image Storage is offered for ST2 (MR x2, US x1): the US instance cannot be
    sent in any accepted context and is listed as failed (conformance statement 4.6)."""
    c = qr.corpus
    insts = c.of("site-a", study_uid=c.studies["ST2"])
    responses, stored = pyget(qr, study(c.studies["ST2"]), [(MR, [ExplicitVRLittleEndian])])
    final, identifier = responses[-1]
    assert int(final.Status) == WARNING_SOME_FAILED
    assert int(final.NumberOfCompletedSuboperations) == 2
    assert int(final.NumberOfFailedSuboperations) == 1
    assert identifier is not None
    assert as_list(identifier.FailedSOPInstanceUIDList) == [i.sop_uid for i in insts if i.sop_class == US]
    assert sorted(stored) == sorted(i.sop_uid for i in insts if i.sop_class == MR)
    qr.assert_no_traceback()


def test_get_where_every_sub_operation_fails(qr: QR) -> None:
    c = qr.corpus
    expected = c.sop_uids("site-a", study_uid=c.studies["ST1"])
    responses, stored = pyget(qr, study(c.studies["ST1"]), [(CT, [ExplicitVRLittleEndian])], refuse=frozenset({CT}))
    final, identifier = responses[-1]
    assert int(final.Status) == ALL_FAILED
    assert int(final.NumberOfFailedSuboperations) == 3
    assert int(final.get("NumberOfCompletedSuboperations", 0)) == 0
    assert identifier is not None and set(as_list(identifier.FailedSOPInstanceUIDList)) == expected
    assert stored == []


def test_get_cancel_midway(qr: QR) -> None:
    c = qr.corpus
    responses, stored = pyget(qr, study(c.studies["ST6"]), [(CT, [ExplicitVRLittleEndian])], cancel_after=1)
    statuses = [int(s.Status) for s, _ in responses]
    assert statuses[-1] == CANCEL, [hex(s) for s in statuses]
    assert set(statuses[:-1]) == {PENDING}
    final = responses[-1][0]
    completed = int(final.NumberOfCompletedSuboperations)
    assert 1 <= completed < BULK
    assert int(final.NumberOfFailedSuboperations) == 0
    assert int(final.NumberOfRemainingSuboperations) == BULK - completed
    assert len(stored) == len(set(stored)) == completed
    assert set(stored) <= c.sop_uids("site-a", study_uid=c.studies["ST6"])
    assert echo(qr.port) == SUCCESS
    qr.assert_no_traceback()


def test_get_with_an_invalid_identifier(qr: QR, second: Archive, tmp_path: Path) -> None:
    """Conformance statement 4.6: 0xC413 (SERIES level without SeriesInstanceUID)."""
    r = getscu(second.host, second.dicom_port, tmp_path / "got", "SERIES",
               f"StudyInstanceUID={qr.corpus.studies['ST1']}")
    assert r.statuses == [GET_INVALID_IDENTIFIER], r.log
    assert r.files == []
    assert echo(second.dicom_port) == SUCCESS


def test_invalid_retrieve_identifiers_write_no_traceback(qr: QR, second: Archive, tmp_path: Path) -> None:
    movescu(second.host, second.dicom_port, "NOWHERE", "STUDY", "PatientID=PA1")  # 0xA801 first: no parse
    getscu(second.host, second.dicom_port, tmp_path / "got", "STUDY", "PatientID=PA1")
    text = second.stderr()
    assert "Traceback (most recent call last)" not in text, text


# -- C-FIND --------------------------------------------------------------------------


def test_find_by_a_node_without_the_query_permission_is_refused(qr: QR, tmp_path: Path) -> None:
    """DEST_A is a move destination only (``conftest.EXTRA_NODES``): 0x0124, no match."""
    r = findscu(qr.host, qr.port, tmp_path / "rsp", "STUDY", "StudyInstanceUID", calling="DEST_A")
    assert r.statuses == [NOT_AUTHORIZED], r.log
    assert r.datasets == []


@pytest.mark.parametrize(("times", "expected"), [
    ("0800-0900", {"ST2"}),  # closed range; ST2 is 08:30:00
    ("083000", {"ST2"}),
    ("-1100", {"ST1", "ST2", "ST3", "ST4", "ST6"}),  # open start; 10:15:00 and 08:30:00
    ("1100-", {"ST5"}),  # open end; ST5 is 12:00:00
    ("1016-1159", set()),
])
def test_study_time_ranges_with_findscu(qr: QR, tmp_path: Path, times: str, expected: set[str]) -> None:
    st = qr.corpus.studies
    r = findscu(qr.host, qr.port, tmp_path / "rsp", "STUDY", f"StudyTime={times}", "StudyInstanceUID")
    assert r.statuses[-1] == SUCCESS and set(r.statuses[:-1]) <= {PENDING}, r.log
    assert r.texts("StudyInstanceUID") == {st[n] for n in expected}


def test_empty_value_matching_with_findscu(qr: QR, tmp_path: Path) -> None:
    """``""`` matches the studies whose StudyDescription is empty or absent (PS3.4 C.2.2.2.1)."""
    c = qr.corpus
    described = {n for n in ("ST1", "ST2", "ST3", "ST4", "ST5", "ST6")
                 if str(dcmread(c.of("site-a", study_uid=c.studies[n])[0].path, stop_before_pixels=True)
                        .get("StudyDescription", "")).strip()}
    assert "ST1" in described  # "CT THORAX"
    r = findscu(qr.host, qr.port, tmp_path / "rsp", "STUDY", 'StudyDescription=""', "StudyInstanceUID")
    assert r.statuses[-1] == SUCCESS and set(r.statuses[:-1]) <= {PENDING}, r.log
    want = {c.studies[n] for n in ("ST1", "ST2", "ST3", "ST4", "ST5", "ST6") if n not in described}
    assert r.texts("StudyInstanceUID") == want
    assert want  # the test is meaningful


def _documented(status: int, section: str) -> str:
    """The meaning the conformance statement gives ``status`` in ``section``'s table."""
    text = statement()
    start = text.index(section)
    for line in text[start:].splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith(f"| 0x{status:04X} |"):
            return line
    return ""


def test_malformed_range_status_is_the_documented_one(qr: QR, tmp_path: Path) -> None:
    r = findscu(qr.host, qr.port, tmp_path / "rsp", "STUDY", "StudyDate=20240101-20241301", "StudyInstanceUID")
    assert len(r.statuses) == 1 and r.datasets == [], r.log
    (status,) = r.statuses
    assert status in (IDENTIFIER_DOES_NOT_MATCH, 0xC000), r.log
    assert "malformed range" in _documented(status, "### 4.5 C-FIND statuses"), (
        f"the archive answers 0x{status:04X} to a malformed range; docs/conformance.md does not say so"
    )
