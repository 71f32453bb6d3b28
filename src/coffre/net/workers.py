"""Several processes serving the DICOM port (``[dicom] workers``).

pynetdicom runs one thread per association, and every thread of a process shares one
interpreter lock: with several sending modalities at once, the store path's Python
(parsing, index statements, pynetdicom's own PDU handling) is serialised and one
process keeps about one core busy (docs/performance.md, section 3). With
``[dicom] workers = N`` the serve process and N - 1 worker processes serve
associations, so concurrent associations run on several cores.

The serve process alone listens on the DICOM port (``Dispatcher``): it accepts each
connection and hands it, in turn, to the next process over a Unix socket
(``SCM_RIGHTS``), itself included; each process's pynetdicom server takes its
connections from that socket (``net.dimse._HandoffServer``). Round robin spreads
associations evenly even when they are few (the kernel's ``SO_REUSEPORT`` hashing, tried
first, put four associations 3 + 1 on two processes). A process that does not take the
connection (dead, or being restarted) is skipped.

Each worker builds its own ``Context`` (its own engine and blob store) from the serve
process's ``Settings``; it holds no state of its own, so nothing changes for ingest's
durability (DESIGN rule 4) or for the audit chain (the index serialises writers across
processes: SQLite's writer gate, PostgreSQL's advisory lock). Workers never listen for
DICOM TLS (the serve process does) and stop with the serve process: on Linux they ask
the kernel for SIGKILL when their parent dies (``PR_SET_PDEATHSIG``), so a killed
archive leaves no process behind. A worker that exits unexpectedly is started again.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import multiprocessing
import signal
import socket
import threading
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from coffre import logs
from coffre.settings import Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: seconds a starting worker may take to bind the port (imports and engine included)
START_TIMEOUT = 60.0
#: seconds between a worker's unexpected exit and its restart
RESTART_DELAY = 1.0


def _die_with_parent() -> None:
    """Linux prctl(PR_SET_PDEATHSIG, SIGKILL): no worker outlives the serve process."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the serve process still stops them
        log.warning("worker cannot ask to die with its parent on this platform")


class Dispatcher:
    """The DICOM port's one listening socket, handing connections out in turn (module doc)."""

    def __init__(self, host: str, port: int, backlog: int = 128) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(backlog)
        bound = self._listener.getsockname()
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))
        self._targets: list[socket.socket] = []
        self._next = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add_target(self, replacing: socket.socket | None = None) -> tuple[socket.socket, socket.socket]:
        """A new hand-off pair ``(ours, theirs)``: ``ours`` stays here (in the place of
        ``replacing``, a dead process's), ``theirs`` goes to the process that will serve
        (it receives with ``socket.recv_fds``)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with self._lock:
            if replacing is not None and replacing in self._targets:
                self._targets[self._targets.index(replacing)] = ours
                replacing.close()
            else:
                self._targets.append(ours)
        return ours, theirs

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="coffre-dimse-accept", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                continue
            try:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._hand_over(client)
            finally:
                client.close()  # the receiving process holds its own descriptor now

    def _hand_over(self, client: socket.socket) -> None:
        with self._lock:
            order = [self._targets[(self._next + i) % len(self._targets)] for i in range(len(self._targets))]
            self._next = (self._next + 1) % max(len(self._targets), 1)
        for target in order:
            try:
                socket.send_fds(target, [b"c"], [client.fileno()])
                return
            except OSError:  # that process is gone or restarting: the next one
                continue
        log.error("no DIMSE process took a connection; it is closed")

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):  # wakes the accepting thread
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            for target in self._targets:
                target.close()


def _worker_main(
    settings: Settings, handoff: socket.socket, address: tuple[str, int], parent_pid: int, ready: Connection,
    log_level: int,
) -> None:
    """A worker process: the DIMSE listener alone, until SIGTERM/SIGINT or the parent's end."""
    import os

    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    logs.configure(log_level)  # as the serve process: no patient data in the logs

    from coffre.app import build_context
    from coffre.net.dimse import DimseServer

    ctx = build_context(replace(settings, dicom=replace(settings.dicom, port=address[1])), migrate=False)
    try:
        server = DimseServer(ctx, handoff=(handoff, address), with_tls=False)
        server.start()
        gc.freeze()  # as ``coffre serve`` does: the start-up heap is out of the collector's sight
        ready.send(os.getpid())
        ready.close()
        stop.wait()
        server.stop()
    finally:
        ctx.close()


class DimseWorkers:
    """Starts, watches and stops the ``workers - 1`` extra listener processes."""

    def __init__(self, settings: Settings, dispatcher: Dispatcher | None) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.count = max(settings.dicom.workers - 1, 0) if dispatcher is not None else 0
        self._handoffs: list[socket.socket | None] = [None] * self.count
        self._mp = multiprocessing.get_context("spawn")  # never fork a threaded process
        self._procs: list[BaseProcess | None] = [None] * self.count
        self._stopping = threading.Event()  # no more restarts
        #: the watcher ends only after its workers: PR_SET_PDEATHSIG fires when the
        #: *thread* that started a worker ends, and it starts the restarted ones
        self._done = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.pid is not None and p.is_alive()]

    def start(self) -> None:
        """Start every worker and wait until each listens (``START_TIMEOUT``)."""
        for slot in range(self.count):
            self._procs[slot] = self._spawn(slot)
        if self.count:
            self._watcher = threading.Thread(target=self._watch, name="coffre-dimse-workers", daemon=True)
            self._watcher.start()

    def _spawn(self, slot: int) -> BaseProcess:
        import os

        assert self.dispatcher is not None
        ours, theirs = self.dispatcher.add_target(replacing=self._handoffs[slot])
        self._handoffs[slot] = ours
        receive, send = self._mp.Pipe(duplex=False)
        proc = self._mp.Process(
            target=_worker_main,
            args=(self.settings, theirs, self.dispatcher.address, os.getpid(), send,
                  logging.getLogger().getEffectiveLevel()),
            name="coffre-dimse-worker", daemon=False,
        )
        proc.start()
        send.close()
        try:
            if not receive.poll(START_TIMEOUT):
                raise RuntimeError("a DIMSE worker did not start in time")
            receive.recv()
        except (EOFError, OSError) as exc:
            proc.join(5)
            raise RuntimeError(f"a DIMSE worker failed to start (exit code {proc.exitcode})") from exc
        finally:
            receive.close()
            theirs.close()  # the worker holds its own descriptor (spawn duplicated it)
        return proc

    def _watch(self) -> None:
        while not self._done.wait(RESTART_DELAY):
            if self._stopping.is_set():
                continue
            for slot, proc in enumerate(self._procs):
                if proc is None or proc.is_alive() or self._stopping.is_set():
                    continue
                log.error("DIMSE worker %s exited with code %s; starting it again", proc.pid, proc.exitcode)
                try:
                    self._procs[slot] = self._spawn(slot)
                except Exception:  # keep watching: the next pass tries again
                    log.exception("could not restart a DIMSE worker")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every worker (each aborts its open associations), then wait for them."""
        self._stopping.set()
        procs: list[Any] = [p for p in self._procs if p is not None]
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self._done.set()
        if self._watcher is not None:
            self._watcher.join(RESTART_DELAY * 2 + 1)
