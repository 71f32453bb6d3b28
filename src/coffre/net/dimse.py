"""The DIMSE listener: association admission, C-ECHO and C-STORE SCP on pynetdicom.

This module is the one seam where the DICOM upper layer meets the application:
pynetdicom event handlers receive the ``Context`` as a handler argument (no globals),
build the ``Actor`` once per association, call one service, and map its result to a
DIMSE status (``net.statuses``).

- Association admission (PS3.8 7.1.1): the calling AE title must be a registered node
  (A-ASSOCIATE-RJ permanent, service-user, reason 3 otherwise) and the called AE title
  the archive's (reason 7).
- Verification Service Class (PS3.4 A) and Storage Service Class (PS3.4 B) SCP for every
  Storage SOP Class in every accepted transfer syntax; the dataset is never decoded on
  the store path: the encoded bytes go to the ingest service as received.
- Query/Retrieve Service Class (PS3.4 C) FIND, MOVE and GET SCP for the Patient Root
  and Study Root models (``net.find``, ``net.retrieve``).
- TCP_NODELAY on every accepted socket; one thread per association.
"""

from __future__ import annotations

import copy
import logging
import socket
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from coffre.app import Context
from coffre.dicom.sop_classes import STORAGE_SOP_CLASSES
from coffre.dicom.transfer_syntaxes import ACCEPTED_TRANSFER_SYNTAXES, TransferSyntax
from coffre.errors import CoffreError
from coffre.model import Actor
from coffre.net.find import MODELS, handle_find
from coffre.net.retrieve import handle_get, handle_move
from coffre.net.statuses import failure_status, store_success
from coffre.services import facilities
from coffre.services.access import Action, Resource, authorize
from coffre.services.ingest import ingest

log = logging.getLogger(__name__)

#: PS3.8 9.3.4: result 1 rejected-permanent, source 1 DICOM UL service-user.
_REJECT_PERMANENT, _SOURCE_SERVICE_USER = 0x01, 0x01
#: PS3.4 A.4 Verification SOP Class
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


def preferred_order() -> list[str]:
    """The order in which the archive picks a transfer syntax among a peer's proposals.

    pynetdicom takes the first of the acceptor's list that the peer proposed in a
    presentation context. Lossless encapsulated syntaxes come first (a peer proposing
    JPEG 2000 lossless next to Explicit VR Little Endian keeps its compression), then
    Explicit VR Little Endian and the other native syntaxes, Implicit VR Little Endian
    last of the lossless ones, then lossy and video syntaxes.
    """
    def rank(ts: TransferSyntax) -> tuple[int, int]:
        index = ACCEPTED_TRANSFER_SYNTAXES.index(ts)
        if ts.video:
            return 5, index
        if ts.lossy:
            return 4, index
        if ts.encapsulated:
            return 0, index
        if ts.implicit_vr:
            return 3, index
        return (1 if ts.uid == "1.2.840.10008.1.2.1" else 2), index

    return [ts.uid for ts in sorted(ACCEPTED_TRANSFER_SYNTAXES, key=rank)]


class _SharedContexts(list[Any]):
    """The supported presentation contexts, copied cheaply for each association.

    pynetdicom deep-copies the server's contexts for every association; with ~200
    Storage SOP classes x 25 transfer syntaxes that re-creates and re-validates ~5,000
    UID objects and was most of the cost of a C-ECHO or C-FIND association here
    (docs/performance.md). UIDs are immutable strings: a fresh context object with
    its own transfer syntax list is all negotiation needs.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        fresh = []
        for cx in self:
            new = copy.copy(cx)
            new._transfer_syntax = list(cx._transfer_syntax)
            fresh.append(new)
        return fresh


class _NoDelayServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on each accepted socket."""

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


