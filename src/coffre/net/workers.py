"""Extra DIMSE listener processes sharing the DICOM port (``[dicom] workers``).

pynetdicom runs one thread per association, and every thread of a process shares one
interpreter lock: with several sending modalities at once, the store path's Python
(parsing, index statements, pynetdicom's own PDU handling) is serialised and one
process keeps about one core busy (docs/performance.md, section 3). With
``[dicom] workers = N`` the serve process and N - 1 worker processes each bind the
DICOM port with ``SO_REUSEPORT``; the Linux kernel spreads new connections over the
listening sockets (by a hash of the connection's addresses and ports), so concurrent
associations run on several cores.

Each worker builds its own ``Context`` (its own engine and blob store) from the serve
process's ``Settings``; it holds no state of its own, so nothing changes for ingest's
durability (DESIGN rule 4) or for the audit chain (the index serialises writers across
processes: SQLite's write lock, PostgreSQL's advisory lock). Workers never listen for
DICOM TLS (the serve process does) and stop with the serve process: on Linux they ask
the kernel for SIGKILL when their parent dies (``PR_SET_PDEATHSIG``), so a killed
archive leaves no listener behind. A worker that exits unexpectedly is started again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import multiprocessing
import signal
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


def _worker_main(settings: Settings, port: int, parent_pid: int, ready: Connection, log_level: int) -> None:
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

    ctx = build_context(replace(settings, dicom=replace(settings.dicom, port=port)), migrate=False)
    try:
        server = DimseServer(ctx, shared_port=True, with_tls=False)
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

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.count = max(settings.dicom.workers - 1, 0)
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
            self._procs[slot] = self._spawn()
        if self.count:
            self._watcher = threading.Thread(target=self._watch, name="coffre-dimse-workers", daemon=True)
            self._watcher.start()

    def _spawn(self) -> BaseProcess:
        import os

        receive, send = self._mp.Pipe(duplex=False)
        proc = self._mp.Process(
            target=_worker_main,
            args=(self.settings, self.port, os.getpid(), send, logging.getLogger().getEffectiveLevel()),
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
                    self._procs[slot] = self._spawn()
                except RuntimeError:
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
