"""A pynetdicom C-STORE SCP that does nothing but answer Success: the ceiling of
pynetdicom's own upper layer on this machine (``ingest.py --pynetdicom-ceiling``).

Same transport settings as Coffre's listener: TCP_NODELAY on accepted sockets, max PDU
256 KiB, one thread per association, Explicit and Implicit VR Little Endian accepted
(Explicit first). ``--encoded`` also calls ``event.encoded_dataset(include_meta=True)``,
like Coffre's handler. Prints ``ready PORT`` once listening; stops on SIGTERM.

    python benchmarks/_noop_scp.py PORT [--encoded]
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer


class _NoDelayServer(ThreadedAssociationServer):
    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def main() -> None:
    port = int(sys.argv[1])
    encoded = "--encoded" in sys.argv

    def on_store(event: Any) -> int:
        if encoded:
            event.encoded_dataset(include_meta=True)
        return 0x0000

    ae = AE("NOOP")
    ae.maximum_pdu_size = 262_144
    ae.maximum_associations = 32
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.add_supported_context("1.2.840.10008.1.1")
    server = ae.make_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, on_store)],
                            server_class=_NoDelayServer)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"ready {port}", flush=True)
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
