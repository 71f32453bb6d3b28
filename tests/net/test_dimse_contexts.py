"""The listener's association plumbing that a peer cannot see (in-process server).

- ``net.dimse._SharedContexts`` hands each association a new list of the same context
  objects instead of copies (PS3.8 9.3.2.2 negotiation only reads the acceptor's
  contexts): negotiating associations (accepted, rejected and role-selected contexts)
  leaves every context as it was.
- The accepting loop's ``service_actions`` collects the young generations only.
- Acceptors run event-woken reactors (``_WakingAssociation``, ``_WakingSocket``): they
  serve, release and abort as before, and each closes its ``eventfd`` when it ends.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE, build_role

from coffre.app import Context, build_context
from coffre.net.dimse import DimseServer, _NoDelayServer, _WakingAssociation
from coffre.settings import load_settings

from . import dicomnet as net
from .conftest import prepare_territory

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[DimseServer, int]]:
    data = tmp_path / "data"
    prepare_territory(data)
    ctx: Context = build_context(load_settings(data, {
        "COFFRE_DICOM_PORT": "0", "COFFRE_DICOM_HOST": "127.0.0.1", "COFFRE_STORAGE_FSYNC": "false",
    }))
    dimse = DimseServer(ctx)
    try:
        _host, port = dimse.start()
        yield dimse, port
    finally:
        dimse.stop()
        ctx.close()


def _snapshot(contexts: list[Any]) -> list[tuple[Any, ...]]:
    return [(id(cx), cx.abstract_syntax, list(cx.transfer_syntax), cx.scu_role, cx.scp_role, cx.context_id,
             cx.result) for cx in contexts]


def test_associations_leave_the_supported_contexts_as_they_were(server: tuple[DimseServer, int]) -> None:
    dimse, port = server
    shared = dimse._server.contexts
    before = _snapshot(shared)
    with net.association(port, contexts=[(VERIFICATION, [ExplicitVRLittleEndian])]) as assoc:
        assert assoc.send_c_echo().Status == 0x0000
    # a storage class with roles (C-GET's SCP role), one syntax refused, one unknown class
    ae = AE(ae_title="PACS_A")
    ae.add_requested_context(CT_IMAGE, [JPEG2000Lossless, ImplicitVRLittleEndian])
    ae.add_requested_context(STUDY_ROOT_FIND, ["1.2.840.10008.1.2.4.50"])
    ae.add_requested_context("1.2.3.4.5.6.7")
    assoc = ae.associate("127.0.0.1", port, ae_title=net.ARCHIVE_AE,
                         ext_neg=[build_role(CT_IMAGE, scp_role=True, scu_role=True)])
    try:
        assert assoc.is_established
        accepted = {cx.abstract_syntax: cx for cx in assoc.accepted_contexts}
        assert accepted[CT_IMAGE].transfer_syntax[0] == JPEG2000Lossless
        assert {cx.abstract_syntax for cx in assoc.rejected_contexts} == {STUDY_ROOT_FIND, "1.2.3.4.5.6.7"}
    finally:
        assoc.release()
        ae.shutdown()
    assert _snapshot(shared) == before
    copy = shared.__deepcopy__({})
    assert copy is not shared and all(a is b for a, b in zip(copy, shared, strict=True))


def test_service_actions_collect_only_the_young_generations(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append(args) or 0)
    server = _NoDelayServer.__new__(_NoDelayServer)
    server._gc = [0, 59]
    for _ in range(120):
        server.service_actions()
    assert calls == [(1,), (1,)]


def _eventfds() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd of listdir itself is gone
            count += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventfd]"
    return count


def _served(dimse: DimseServer, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        established = [a for a in dimse.ae.active_associations if a.is_established]
        if established:
            return established[0]
        time.sleep(0.005)
    raise AssertionError("no association on the server side")


def _settled(dimse: DimseServer, baseline: int, timeout: float = 10.0) -> int:
    """The number of eventfds once the server's associations have ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not dimse.ae.active_associations and _eventfds() <= baseline:
            break
        time.sleep(0.02)
    return _eventfds()


def test_acceptors_are_event_woken_and_close_their_eventfd(server: tuple[DimseServer, int]) -> None:
    dimse, port = server
    baseline = _eventfds()
    for _ in range(5):
        with net.association(port, contexts=[(VERIFICATION, [ExplicitVRLittleEndian])]) as assoc:
            assert isinstance(_served(dimse), _WakingAssociation)
            assert assoc.send_c_echo().Status == 0x0000
            assert assoc.send_c_echo().Status == 0x0000
    assert _settled(dimse, baseline) <= baseline
    # a peer that aborts, and one that is refused (unknown calling AE title)
    ae = AE(ae_title="PACS_A")
    ae.add_requested_context(VERIFICATION)
    aborted = ae.associate("127.0.0.1", port, ae_title=net.ARCHIVE_AE)
    assert aborted.is_established
    aborted.abort()
    ae.ae_title = "NOBODY"
    refused = ae.associate("127.0.0.1", port, ae_title=net.ARCHIVE_AE)
    assert refused.is_rejected
    ae.shutdown()
    assert _settled(dimse, baseline) <= baseline
