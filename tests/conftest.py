"""Shared database fixtures: a migrated index on SQLite and on a real PostgreSQL.

- ``database`` (function): a migrated :class:`~coffre.index.engine.Database`,
  parametrized ``sqlite`` / ``postgresql``; so a test that takes it runs on both.
- ``pg_server`` (session): a private PostgreSQL cluster from Debian's binaries, started
  once per session on a free loopback port and stopped at the end. Missing binaries make
  the tests FAIL (never skip): install them with ``apt-get install postgresql``.
- ``pg_url`` (session): URL of that server's ``postgres`` maintenance database.
- ``fresh_pg_url`` (function): URL of a new, empty database, dropped afterwards.

Each PostgreSQL test gets its own database copied from a template migrated once per
session (``CREATE DATABASE … TEMPLATE``), which takes milliseconds.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from coffre.index.engine import Database, open_database
from coffre.index.migrate import upgrade

_TEMPLATE = "coffre_template"
_names = itertools.count(1)


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit connection to the maintenance database (for CREATE/DROP DATABASE)."""
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        )

    def create_database(self, name: str, template: str | None = None) -> str:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            # FILE_COPY: a checkpoint plus a directory copy, cheap with fsync=off;
            # the default WAL_LOG strategy writes the whole template through the WAL
            query += sql.SQL(" TEMPLATE {} STRATEGY FILE_COPY").format(sql.Identifier(template))
        with self.admin() as conn:
            conn.execute(query)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _pg_bindir() -> Path:
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    # newest major version first
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(p) for p in versions), key=lambda p: -_major(p.parent.name))
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    pytest.fail(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found via `pg_config "
        "--bindir` or /usr/lib/postgresql/*/bin. The index tests run on a real PostgreSQL: "
        "install it with `apt-get install postgresql` (no service needs to run).",
        pytrace=False,
    )


def _major(name: str) -> int:
    return int(name) if name.isdigit() else 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def _run(argv: list[str], cwd: Path) -> None:
    out = subprocess.run(
        _as_server_user(argv), cwd=cwd, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = _pg_bindir()
    root = Path(tempfile.mkdtemp(prefix="coffre-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, log = root / "data", root / "server.log"
    _run(
        [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
         "-E", "UTF8", "--locale=C", "--no-sync"],
        cwd=root,
    )  # fmt: skip
    pg_ctl = str(bindir / "pg_ctl")
    server: PgServer | None = None
    try:
        for _attempt in range(3):  # a free port can be taken between probe and bind
            port = _free_port()
            options = (
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off"
            )
            argv = [pg_ctl, "start", "-w", "-t", "60", "-D", str(data), "-l", str(log),
                    "-o", options]  # fmt: skip
            if subprocess.run(_as_server_user(argv), cwd=root, capture_output=True).returncode:
                continue
            server = PgServer(host="127.0.0.1", port=port, user="postgres")
            break
        if server is None:
            text = log.read_text(errors="replace") if log.exists() else ""
            pytest.fail(f"PostgreSQL did not start:\n{text}", pytrace=False)
        _wait_ready(server)
        yield server
    finally:
        if server is not None:
            subprocess.run(
                _as_server_user([pg_ctl, "stop", "-D", str(data), "-m", "immediate", "-w"]),
                cwd=root,
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: PgServer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with server.admin() as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="session")
def pg_url(pg_server: PgServer) -> str:
    """URL of the test server's ``postgres`` database (create your own databases there)."""
    return pg_server.url("postgres")


@pytest.fixture
def fresh_pg_url(pg_server: PgServer) -> Iterator[str]:
    """URL of a new empty database (no schema), dropped after the test."""
    name = f"fresh_{next(_names)}"
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer) -> str:
    """A database migrated to head once per session, copied by each test."""
    db = open_database(pg_server.create_database(_TEMPLATE), pool_size=1)
    try:
        upgrade(db)
    finally:
        db.dispose()  # CREATE DATABASE … TEMPLATE needs the template to have no sessions
    return _TEMPLATE


@contextmanager
def migrated_database(request: pytest.FixtureRequest, folder: Path) -> Iterator[Database]:
    """A migrated index for ``request.param`` (``sqlite``: a fresh file in ``folder``;
    ``postgresql``: a copy of the session's migrated template), disposed afterwards."""
    if request.param == "sqlite":
        db = open_database(f"sqlite:///{folder / 'index.db'}")
        upgrade(db)
        try:
            yield db
        finally:
            db.dispose()
        return
    server: PgServer = request.getfixturevalue("pg_server")
    template: str = request.getfixturevalue("pg_template")
    name = f"test_{next(_names)}"
    db = open_database(server.create_database(name, template=template))
    try:
        yield db
    finally:
        db.dispose()
        server.drop_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated index, on SQLite (a fresh file) and on PostgreSQL (a template copy)."""
    with migrated_database(request, tmp_path) as db:
        yield db
