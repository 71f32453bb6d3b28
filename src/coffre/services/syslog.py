"""Syslog transports to an external audit repository (PS3.15 A.6 / A.7).

- ``tls``: RFC 5425, octet-counting framing (``LEN SP SYSLOG-MSG``) over TLS ≥ 1.2; the
  repository's certificate is verified against ``[audit] syslog_ca`` (else the
  system's CAs) and its host name; when the archive has its own certificate
  (``[tls] certificate`` / ``private_key``) it is presented as the client
  certificate (IHE ATNA mutual authentication).
- ``tcp``: RFC 6587 octet counting over plain TCP (for a repository on a trusted link).
- ``udp``: RFC 5426, one message per datagram. A datagram carries at most
  :data:`UDP_MAX` bytes; a longer message is reduced (no query text, no outcome
  description) and, if still too long, not sent (logged). UDP gives no delivery
  guarantee at all.

Syslog over TCP/TLS has no acknowledgement. To advance the export cursor only past
messages the repository has read, a stream transport offers :meth:`StreamTransport.alive`
(the connection was not closed or reset by the peer since) and
:meth:`StreamTransport.finish` (half-close, then wait for the repository to close its
side after reading everything up to our end of stream).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from typing import Protocol

#: largest UDP payload over IPv4 (65535 - 8 UDP - 20 IP header bytes), RFC 5426 3.2
UDP_MAX = 65_507
#: largest message sent over TCP/TLS (repositories must take ≥ 32768, PS3.15 A.6)
STREAM_MAX = 1024 * 1024


class Transport(Protocol):
    #: the largest SYSLOG-MSG this transport sends
    max_message: int

    def send(self, message: bytes) -> None:
        """Send one SYSLOG-MSG; ``OSError`` when the repository cannot be reached."""

    def alive(self) -> bool:
        """False when the messages sent since the last check may not have been read."""

    def finish(self, timeout: float) -> bool:
        """End the session; True when everything sent was (as far as can be known) read."""

    def close(self) -> None:
        """Drop the connection without confirmation."""


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 3.4.1 / RFC 5425 4.3 framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


def tls_context(ca_file: str = "", *, certificate: str = "", private_key: str = "") -> ssl.SSLContext:
    """A client context: TLS ≥ 1.2, server certificate and host name verified."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certificate and private_key:
        context.load_cert_chain(certificate, private_key)
    return context


class StreamTransport:
    """One long-lived TCP or TLS connection, re-opened after a failure."""

    max_message = STREAM_MAX

    def __init__(self, host: str, port: int, *, context: ssl.SSLContext | None = None, timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.context = context
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is None:
            return raw
        try:
            return self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def send(self, message: bytes) -> None:
        if self._sock is None:
            self._sock = self._connect()
        try:
            self._sock.sendall(octet_counted(message))
        except BaseException:
            self.close()
            raise

    def alive(self) -> bool:
        """Poll the connection without blocking: an end of stream or a reset means the
        repository went away and may not have read what we sent."""
        sock = self._sock
        if sock is None:
            return False
        try:
            while select.select([sock], [], [], 0)[0]:
                sock.setblocking(False)
                try:
                    data = sock.recv(4096)  # a repository sends nothing; TLS may process records
                finally:
                    sock.settimeout(self.timeout)
                if not data:
                    self.close()
                    return False
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return True
        except (OSError, ValueError):
            self.close()
            return False
        return True

    def finish(self, timeout: float) -> bool:
        """Half-close and wait for the repository to close after reading our end of stream.

        A repository that keeps the connection open past ``timeout`` without an error
        is taken to have read everything (nothing better can be known over syslog).
        """
        sock = self._sock
        if sock is None:
            return True
        self._sock = None
        deadline = time.monotonic() + timeout
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.settimeout(timeout)
                try:
                    sock = sock.unwrap()  # our close_notify, then the repository's
                except (ConnectionResetError, BrokenPipeError):
                    return False
                except (TimeoutError, ssl.SSLError, OSError):
                    # the repository closed (or kept quiet) after reading up to our close_notify
                    return True
            sock.shutdown(socket.SHUT_WR)
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                try:
                    if not sock.recv(4096):
                        return True
                except TimeoutError:
                    return True
            return True
        except OSError:
            return False
        finally:
            sock.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class UdpTransport:
    """RFC 5426: one SYSLOG-MSG per datagram, no framing, no delivery guarantee."""

    max_message = UDP_MAX

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._sock: socket.socket | None = None

    def send(self, message: bytes) -> None:
        if len(message) > self.max_message:
            raise ValueError("datagram too large")
        if self._sock is None:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0][0]
            self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.sendto(message, (self.host, self.port))

    def alive(self) -> bool:
        return True

    def finish(self, timeout: float) -> bool:
        self.close()
        return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def open_transport(
    kind: str, host: str, port: int, *, ca_file: str = "", certificate: str = "", private_key: str = "",
) -> Transport:
    """The transport named by ``[audit] syslog_transport`` (connections open lazily)."""
    if kind == "udp":
        return UdpTransport(host, port)
    if kind == "tcp":
        return StreamTransport(host, port)
    if kind == "tls":
        return StreamTransport(host, port, context=tls_context(ca_file, certificate=certificate,
                                                                 private_key=private_key))
    raise ValueError(f"unknown syslog transport {kind!r}")
