"""The DIMSE listener in-process: TCP_NODELAY on accepted sockets, one thread per association.

These are properties of the server's side of the connection, which a peer cannot see;
the server runs here in the test process (real sockets, a real index, pynetdicom SCUs
as peers) so that its accepted sockets and association threads can be inspected.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import ExitStack
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from coffre.net.dimse import DimseServer

from . import dicomnet as net

VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture
def server(in_process_dimse: tuple[DimseServer, int]) -> tuple[DimseServer, int]:
    return in_process_dimse


def _server_side(dimse: DimseServer, expected: int, timeout: float = 10.0) -> list[Any]:
    """The archive's established associations, once there are ``expected`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        assocs = [a for a in dimse.ae.active_associations if a.is_established]
        if len(assocs) >= expected or time.monotonic() > deadline:
            return assocs
        time.sleep(0.01)


def test_accepted_sockets_have_tcp_nodelay(server: tuple[DimseServer, int]) -> None:
    dimse, port = server
    with net.association(port, contexts=[(VERIFICATION, [ExplicitVRLittleEndian])]) as assoc:
        [served] = _server_side(dimse, 1)
        sock = served.dul.socket.socket
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert assoc.send_c_echo().Status == 0x0000


def test_one_thread_per_association(server: tuple[DimseServer, int]) -> None:
    dimse, port = server
    contexts = [(VERIFICATION, [ExplicitVRLittleEndian])]
    with ExitStack() as stack:
        peers = [stack.enter_context(net.association(port, calling=ae, contexts=contexts))
                 for ae in ("MODALITY_A", "PACS_A", "MODALITY_B")]
        served = _server_side(dimse, 3)
        assert len(served) == 3
        # pynetdicom's Association is a thread: each runs in its own, distinct and alive
        assert all(isinstance(a, threading.Thread) and a.is_alive() for a in served)
        assert len({a.ident for a in served}) == 3
        assert threading.main_thread() not in served
        # each serves at the same time: an echo on every open association succeeds
        assert [p.send_c_echo().Status for p in peers] == [0x0000] * 3
