"""A pynetdicom SCP that does no work: the ceiling of pynetdicom's own upper layer on
this machine (``ingest.py --pynetdicom-ceiling``, ``query.py`` floors).

Same transport settings as Coffre's listener: TCP_NODELAY on accepted sockets, max PDU
256 KiB, one thread per association, Explicit and Implicit VR Little Endian accepted
(Explicit first), and the same cheap per-association copy of the presentation contexts
(``coffre.net.dimse._SharedContexts``: a new list of the same contexts; pynetdicom's deep
copy of ~260 contexts would otherwise cost more than a whole C-ECHO). It answers:

- C-STORE with Success (``--encoded`` also calls ``event.encoded_dataset(include_meta=True)``,
  like Coffre's handler);
- C-ECHO with Success (pynetdicom's default handler, PS3.4 A);
- Study Root C-FIND (PS3.4 C.4.1) with ``--find-matches N`` Pending responses (default 4),
  each the same canned 9-key study identifier as ``query.py`` asks for, then Success: the
  pynetdicom floor of a C-FIND with no index and no dataset building.

Prints ``ready PORT`` once listening; stops on SIGTERM.

    python benchmarks/_noop_scp.py PORT [--encoded] [--find-matches N]
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


class _NoDelayServer(ThreadedAssociationServer):
    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


class _SharedContexts(list[Any]):
    """The supported contexts, shared by every association (as Coffre does)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


def _canned_identifier() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789"
    ds.StudyDate = "20150101"
    ds.StudyTime = "101010"
    ds.AccessionNumber = "A0000001"
    ds.PatientName = "PATIENT00001^BENCH"
    ds.PatientID = "BQ00001"
    ds.StudyDescription = "BENCH QUERY"
    ds.ModalitiesInStudy = "CT"
    ds.NumberOfStudyRelatedInstances = 10
    return ds


def main() -> None:
    port = int(sys.argv[1])
    encoded = "--encoded" in sys.argv
    matches = int(sys.argv[sys.argv.index("--find-matches") + 1]) if "--find-matches" in sys.argv else 4
    canned = _canned_identifier()

    def on_store(event: Any) -> int:
        if encoded:
            event.encoded_dataset(include_meta=True)
        return 0x0000

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        _ = event.identifier  # decoded, as any SCP must
        for _ in range(matches):
            yield 0xFF00, canned

    ae = AE("NOOP")
    ae.maximum_pdu_size = 262_144
    ae.maximum_associations = 32
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.add_supported_context("1.2.840.10008.1.1")
    ae.add_supported_context(STUDY_ROOT_FIND, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    server = ae.make_server(("127.0.0.1", port),
                            evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_C_FIND, on_find)],
                            server_class=_NoDelayServer, contexts=_SharedContexts(ae.supported_contexts))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"ready {port}", flush=True)
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
