"""Export of the audit trail to an external audit repository (DICOM PS3.15 A.5 over syslog).

**The spool is the audit table itself** plus, per repository, a cursor (the id of the
last event known delivered) in ``archive_state``. Because the hash chain makes ids
commit in order (see ``index/audit.py``), "every event with an id above the cursor"
is exactly what remains to send: nothing recorded is ever skipped, and nothing is
lost while the repository is down — the exporter retries every
``[audit] syslog_interval_seconds``.

**At least once.** Events are sent in id order. Syslog has no acknowledgement, so the
cursor moves past a batch only once the connection was seen alive afterwards (at the
next batch or pass) or the repository closed the session after reading our end of
stream (:meth:`Exporter.finish`). After a crash, a lost connection or a take-over by
another process, the unconfirmed messages are sent again: a repository may receive
an event twice (the record URI ``urn:coffre:audit:SOURCE:ID`` in every message lets
it drop duplicates), never zero times (except over UDP, which guarantees nothing).

**One exporter per repository.** Several Coffre processes may share one index; each
``coffre serve`` with ``syslog_host`` set runs an exporter thread, but a lease in
``archive_state`` (claimed and renewed in a write transaction, serialised by SQLite's
``BEGIN IMMEDIATE`` or a PostgreSQL advisory lock) lets one of them send at a time.
A lease not renewed for ``lease_seconds`` is taken over. The cursor never moves back.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from coffre.app import Context
from coffre.dicom import audit_message
from coffre.errors import ConfigurationError
from coffre.index import audit as audit_index
from coffre.index.audit import AuditRow
from coffre.services.syslog import Transport, open_transport

log = logging.getLogger(__name__)


class RepositoryUnavailable(Exception):
    """The audit repository could not be reached or dropped the connection."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    sent: int
    #: the cursor after the pass (id of the last event known delivered)
    cursor: int
    #: False when another process holds the lease of this repository
    leased: bool = True


def repository_of(ctx: Context) -> str:
    """The repository's key, ``TRANSPORT://HOST:PORT`` (its cursor and lease are per key)."""
    a = ctx.settings.audit
    if not a.syslog_host:
        raise ConfigurationError("no audit repository is configured ([audit] syslog_host)")
    return f"{a.syslog_transport}://{a.syslog_host}:{a.syslog_port}"


def transport_for(ctx: Context) -> Transport:
    a, tls = ctx.settings.audit, ctx.settings.tls
    return open_transport(a.syslog_transport, a.syslog_host, a.syslog_port, ca_file=a.syslog_ca,
                          certificate=tls.certificate, private_key=tls.private_key)


