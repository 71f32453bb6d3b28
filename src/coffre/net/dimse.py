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
- DICOM TLS (PS3.15 B.9, B.12; ``net.tls``): with ``[tls] enabled`` a second listener
  on ``tls.port`` requires a client certificate from the configured CAs. The TLS
  handshake runs in the association's own thread (never in the accepting thread, which a
  silent peer would otherwise block) within ``dicom.acse_timeout``; a failed handshake
  is audited. Admission then checks the certificate's fingerprint against the node's
  binding (``services.facilities.admit``). C-MOVE destinations that are TLS nodes are
  reached over TLS with the archive's certificate.
"""

from __future__ import annotations

import gc
import logging
import socket
import ssl
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from coffre.app import Context
from coffre.dicom.sop_classes import STORAGE_SOP_CLASSES
from coffre.dicom.transfer_syntaxes import ACCEPTED_TRANSFER_SYNTAXES, TransferSyntax
from coffre.errors import CoffreError
from coffre.model import Actor
from coffre.net import tls
from coffre.net.find import MODELS, handle_find, send_prepared_identifiers
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
    """The supported presentation contexts, shared by every association.

    pynetdicom deep-copies the server's contexts for every association; with ~200
    Storage SOP classes x 25 transfer syntaxes that re-creates and re-validates ~5,000
    UID objects and was most of the cost of a C-ECHO or C-FIND association here
    (docs/performance.md). Even a shallow copy of each context (a new object and its own
    transfer syntax list) was 14 % of the CPU of a C-FIND association. Negotiation
    (PS3.8 9.3.2.2; pynetdicom's ``negotiate_as_acceptor``) only reads the acceptor's
    contexts and builds new result contexts, so each association gets a new list of the
    same context objects; nothing in Coffre changes them after ``_make_ae``
    (``tests/net/test_dimse_contexts.py`` checks that associations leave them as they were).
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


def _young_collection() -> None:
    """What the accepting thread does between requests instead of a full collection.

    pynetdicom's ``AssociationServer.service_actions`` runs ``gc.collect()`` every 60
    passes of the accept loop (after every association, and every 0.5 s when idle). A
    full collection of this process's heap (SQLAlchemy, pydicom's dictionaries, ~5,000
    presentation contexts) takes 50-65 ms here with the GIL held, stalling every
    association in flight (docs/performance.md, section 4). The young generations hold
    what an association leaves behind; CPython's own thresholds still run the full
    collections when the heap has grown enough to need one.
    """
    gc.collect(1)


class _NoDelayServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on each accepted socket.

    (Event-woken acceptor reactors in place of pynetdicom's 1 ms polling were tried and
    taken out: in A/B runs of the same tree they changed C-FIND and ingest figures by
    less than the run-to-run noise, for a copy of pynetdicom's reactor loop to maintain;
    docs/performance.md, section 7.)
    """

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def service_actions(self) -> None:
        """Every 60th pass: a collection of the young generations only (``_young_collection``)."""
        self._gc[0] += 1
        if self._gc[0] >= self._gc[1]:
            self._gc[0] = 0
            _young_collection()


class _HandoffServer(_NoDelayServer):
    """The listener of one of the ``[dicom] workers`` processes (``net.workers``).

    It binds nothing: the serve process accepts every connection on the DICOM port and
    hands each one over on a Unix socket (``SCM_RIGHTS``); this server waits on that
    socket instead of a listening one, and ``get_request`` receives the connection.
    ``handoff`` and ``public_address`` are set on a subclass per server
    (``DimseServer``), since pynetdicom constructs the server itself.
    """

    handoff: socket.socket
    public_address: tuple[str, int]

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.close()
        self.socket = self.handoff
        self.server_address = self.public_address

    def server_activate(self) -> None:
        pass  # nothing to listen on: connections arrive through the hand-off socket

    def get_request(self) -> tuple[socket.socket, Any]:
        _msg, fds, _flags, _addr = socket.recv_fds(self.handoff, 1, 1)
        if not fds:
            raise OSError("the hand-off socket closed")
        client = socket.socket(fileno=fds[0])
        try:
            return client, client.getpeername()
        except OSError:
            client.close()  # the peer left before this process took the connection
            raise


class _TlsServer(ThreadedAssociationServer):
    """The DICOM TLS listener: wraps each accepted socket, handshakes in its own thread.

    pynetdicom's server would run the handshake in ``get_request``, in the one thread
    that accepts connections, so a peer that connects and stays silent would hold up
    every other peer. Here the accepting thread only wraps the socket; the handshake
    runs in the connection's thread under a timeout, and a failure ends that connection
    alone.
    """

    handshake_timeout: float = 30.0
    on_handshake_failure: Callable[[str, BaseException], None] | None = None
    service_actions = _NoDelayServer.service_actions

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None and self.ssl_context is not None
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wrapped = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(max(self.handshake_timeout, 1.0))  # never wait forever
            request.do_handshake()
            request.settimeout(None)
        except (ssl.SSLError, OSError) as exc:
            try:
                request.close()
            finally:
                if self.on_handshake_failure is not None:
                    self.on_handshake_failure(str(client_address[0]), exc)
            return
        super().finish_request(request, client_address)


def _peer_fingerprint(assoc: Any) -> str | None:
    """The SHA-256 of the verified client certificate of a TLS association, else ``None``."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    if not der:  # CERT_REQUIRED makes this unreachable; never admit it as plain TCP
        raise ssl.SSLError("no verified client certificate")
    return tls.fingerprint(der)


def _over_tls(inner: Iterator[Any], context: ssl.SSLContext, hostname: str) -> Iterator[Any]:
    """The C-MOVE handler's yields, with TLS added to the destination's association."""
    first = next(inner)
    if isinstance(first, tuple) and len(first) == 3 and first[0] is not None:
        host, port, options = first
        first = (host, port, {**options, "tls_args": (context, hostname)})
    yield first
    yield from inner


class _RefusalsWithoutTraceback(logging.Filter):
    """pynetdicom logs an exception raised by a handler with its traceback. A
    ``CoffreError`` there is a refusal already answered with its status (an invalid
    C-MOVE/C-GET identifier: 0xC514/0xC413, PS3.4 C.4.2.1.4/C.4.3.1.4), not a crash:
    its message is kept, its traceback dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], CoffreError):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_refusals() -> None:
    logger = logging.getLogger("pynetdicom.service_class")
    if not any(isinstance(f, _RefusalsWithoutTraceback) for f in logger.filters):
        logger.addFilter(_RefusalsWithoutTraceback())


class DimseServer:
    """Owns the pynetdicom AE and its listening socket for one ``Context``."""

    def __init__(
        self,
        ctx: Context,
        *,
        handoff: tuple[socket.socket, tuple[str, int]] | None = None,
        with_tls: bool = True,
    ) -> None:
        """``handoff``: take connections from this Unix socket instead of binding the DICOM
        port (``net.workers``: the socket and the port's public address);
        ``with_tls=False``: no TLS listener in this process (workers leave it to the
        serve process)."""
        self.ctx = ctx
        self._server_class: type[ThreadedAssociationServer] = _NoDelayServer
        if handoff is not None:
            self._server_class = type("_HandoffServerOf", (_HandoffServer,),
                                      {"handoff": handoff[0], "public_address": handoff[1]})
        _quiet_refusals()
        self._actors: weakref.WeakKeyDictionary[Any, Actor] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._tls_server: Any = None
        #: the TLS listener's (host, port) once started, ``None`` without ``[tls] enabled``
        self.tls_address: tuple[str, int] | None = None
        # built now, so that bad certificate files stop ``coffre serve`` at start-up
        tls_settings = ctx.settings.tls
        self._tls_server_context = tls.server_context(tls_settings) if tls_settings.enabled and with_tls else None
        self._tls_client_context = tls.client_context(tls_settings) if tls_settings.enabled else None
        self.ae = self._make_ae()

    def _make_ae(self) -> Any:
        s = self.ctx.settings
        # pynetdicom would log every query identifier (patient data) at INFO level.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        send_prepared_identifiers()  # C-FIND responses encoded once, by net.find
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
            server_class=self._server_class,
            contexts=_SharedContexts(self.ae.supported_contexts),
        )
        # as AE.start_server does: AE.shutdown() stops the servers it lists
        self.ae._servers.append(self._server)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="coffre-dimse", daemon=True
        )
        self._thread.start()
        host, port = self._server.server_address[:2]
        if self._tls_server_context is not None:
            self.tls_address = self._start_tls(handlers)
        return str(host), int(port)

    def _start_tls(self, handlers: list[Any]) -> tuple[str, int]:
        s = self.ctx.settings
        server = self.ae.make_server(
            (s.dicom.host, s.tls.port),
            evt_handlers=handlers,
            server_class=_TlsServer,
            contexts=_SharedContexts(self.ae.supported_contexts),
            ssl_context=self._tls_server_context,
        )
        server.handshake_timeout = s.dicom.acse_timeout
        server.on_handshake_failure = self._on_handshake_failure
        self.ae._servers.append(server)
        self._tls_server = server
        threading.Thread(target=server.serve_forever, name="coffre-dimse-tls", daemon=True).start()
        host, port = server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Abort open associations (nothing unacknowledged is kept) and close the socket."""
        self.ae.shutdown()
        self._server = None
        self._tls_server = None

    # -- handlers --------------------------------------------------------------------

    def _actor(self, event: Any) -> Actor | None:
        with self._lock:
            return self._actors.get(event.assoc)

    def _on_handshake_failure(self, address: str, exc: BaseException) -> None:
        error = tls.describe_error(exc)
        # a peer that connected and left (port probe, load balancer check) is not a
        # security event; a refused certificate or protocol version is
        if not isinstance(exc, ssl.SSLError) or isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            log.info("TLS connection from %s closed before the handshake ended: %s", address, error)
            return
        log.info("TLS handshake with %s failed: %s", address, error)
        try:
            facilities.record_handshake_failure(self.ctx, address=address, error=error)
        except Exception:
            log.exception("could not audit a failed TLS handshake")

    def _on_requested(self, event: Any, ctx: Context) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        address = str(assoc.requestor.address)
        try:
            actor = facilities.admit(
                ctx, calling_ae=str(rq.calling_ae_title), called_ae=str(rq.called_ae_title), address=address,
                tls_fingerprint=_peer_fingerprint(assoc),
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
        actor = self._actor(event)
        if actor is not None:
            destination = str(event.move_destination).strip()
            try:
                hostname = facilities.tls_destination_host(
                    ctx, actor, destination, tls_available=self._tls_client_context is not None)
            except CoffreError as exc:
                log.warning("C-MOVE from %s to %s refused: %s", actor.describe(), destination, exc.reason)
                return iter([(None, None)])  # pynetdicom answers 0xA801
            if hostname is not None and self._tls_client_context is not None:
                return _over_tls(handle_move(event, ctx, actor), self._tls_client_context, hostname)
        return handle_move(event, ctx, actor)

    def _on_get(self, event: Any, ctx: Context) -> Iterator[Any]:
        return handle_get(event, ctx, self._actor(event))
