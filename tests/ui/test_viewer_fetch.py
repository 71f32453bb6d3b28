"""``coffre viewer fetch``: integrity, safe extraction, idempotence (no browser).

Tarballs are built by the tests (same layout as npm's: ``package/dist/…``); the
registry is a real HTTP server on loopback. The last tests check the real, pinned
build that ``coffre viewer fetch`` installed for this Python.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coffre.viewer import bundle as bundle_module
from coffre.viewer.bundle import (
    OHIF_INTEGRITY,
    OHIF_VERSION,
    Bundle,
    build_dir,
    find_bundle,
    load_bundle,
    status_line,
    verify,
)
from coffre.viewer.fetch import FetchError, fetch, tarball_url

COFFRE = str(Path(sys.executable).with_name("coffre"))
VERSION = "0.0.0-test"

INDEX = b'<!doctype html><script>window.PUBLIC_URL="/"</script><script src="/app.bundle.0123456789abcdef.js"></script>'
GOOD = {
    "index.html": INDEX,
    "app.bundle.0123456789abcdef.js": b"console.log('app')",
    "app.bundle.css": b"body{}",
    "assets/favicon.ico": b"\x00\x01",
    "app-config.js": b"window.config = {dataSources: ['https://demo.example']}",
    "_redirects": b"/* /index.html 200",
    "ort/ort-wasm.wasm": b"\x00asm",
    "dicom-microscopy-viewer/viewer.js": b"//",
    "app.bundle.0123456789abcdef.js.map": b"{}",
}


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def tarball(path: Path, files: dict[str, bytes], *, links: dict[str, str] | None = None) -> tuple[Path, str]:
    """An npm-style tarball of ``files`` under ``package/dist/`` (names taken as given)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        meta = tarfile.TarInfo("package/package.json")
        content = b'{"name": "@ohif/app"}'
        meta.size = len(content)
        archive.addfile(meta, io.BytesIO(content))
        for name, data in files.items():
            info = tarfile.TarInfo(name if name.startswith(("package/", "/", "..")) else f"package/dist/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    path.write_bytes(buffer.getvalue())
    return path, sri(buffer.getvalue())


def test_install_keeps_dist_only_and_records_every_file(tmp_path: Path) -> None:
    package, integrity = tarball(tmp_path / "p.tgz", GOOD)
    root = tmp_path / "root"
    result = fetch(root, tarball=package, version=VERSION, integrity=integrity)
    assert result.installed
    installed = result.bundle
    assert installed.path == root / f"ohif-{VERSION}"
    assert set(installed.files) == {"index.html", "app.bundle.0123456789abcdef.js", "app.bundle.css",
                                    "assets/favicon.ico"}
    assert result.skipped == 5  # bundled config, host rules, onnxruntime, microscopy, source map
    for name, digest in installed.files.items():
        assert hashlib.sha256((installed.path / name).read_bytes()).hexdigest() == digest
    assert not (installed.path / "package.json").exists()
    assert not (installed.path / "app-config.js").exists()
    assert verify(installed) == []
    # only the build and its manifest are left: no temporary folder, no tarball
    assert [p.name for p in root.iterdir()] == [f"ohif-{VERSION}"]


def test_full_keeps_the_optional_parts_but_never_the_bundled_config(tmp_path: Path) -> None:
    package, integrity = tarball(tmp_path / "p.tgz", GOOD)
    result = fetch(tmp_path / "root", tarball=package, version=VERSION, integrity=integrity, full=True)
    assert {"ort/ort-wasm.wasm", "dicom-microscopy-viewer/viewer.js"} <= set(result.bundle.files)
    assert "app-config.js" not in result.bundle.files and result.bundle.full


def test_a_second_fetch_does_nothing_and_a_damaged_build_is_replaced(tmp_path: Path) -> None:
    package, integrity = tarball(tmp_path / "p.tgz", GOOD)
    root = tmp_path / "root"
    fetch(root, tarball=package, version=VERSION, integrity=integrity)
    # intact: nothing is read, not even the tarball
    again = fetch(root, tarball=tmp_path / "absent.tgz", version=VERSION, integrity=integrity)
    assert not again.installed
    target = build_dir(root, VERSION)
    (target / "app.bundle.css").write_bytes(b"body{background:url(https://tracker.example)}")
    assert verify(load_bundle(target, version=VERSION, integrity=integrity)) == ["modified: app.bundle.css"]
    repaired = fetch(root, tarball=package, version=VERSION, integrity=integrity)
    assert repaired.installed and verify(repaired.bundle) == []
    assert (target / "app.bundle.css").read_bytes() == b"body{}"


def test_a_tarball_with_another_digest_is_refused(tmp_path: Path) -> None:
    package, _ = tarball(tmp_path / "p.tgz", GOOD)
    root = tmp_path / "root"
    with pytest.raises(FetchError, match="integrity"):
        fetch(root, tarball=package, version=VERSION, integrity=sri(b"something else"))
    assert not root.exists() or list(root.iterdir()) == []


@pytest.mark.parametrize("member", [
    "package/dist/../../escaped.txt",
    "package/dist/assets/../../../escaped.txt",
    "package/dist/a\\b.js",
    "package/dist/.hidden",
])
def test_unsafe_names_fail_the_whole_install(tmp_path: Path, member: str) -> None:
    package, integrity = tarball(tmp_path / "p.tgz", {**GOOD, member: b"x"})
    root = tmp_path / "root"
    with pytest.raises(FetchError, match="unsafe file name"):
        fetch(root, tarball=package, version=VERSION, integrity=integrity)
    assert not build_dir(root, VERSION).exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert list(root.iterdir()) == []


def test_links_fail_the_whole_install(tmp_path: Path) -> None:
    package, integrity = tarball(tmp_path / "p.tgz", GOOD, links={"passwd": "/etc/passwd"})
    with pytest.raises(FetchError, match="not a regular file"):
        fetch(tmp_path / "root", tarball=package, version=VERSION, integrity=integrity)


def test_a_package_without_index_html_is_no_viewer(tmp_path: Path) -> None:
    package, integrity = tarball(tmp_path / "p.tgz", {"app.js": b"//"})
    with pytest.raises(FetchError, match=r"index\.html"):
        fetch(tmp_path / "root", tarball=package, version=VERSION, integrity=integrity)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A registry on loopback: ``routes`` maps request paths to bodies (404 otherwise)."""
    routes: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = routes.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_download_from_the_registry_checks_the_metadata_and_the_bytes(
    tmp_path: Path, registry: tuple[str, dict[str, bytes]],
) -> None:
    url, routes = registry
    package, integrity = tarball(tmp_path / "p.tgz", GOOD)
    metadata = {"name": "@ohif/app", "version": VERSION,
                "dist": {"integrity": integrity, "tarball": f"{url}/@ohif/app/-/app-{VERSION}.tgz"}}
    routes[f"/@ohif%2Fapp/{VERSION}"] = json.dumps(metadata).encode()
    routes[f"/@ohif/app/-/app-{VERSION}.tgz"] = package.read_bytes()
    result = fetch(tmp_path / "root", registry=url, version=VERSION, integrity=integrity)
    assert result.installed and "index.html" in result.bundle.files

    # the registry announcing another digest than the pinned one: refused before download
    with pytest.raises(FetchError, match="announces integrity"):
        tarball_url(url, VERSION, sri(b"pinned elsewhere"))
    # the registry serving other bytes than it announces: refused after download
    routes[f"/@ohif/app/-/app-{VERSION}.tgz"] = tarball(tmp_path / "q.tgz", {**GOOD, "evil.js": b"x"})[0].read_bytes()
    with pytest.raises(FetchError, match="does not match the pinned integrity"):
        fetch(tmp_path / "other", registry=url, version=VERSION, integrity=integrity)
    assert not build_dir(tmp_path / "other", VERSION).exists()


def test_serve_looks_in_the_data_folder_then_the_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle_module, "default_root", lambda: tmp_path / "nowhere")
    data = tmp_path / "data"
    assert find_bundle(data) is None
    assert "coffre viewer fetch" in status_line(data, "http://127.0.0.1:8042")
    # a build for this archive only, under DATA/viewer, with the pinned version
    target = build_dir(data / "viewer")
    target.mkdir(parents=True)
    (target / "index.html").write_bytes(INDEX)
    bundle_module.write_manifest(target, files={"index.html": hashlib.sha256(INDEX).hexdigest()}, full=False)
    found = find_bundle(data)
    assert found is not None and found.path == target and found.version == OHIF_VERSION
    assert "OHIF 3." in status_line(data, "http://127.0.0.1:8042")


# -- the real build ----------------------------------------------------------------------


def test_the_installed_build_is_the_pinned_one_and_intact(viewer_bundle: Bundle) -> None:
    assert viewer_bundle.version == OHIF_VERSION and viewer_bundle.integrity == OHIF_INTEGRITY
    assert "index.html" in viewer_bundle.files and "app-config.js" not in viewer_bundle.files
    assert not any(name.startswith("ort/") or name.endswith(".map") for name in viewer_bundle.files)
    assert verify(viewer_bundle) == []


def test_fetch_again_is_a_verified_no_op(viewer_bundle: Bundle) -> None:
    """The CLI finds the build (no network: an unreachable registry is given)."""
    dest = viewer_bundle.path.parent
    out = subprocess.run([COFFRE, "viewer", "fetch", "--dest", str(dest), "--registry", "http://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "already installed and intact" in out.stdout
    status = subprocess.run([COFFRE, "viewer", "status"], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "intact" in status.stdout, status.stdout + status.stderr
