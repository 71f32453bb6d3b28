"""``coffre info --json`` gives what a script needs to call DICOMweb (issue 5, item 7).

``coffre demo`` and ``coffre info`` run as real processes; the archive they describe is
then served by uvicorn on the very port ``info`` names, and ``dicomweb-client`` uses the
DICOMweb URL and each facility's demo token from ``info`` alone: every facility sees
exactly its own studies and instances (the counts ``info`` gives).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from dicomweb_client import DICOMwebClient
from requests.exceptions import HTTPError

from coffre.app import build_context
from coffre.cli import listening_socket
from coffre.settings import load_settings
from coffre.web.http import create_app

COFFRE = str(Path(sys.executable).with_name("coffre"))


def _run(*args: str, env: dict[str, str]) -> str:
    out = subprocess.run([COFFRE, *args], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[dict[str, object], dict[str, object]]]:
    """(info of a fresh archive, info after ``coffre demo``), the demo served on its HTTP port."""
    data = tmp_path / "data"
    sock = listening_socket("127.0.0.1", 0)
    port = int(sock.getsockname()[1])
    env = dict(os.environ, NO_COLOR="1", COFFRE_STORAGE_FSYNC="false", COFFRE_HTTP_PORT=str(port))
    fresh = json.loads(_run("info", "--data", str(data), "--json", env=env))
    _run("demo", "--data", str(data), env=env)
    info = json.loads(_run("info", "--data", str(data), "--json", env=env))
    ctx = build_context(load_settings(data, env))
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield fresh, info
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        ctx.close()


def test_info_gives_the_dicomweb_url_and_each_demo_facility_token(
    served: tuple[dict[str, object], dict[str, object]],
) -> None:
    fresh, info = served
    # no demo: no token is listed (and a fresh archive has no facility)
    assert fresh["facilities"] == []
    dicomweb = info["dicomweb"]
    assert isinstance(dicomweb, dict)
    url = dicomweb["url"]
    http = info["http"]
    assert isinstance(http, dict)
    assert url == f"{http['url']}/dicomweb"
    facilities = info["facilities"]
    assert isinstance(facilities, list) and len(facilities) == 3
    tokens = [f["demo_token"] for f in facilities]
    assert len(set(tokens)) == 3 and all(isinstance(t, str) and len(t) > 20 for t in tokens)
    seen: set[str] = set()
    for fac in facilities:
        client = DICOMwebClient(url=url, headers={"Authorization": f"Bearer {fac['demo_token']}"})
        studies = client.search_for_studies()
        assert len(studies) == fac["studies"], fac["slug"]
        instances = sum(int(s["00201208"]["Value"][0]) for s in studies)
        assert instances == fac["instances"], fac["slug"]
        uids = {s["0020000D"]["Value"][0] for s in studies}
        assert not uids & seen, fac["slug"]  # a facility sees its own studies only
        seen |= uids
        # and may retrieve them: the metadata of one of its studies
        study = sorted(uids)[0]
        assert client.retrieve_study_metadata(study), fac["slug"]
    anonymous = DICOMwebClient(url=url)
    with pytest.raises(HTTPError, match="401"):
        anonymous.search_for_studies()
