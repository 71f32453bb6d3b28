"""The listener's association plumbing that a peer cannot see (in-process server).

- ``net.dimse._SharedContexts`` hands each association a new list of the same context
  objects instead of copies (PS3.8 9.3.2.2 negotiation only reads the acceptor's
  contexts): negotiating associations (accepted, rejected and role-selected contexts)
  leaves every context as it was.
- The accepting loop's ``service_actions`` collects the young generations only.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE, build_role

from coffre.net.dimse import DimseServer, _NoDelayServer

from . import dicomnet as net

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


@pytest.fixture
def server(in_process_dimse: tuple[DimseServer, int]) -> tuple[DimseServer, int]:
    return in_process_dimse


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