class Exporter:
    """Sends the events past the cursor of one repository, in order."""

    def __init__(
        self, ctx: Context, *, transport: Transport | None = None, batch: int = 500,
        lease_seconds: float | None = None, owner: str = "",
    ) -> None:
        self.ctx = ctx
        self.repository = repository_of(ctx)
        self.transport = transport if transport is not None else transport_for(ctx)
        self.batch = batch
        interval = ctx.settings.audit.syslog_interval_seconds
        self.lease = timedelta(seconds=lease_seconds if lease_seconds is not None else max(30.0, 10 * interval))
        self.hostname = socket.gethostname()
        self.owner = owner or f"{self.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.source = audit_message.Source(
            source_id=ctx.settings.audit.source_id, enterprise_site_id=ctx.settings.audit.enterprise_site_id,
            ae_title=ctx.settings.archive.ae_title, hostname=self.hostname, process_id=str(os.getpid()),
        )
        #: id of the last event sent but not yet confirmed delivered
        self._unconfirmed: int | None = None

    # -- messages --------------------------------------------------------------------

    def message(self, event: AuditRow) -> bytes | None:
        """The SYSLOG-MSG of ``event``, within the transport's size; None if it cannot fit."""
        def frame(xml: bytes) -> bytes:
            return audit_message.syslog_message(
                xml, severity=audit_message.severity(event), at=event.at, hostname=self.hostname,
                procid=str(os.getpid()))
        overhead = len(frame(b""))
        try:
            xml = audit_message.build_bounded(event, self.source, self.transport.max_message - overhead)
        except audit_message.MessageTooLarge:
            log.error("audit event #%d does not fit in one syslog message; not exported", event.id)
            return None
        return frame(xml)

    # -- the cursor ------------------------------------------------------------------

    def _claim(self, upto: int | None = None) -> tuple[bool, int]:
        """Renew the lease and, when given, move the cursor to ``upto``; (leased, cursor)."""
        now = self.ctx.clock()
        with self.ctx.db.write() as tx:
            if not audit_index.claim_export(tx, self.repository, self.owner, now=now, until=now + self.lease):
                return False, audit_index.export_cursor(tx, self.repository)
            if upto is not None:
                return True, audit_index.advance_export(tx, self.repository, upto)
            return True, audit_index.export_cursor(tx, self.repository)

    def _confirm_or_drop(self) -> int | None:
        """Move the cursor past what was sent if the connection is still alive."""
        upto, self._unconfirmed = self._unconfirmed, None
        if upto is None:
            return None
        if self.transport.alive():
            return upto
        log.warning("audit repository %s closed the connection; unconfirmed messages will be sent again",
                    self.repository)
        return None

    def run_once(self, should_stop: Callable[[], bool] | None = None) -> ExportResult:
        """One pass: send every event past the cursor (until ``should_stop()``, checked
        between batches). ``RepositoryUnavailable`` when the repository cannot be
        reached (the cursor stays at the last confirmed event)."""
        leased, cursor = self._claim(self._confirm_or_drop())
        if not leased:
            self.transport.close()
            self._unconfirmed = None
            return ExportResult(sent=0, cursor=cursor, leased=False)
        sent, position = 0, cursor
        self.transport.alive()  # drops a connection the repository closed meanwhile
        try:
            while True:
                with self.ctx.db.read() as tx:
                    events = list(audit_index.iter_events_after(tx, position, limit=self.batch))
                if not events or (should_stop is not None and should_stop()):
                    break
                if self._unconfirmed is not None:
                    leased, cursor = self._claim(self._confirm_or_drop())
                    if not leased:
                        break
                    if cursor < position:  # the connection was lost: resend from the cursor
                        position = cursor
                        continue
                for event in events:
                    message = self.message(event)
                    if message is not None:
                        self.transport.send(message)
                        sent += 1
                    position = event.id
                    self._unconfirmed = event.id
        except OSError as exc:
            self.transport.close()
            self._unconfirmed = None
            raise RepositoryUnavailable(f"{self.repository}: {type(exc).__name__}: {exc}") from exc
        return ExportResult(sent=sent, cursor=cursor)

    def finish(self, timeout: float = 5.0) -> int:
        """End the session: confirm what was sent when the repository read it; the cursor."""
        upto, self._unconfirmed = self._unconfirmed, None
        delivered = self.transport.finish(timeout)
        if upto is not None and not delivered:
            log.warning("audit repository %s did not confirm the last messages; they will be sent again",
                        self.repository)
        return self._claim(upto if delivered else None)[1]

    def release(self) -> None:
        with self.ctx.db.write() as tx:
            audit_index.release_export(tx, self.repository, self.owner)

    def drain(self, timeout: float = 5.0) -> ExportResult:
        """Send everything past the cursor and confirm it (``coffre audit export --once``)."""
        try:
            result = self.run_once()
        except RepositoryUnavailable:
            self.finish(timeout)
            raise
        if not result.leased:
            return result
        return ExportResult(sent=result.sent, cursor=self.finish(timeout))


class ExporterThread:
    """The exporter of ``coffre serve``: a daemon thread draining the spool every interval."""

    def __init__(self, ctx: Context, exporter: Exporter | None = None) -> None:
        self.ctx = ctx
        self.exporter = exporter if exporter is not None else Exporter(ctx)
        self.interval = ctx.settings.audit.syslog_interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="coffre-audit-export", daemon=True)
        self._down = False

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = self.exporter.run_once(self._stop.is_set)
                if self._down:
                    log.warning("audit repository %s reachable again", self.exporter.repository)
                    self._down = False
            except RepositoryUnavailable as exc:
                if not self._down:
                    log.warning("audit repository unavailable (%s); retrying every %.1f s", exc, self.interval)
                    self._down = True
                result = None
            except Exception:
                log.exception("audit export pass failed; retrying")
                result = None
            if result is not None and result.sent >= self.exporter.batch:
                continue
            self._stop.wait(self.interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current pass; while the repository is up, send what was recorded
        meanwhile (the application-stop event); confirm; release the lease."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the audit exporter did not stop in %.0f s; unconfirmed messages will be sent again", timeout)
            return
        try:
            if not self._down:
                self.exporter.run_once()
        except RepositoryUnavailable:
            pass
        except Exception:
            log.exception("last audit export pass failed")
        try:
            self.exporter.finish(min(timeout, 5.0))
            self.exporter.release()
        except Exception:
            log.exception("could not close the audit export cleanly")


def start_exporter(ctx: Context) -> ExporterThread | None:
    """The exporter thread of ``coffre serve`` when a repository is configured, started."""
    if not ctx.settings.audit.syslog_host:
        return None
    thread = ExporterThread(ctx)
    thread.start()
    return thread
