"""The SQLite writer gate (``index.engine.WriterGate``): one writer at a time across
threads and processes, handed over by the kernel instead of SQLite's sleeping retries."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import text

from coffre.index.engine import WriterGate, open_database


def _locked_elsewhere(path: Path) -> bool:
    """Whether another process holding ``path`` is what this process sees (LOCK_NB probe)."""
    probe = subprocess.run(
        [sys.executable, "-c",
         "import fcntl, os, sys\n"
         "fd = os.open(sys.argv[1], os.O_RDWR)\n"
         "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)\n",
         str(path)],
        check=False,
    )
    return probe.returncode == 3


def test_sqlite_file_database_has_a_gate_next_to_it(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    try:
        assert db.gate is not None
        with db.write() as tx:
            tx.execute(text("CREATE TABLE t (x INTEGER)"))
        assert (tmp_path / "index.sqlite3-writer.lock").exists()
    finally:
        db.dispose()
    memory = open_database("sqlite://")
    try:
        with memory.write() as tx:  # no file: the thread lock alone
            tx.execute(text("SELECT 1"))
    finally:
        memory.dispose()


def test_nested_entries_keep_the_file_lock_until_the_outermost_exit(tmp_path: Path) -> None:
    path = tmp_path / "gate.lock"
    gate = WriterGate(path)
    try:
        with gate.held():
            with gate.held():
                assert _locked_elsewhere(path)
            assert _locked_elsewhere(path), "the inner exit released the outer entry's lock"
        assert not _locked_elsewhere(path)
    finally:
        gate.close()


def test_threads_take_turns(tmp_path: Path) -> None:
    gate = WriterGate(tmp_path / "gate.lock")
    inside = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(50):
            with gate.held():
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.0005)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    gate.close()
    assert most == 1


def test_a_write_waits_for_another_process_and_goes_on_at_its_release(tmp_path: Path) -> None:
    database = tmp_path / "index.sqlite3"
    db = open_database(f"sqlite:///{database}")
    lock = Path(f"{database}-writer.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\n"
         "time.sleep(0.5)\n",
         str(lock)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with db.write() as tx:
            waited = time.monotonic() - started
            tx.execute(text("CREATE TABLE t (x INTEGER)"))
        assert holder.wait(10) == 0
        assert waited > 0.2, "the write did not wait for the other process's lock"
        fd = os.open(lock, os.O_RDWR)
        try:  # released after the write
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        holder.kill()
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
        db.dispose()
