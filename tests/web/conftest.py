"""Fixtures for the HTTP API: an archive context on SQLite and PostgreSQL, its app
in-process (``client``, httpx through Starlette's TestClient) and served for real by
uvicorn on a free loopback port (``live``, for ``dicomweb-client``).

Territory: ``site-a`` and ``site-b``, each with an API token allowing store, query and
retrieve; ``site-a`` also has a query-only token.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from coffre.app import Context
from coffre.cli import listening_socket
from coffre.dicom.synthetic import InstanceSpec, make_instance
from coffre.index.engine import Database
from coffre.model import Actor, IngestResult, Permission
from coffre.services import facilities
from coffre.services.ingest import ingest
from coffre.services.tokens import create_token
from coffre.settings import HttpSettings, Settings
from coffre.storage.filesystem import FileSystemBlobStore
from coffre.web.http import create_app

BASE = "/dicomweb"


@dataclass
class WebArchive:
    ctx: Context
    token_a: str
    token_b: str
    token_a_query_only: str
    actor_a: Actor
    actor_b: Actor

    def headers(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token_a}", **extra}

    def store(self, spec: InstanceSpec | None = None, *, site: str = "a") -> tuple[bytes, IngestResult]:
        """Archive one synthetic instance for ``site`` through the ingest service."""
        data = make_instance(spec or InstanceSpec())
        actor = self.actor_a if site == "a" else self.actor_b
        return data, ingest(self.ctx, actor, data, source="test")


def build_web_archive(database: Database, tmp_path: Path, **http: object) -> WebArchive:
    settings = Settings(data_dir=tmp_path, http=replace(HttpSettings(), **http))  # type: ignore[arg-type]
    ctx = Context(settings=settings, db=database, blobs=FileSystemBlobStore(tmp_path / "blobs"))
    op = Actor.system("tests")
    fac_a = facilities.add_facility(ctx, op, slug="site-a", name="Site A", issuer="SITE-A")
    fac_b = facilities.add_facility(ctx, op, slug="site-b", name="Site B", issuer="SITE-B")
    token_a = create_token(ctx, op, facility_slug="site-a", name="client")
    token_b = create_token(ctx, op, facility_slug="site-b", name="client")
    query_only = create_token(ctx, op, facility_slug="site-a", name="viewer",
                              permissions=frozenset({Permission.QUERY}))
    return WebArchive(
        ctx=ctx, token_a=token_a, token_b=token_b, token_a_query_only=query_only,
        actor_a=Actor.system("tests", facility=fac_a), actor_b=Actor.system("tests", facility=fac_b),
    )


@pytest.fixture
def web(database: Database, tmp_path: Path) -> WebArchive:
    return build_web_archive(database, tmp_path)


@pytest.fixture
def client(web: WebArchive) -> Iterator[TestClient]:
    with TestClient(create_app(web.ctx), raise_server_exceptions=False) as test_client:
        yield test_client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    web: WebArchive

    @property
    def dicomweb(self) -> str:
        return self.url + BASE


@pytest.fixture
def live(web: WebArchive) -> Iterator[LiveServer]:
    """The same app served by uvicorn over real loopback HTTP."""
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(web.ctx), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", web=web)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
