"""The pinned OHIF build, where installed copies live, and their manifest.

An installed build is a folder ``ROOT/ohif-<version>/`` holding the files of the npm
package's ``dist/`` (less the optional parts, see :data:`OPTIONAL_PARTS`) and a manifest,
``.coffre-manifest.json``, written last by ``coffre viewer fetch``: the package, version
and Subresource Integrity digest of the tarball it came from, and every file with its
SHA-256. A folder without a valid manifest for the pinned version is not a build.

Coffre serves only the files the manifest lists (never a directory listing, never a
file added later), and :func:`verify` re-hashes them (``coffre viewer verify``).

Where builds are looked for, in order (:func:`search_roots`): ``DATA/viewer`` (a build
for one archive, ``coffre viewer fetch --dest DATA/viewer``), then :func:`default_root`.
Nothing here downloads: that is :mod:`coffre.viewer.fetch`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

#: The npm package and the exact version served; upgrading is a reviewed change of
#: these three lines (check the new version in the browser tests).
OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
#: Subresource Integrity of ``ohif-app-3.13.2.tgz`` (the registry's ``dist.integrity``,
#: recorded when the version was pinned): a tarball with any other digest is refused.
OHIF_INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
)

MANIFEST = ".coffre-manifest.json"
MANIFEST_FORMAT = 1

#: Parts of ``dist/`` left out unless ``--full``: onnxruntime-web (``ort/``, ~136 MB,
#: only for the AI-assisted segmentation tools), the slide microscopy viewer (~20 MB,
#: only for the microscopy mode, SM images) and source maps (``*.map``).
OPTIONAL_PARTS: tuple[str, ...] = ("ort/", "dicom-microscopy-viewer/")
#: Never installed, even with ``--full``: Coffre generates ``app-config.js``; the others
#: serve other hosts (Netlify, ``serve``, the Google Cloud sample) or OHIF's own OpenID
#: Connect client, which Coffre does not use (sessions are Coffre's).
EXCLUDED_FILES: frozenset[str] = frozenset({
    "app-config.js", "_headers", "_redirects", "serve.json", "google.js",
    "oidc-client.min.js", "silent-refresh.html",
})

#: Webpack output names carry a content hash of 16 hex digits: ``2493.bundle.c4af…75.js``,
#: ``app.bundle.0f61…e9.js``, ``0ddf166f7a343eda.wasm``, ``a34f9d1faa5f3315.woff2``.
_HASHED = re.compile(r"(^|\.)[0-9a-f]{16}\.(js|css|wasm|woff2?|ttf|png|svg)$")
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")


def is_hashed_asset(name: str) -> bool:
    """A file whose name changes whenever its content does (cacheable forever)."""
    return bool(_HASHED.search(PurePosixPath(name).name))


def is_optional(name: str) -> bool:
    return name.endswith(".map") or any(name.startswith(p) for p in OPTIONAL_PARTS)


def safe_relative(name: str) -> str | None:
    """``name`` as a clean relative POSIX path, or None if it could escape its folder
    (absolute, ``..``, empty parts, backslashes, control or unusual characters)."""
    if not name or len(name) > 255 or name.startswith("/") or "\\" in name:
        return None
    parts = name.split("/")
    if any(not _SAFE_PART.match(p) or p in {".", ".."} for p in parts):
        return None
    return "/".join(parts)


def default_root() -> Path:
    """Where ``coffre viewer fetch`` installs by default and ``coffre serve`` looks.

    Inside a virtual environment (the documented installation), ``<venv>/share/coffre``:
    the build belongs to the installation whose code pins its version, and goes away
    with it. Otherwise (a system or user interpreter, whose prefix is usually not
    writable), ``~/.cache/coffre``.
    """
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "share" / "coffre"
    return Path.home() / ".cache" / "coffre"


def search_roots(data_dir: Path) -> list[Path]:
    """Folders searched for ``ohif-<version>/``, first match wins."""
    return [data_dir / "viewer", default_root()]


def build_dir(root: Path, version: str = OHIF_VERSION) -> Path:
    return root / f"ohif-{version}"


@dataclass(frozen=True, slots=True)
class Bundle:
    """An installed, manifest-described OHIF build."""

    path: Path
    package: str
    version: str
    integrity: str
    #: relative POSIX path -> SHA-256 (hex) of every installed file
    files: Mapping[str, str]
    full: bool

    def file(self, name: str) -> Path | None:
        """The path of a listed file, else None (unlisted names are never served)."""
        return self.path / name if name in self.files else None

    @property
    def top_level(self) -> frozenset[str]:
        """First path segments of the listed files (``assets``, ``app.bundle.….js`` …)."""
        return frozenset(n.split("/", 1)[0] for n in self.files)


class BundleError(Exception):
    """An installed build is unusable (no manifest, another version, bad content)."""


def load_bundle(path: Path, *, version: str = OHIF_VERSION, integrity: str = OHIF_INTEGRITY) -> Bundle:
    """Read and check the manifest of the build in ``path``."""
    manifest = path / MANIFEST
    try:
        doc: Any = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: no {MANIFEST} (incomplete install)") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{manifest}: unreadable ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise BundleError(f"{manifest}: unknown manifest format")
    if doc.get("package") != OHIF_PACKAGE or doc.get("version") != version:
        raise BundleError(f"{manifest}: {doc.get('package')}@{doc.get('version')}, expected {OHIF_PACKAGE}@{version}")
    if doc.get("integrity") != integrity:
        raise BundleError(f"{manifest}: tarball integrity differs from the pinned one")
    raw = doc.get("files")
    if not isinstance(raw, dict) or "index.html" not in raw:
        raise BundleError(f"{manifest}: no file list with index.html")
    files: dict[str, str] = {}
    for name, digest in raw.items():
        clean = safe_relative(name) if isinstance(name, str) else None
        if clean is None or clean != name or not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise BundleError(f"{manifest}: invalid entry {name!r}")
        files[name] = digest
    return Bundle(path=path, package=OHIF_PACKAGE, version=version, integrity=integrity,
                  files=files, full=bool(doc.get("full", False)))


def write_manifest(path: Path, *, files: Mapping[str, str], full: bool,
                   version: str = OHIF_VERSION, integrity: str = OHIF_INTEGRITY) -> None:
    doc = {
        "format": MANIFEST_FORMAT,
        "package": OHIF_PACKAGE,
        "version": version,
        "integrity": integrity,
        "full": full,
        "files": dict(sorted(files.items())),
    }
    (path / MANIFEST).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def find_bundle(data_dir: Path) -> Bundle | None:
    """The installed pinned build, looked up in :func:`search_roots` (no network)."""
    for root in search_roots(data_dir):
        candidate = build_dir(root)
        if (candidate / MANIFEST).is_file():
            try:
                return load_bundle(candidate)
            except BundleError:
                continue
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(bundle: Bundle) -> list[str]:
    """Problems of an installed build: missing or modified files (empty when intact)."""
    problems = []
    for name, expected in sorted(bundle.files.items()):
        path = bundle.path / name
        if not path.is_file() or path.is_symlink():
            problems.append(f"missing: {name}")
        elif sha256_file(path) != expected:
            problems.append(f"modified: {name}")
    return problems


def fetch_hint() -> str:
    """What an operator runs to install the viewer (shown by serve and the routes)."""
    return f"run `coffre viewer fetch` to install OHIF {OHIF_VERSION} (one download, verified)"


def status_line(data_dir: Path, http_url: str) -> str:
    """One line for ``coffre serve`` to print at start-up: where the viewer is, or how
    to install it (serve never downloads it)."""
    bundle = find_bundle(data_dir)
    if bundle is None:
        return f"Viewer: not installed; {fetch_hint()}"
    base = http_url.rstrip('/')
    return f"Viewer: OHIF {bundle.version} at {base}/ (portal: {base}/portal/login)"