class DimseServer:
    """Owns the pynetdicom AE and its listening socket for one ``Context``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._actors: weakref.WeakKeyDictionary[Any, Actor] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.ae = self._make_ae()

    def _make_ae(self) -> Any:
        s = self.ctx.settings
        # pynetdicom would log every query identifier (patient data) at INFO level.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        ae = AE(ae_title=s.archive.ae_title)
        ae.maximum_pdu_size = s.dicom.max_pdu
        ae.maximum_associations = s.dicom.max_associations
        ae.network_timeout = s.dicom.network_timeout
        ae.acse_timeout = s.dicom.acse_timeout
        ae.dimse_timeout = s.dicom.dimse_timeout
        # Admission is ours (EVT_REQUESTED); pynetdicom's static checks are off.
        ae.require_called_aet = False
        ae.require_calling_aet = []
        transfer_syntaxes = preferred_order()
        uncompressed = [ts.uid for ts in ACCEPTED_TRANSFER_SYNTAXES if not ts.encapsulated]
        ae.add_supported_context(VERIFICATION_SOP_CLASS, uncompressed)
        for uid in MODELS:
            ae.add_supported_context(uid, uncompressed)
        for uid in STORAGE_SOP_CLASSES:
            # both roles: peers store to us (SCU) and receive C-GET sub-operations (SCP)
            ae.add_supported_context(uid, transfer_syntaxes, scu_role=True, scp_role=True)
        return ae

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Bind and serve in a background thread; return the bound address."""
        s = self.ctx.settings.dicom
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested, [self.ctx]),
            (evt.EVT_C_ECHO, self._on_echo, [self.ctx]),
            (evt.EVT_C_STORE, self._on_store, [self.ctx]),
            (evt.EVT_C_FIND, self._on_find, [self.ctx]),
            (evt.EVT_C_MOVE, self._on_move, [self.ctx]),
            (evt.EVT_C_GET, self._on_get, [self.ctx]),
        ]
        self._server = self.ae.make_server(
            (s.host, s.port),
            evt_handlers=handlers,
            server_class=_NoDelayServer,
            contexts=_SharedContexts(self.ae.supported_contexts),
        )
        # as AE.start_server does: AE.shutdown() stops the servers it lists
        self.ae._servers.append(self._server)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="coffre-dimse", daemon=True
        )
        self._thread.start()
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Abort open associations (nothing unacknowledged is kept) and close the socket."""
        self.ae.shutdown()
        self._server = None

    # -- handlers --------------------------------------------------------------------

    def _actor(self, event: Any) -> Actor | None:
        with self._lock:
            return self._actors.get(event.assoc)

    def _on_requested(self, event: Any, ctx: Context) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        address = str(assoc.requestor.address)
        try:
            actor = facilities.admit(
                ctx, calling_ae=str(rq.calling_ae_title), called_ae=str(rq.called_ae_title), address=address
            )
        except facilities.AssociationRefused as exc:
            log.info("association refused from %s: %s", address, exc.reason)
            assoc.acse.send_reject(_REJECT_PERMANENT, _SOURCE_SERVICE_USER, exc.refusal.value)
            assoc.kill()
            return
        except Exception:
            log.exception("association admission failed")
            assoc.acse.send_reject(0x02, 0x02, 0x01)  # transient, ACSE, no reason given
            assoc.kill()
            return
        with self._lock:
            self._actors[assoc] = actor

    def _on_echo(self, event: Any, ctx: Context) -> int:
        actor = self._actor(event)
        if actor is None:
            return 0x0124
        try:
            authorize(actor, Action.ECHO, Resource(None))
        except CoffreError as exc:
            return int(exc.dimse_status)
        return 0x0000

    def _on_store(self, event: Any, ctx: Context) -> Any:
        actor = self._actor(event)
        if actor is None:
            return failure_status(0x0124, "association not admitted")
        request = event.request
        try:
            data = event.encoded_dataset(include_meta=True)
            result = ingest(
                ctx,
                actor,
                data,
                source=f"dimse:{actor.name}",
                expected_sop_class=str(request.AffectedSOPClassUID),
                expected_sop_instance=str(request.AffectedSOPInstanceUID),
            )
        except CoffreError as exc:
            log.info("C-STORE from %s refused: %s (0x%04X)", actor.describe(), exc.reason, exc.dimse_status)
            return failure_status(exc.dimse_status, exc.reason)
        except Exception:
            log.exception("C-STORE from %s failed", actor.describe())
            return failure_status(0xA701, "internal error; the object was not stored")
        return store_success(result)

    def _on_find(self, event: Any, ctx: Context) -> Iterator[Any]:
        return handle_find(event, ctx, self._actor(event))

    def _on_move(self, event: Any, ctx: Context) -> Iterator[Any]:
        return handle_move(event, ctx, self._actor(event))

    def _on_get(self, event: Any, ctx: Context) -> Iterator[Any]:
        return handle_get(event, ctx, self._actor(event))
