"""``coffre viewer fetch``: install the pinned OHIF build from the npm registry.

1. If ``ROOT/ohif-<version>/`` already holds a build whose manifest matches the pinned
   version and integrity and whose files all hash as recorded, nothing is downloaded.
2. The registry's metadata of the exact version (``GET {registry}/@ohif%2fapp/<version>``)
   must announce the pinned ``dist.integrity``; its ``dist.tarball`` is then downloaded
   (bounded size) while its SHA-512 is computed, and the tarball is refused unless that
   digest is the pinned one (npm's Subresource Integrity, ``sha512-<base64>``). A local
   tarball (``--tarball``, for hosts without registry access) is held to the same digest.
3. Only regular files under ``package/dist/`` are extracted, each name checked
   (no absolute path, no ``..``, no link, no device), within bounds on count and size,
   into a temporary sibling folder; the manifest (every file's SHA-256) is written last
   and the folder renamed into place, so an interrupted fetch leaves no half build.

Nothing here runs at ``coffre serve`` time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from coffre.viewer.bundle import (
    EXCLUDED_FILES,
    MANIFEST,
    OHIF_INTEGRITY,
    OHIF_PACKAGE,
    OHIF_VERSION,
    Bundle,
    BundleError,
    build_dir,
    is_optional,
    load_bundle,
    safe_relative,
    verify,
    write_manifest,
)

DEFAULT_REGISTRY = "https://registry.npmjs.org"
#: Bounds: the 3.13.2 tarball is 50 MB packed, 213 MB and 249 files unpacked.
MAX_TARBALL_BYTES = 256 * 1024**2
MAX_EXTRACTED_BYTES = 1024**3
MAX_FILES = 20_000
TIMEOUT_SECONDS = 60.0
_PREFIX = "package/dist/"

Progress = Callable[[int, int], None]


class FetchError(Exception):
    """The build could not be fetched or verified; nothing was installed."""


@dataclass(frozen=True, slots=True)
class FetchResult:
    bundle: Bundle
    #: False when a verified build was already there (nothing downloaded)
    installed: bool
    #: files left out (optional parts, files for other hosts)
    skipped: int


def sri_digest(integrity: str) -> tuple[str, bytes]:
    """(hashlib algorithm, digest) of a Subresource Integrity value ``sha512-<b64>``."""
    algorithm, _, b64 = integrity.partition("-")
    if algorithm not in {"sha512", "sha384", "sha256"} or not b64:
        raise FetchError(f"unsupported integrity value {integrity!r}")
    try:
        return algorithm, base64.b64decode(b64, validate=True)
    except ValueError:
        raise FetchError(f"malformed integrity value {integrity!r}") from None


def fetch(
    root: Path,
    *,
    registry: str = DEFAULT_REGISTRY,
    tarball: Path | None = None,
    full: bool = False,
    force: bool = False,
    version: str = OHIF_VERSION,
    integrity: str = OHIF_INTEGRITY,
    progress: Progress | None = None,
) -> FetchResult:
    """Install the pinned build into ``root/ohif-<version>`` (idempotent)."""
    if not force:
        existing = installed(root, full=full, version=version, integrity=integrity)
        if existing is not None:
            return FetchResult(bundle=existing, installed=False, skipped=0)
    target = build_dir(root, version)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".ohif-{version}-", dir=root) as tmp:
        work = Path(tmp)
        if tarball is None:
            url = tarball_url(registry, version, integrity)
            tarball = work / "package.tgz"
            download(url, tarball, integrity, progress=progress)
        else:
            check_file_integrity(tarball, integrity)
        staged = work / "build"
        files, skipped = extract_dist(tarball, staged, full=full)
        write_manifest(staged, files=files, full=full, version=version, integrity=integrity)
        _replace(staged, target)
    return FetchResult(bundle=load_bundle(target, version=version, integrity=integrity),
                       installed=True, skipped=skipped)


def installed(root: Path, *, full: bool = False, version: str = OHIF_VERSION,
              integrity: str = OHIF_INTEGRITY) -> Bundle | None:
    """The intact build in ``root`` (every file hashed as its manifest says, and the
    optional parts there if ``full``), else None."""
    target = build_dir(root, version)
    if not (target / MANIFEST).is_file():
        return None
    try:
        bundle = load_bundle(target, version=version, integrity=integrity)
    except BundleError:
        return None
    if verify(bundle) or (full and not bundle.full):
        return None
    return bundle


def _replace(staged: Path, target: Path) -> None:
    """Move the complete build into place; an older or damaged one is removed first."""
    if target.exists():
        trash = target.with_name(f".{target.name}-old-{os.getpid()}")
        target.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    staged.rename(target)


# -- registry -------------------------------------------------------------------------


def _get(url: str) -> Any:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in {"https", "http"}:
        raise FetchError(f"refusing to fetch {url!r}: only http(s) URLs")
    request = urllib.request.Request(url, headers={  # noqa: S310 - scheme checked above
        "Accept": "application/json", "User-Agent": "coffre-viewer-fetch",
    })
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)  # noqa: S310
    except OSError as exc:
        raise FetchError(f"cannot reach {url}: {exc}") from None


def tarball_url(registry: str, version: str, integrity: str) -> str:
    """The tarball URL from the registry's metadata, which must announce ``integrity``."""
    name = urllib.parse.quote(OHIF_PACKAGE, safe="@")
    url = f"{registry.rstrip('/')}/{name}/{urllib.parse.quote(version)}"
    with _get(url) as response:
        raw = response.read(4 * 1024**2)
    try:
        doc = json.loads(raw)
        dist = doc["dist"]
        announced, location = dist["integrity"], dist["tarball"]
    except (ValueError, KeyError, TypeError):
        raise FetchError(f"{url}: unexpected registry metadata") from None
    if doc.get("version") != version:
        raise FetchError(f"{url}: the registry answered version {doc.get('version')!r}")
    if announced != integrity:
        raise FetchError(
            f"{url}: the registry announces integrity {announced}, but Coffre pins {integrity}; "
            "refusing to install (was the package republished?)"
        )
    if not isinstance(location, str):
        raise FetchError(f"{url}: no tarball URL")
    return location


def download(url: str, dest: Path, integrity: str, *, progress: Progress | None = None) -> None:
    """Download ``url`` to ``dest`` (bounded), refusing it unless it matches ``integrity``."""
    algorithm, expected = sri_digest(integrity)
    digest = hashlib.new(algorithm)
    with _get(url) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        if total > MAX_TARBALL_BYTES:
            raise FetchError(f"{url}: {total} bytes, more than the {MAX_TARBALL_BYTES} allowed")
        done = 0
        while chunk := response.read(1 << 20):
            done += len(chunk)
            if done > MAX_TARBALL_BYTES:
                raise FetchError(f"{url}: more than {MAX_TARBALL_BYTES} bytes")
            digest.update(chunk)
            out.write(chunk)
            if progress:
                progress(done, total or done)
    if digest.digest() != expected:
        raise FetchError(f"{url}: the download does not match the pinned integrity {integrity}")


def check_file_integrity(path: Path, integrity: str) -> None:
    algorithm, expected = sri_digest(integrity)
    digest = hashlib.new(algorithm)
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise FetchError(f"{path}: {exc}") from None
    if digest.digest() != expected:
        raise FetchError(f"{path} does not match the pinned integrity {integrity}")


# -- extraction -----------------------------------------------------------------------


def extract_dist(tarball: Path, dest: Path, *, full: bool = False) -> tuple[dict[str, str], int]:
    """Extract the regular files of ``package/dist/`` into ``dest``.

    Returns (relative name -> SHA-256, number of files left out). Any member that is
    not a plain file or folder, or whose name could escape ``dest``, fails the whole
    extraction; so do more than :data:`MAX_FILES` files or :data:`MAX_EXTRACTED_BYTES`.
    """
    dest.mkdir(parents=True)
    files: dict[str, str] = {}
    skipped = 0
    written = 0
    try:
        with tarfile.open(tarball, mode="r:gz") as archive:
            for member in _members(archive):
                if not member.name.startswith(_PREFIX):
                    continue
                name = member.name[len(_PREFIX):]
                if member.isdir():
                    continue
                if not member.isreg():
                    raise FetchError(f"{tarball}: {member.name} is not a regular file (link or device)")
                if name in EXCLUDED_FILES or (not full and is_optional(name)):
                    skipped += 1
                    continue
                clean = safe_relative(name)
                if clean is None:
                    raise FetchError(f"{tarball}: unsafe file name {member.name!r}")
                if clean in files:
                    raise FetchError(f"{tarball}: {member.name} appears twice")
                if len(files) >= MAX_FILES:
                    raise FetchError(f"{tarball}: more than {MAX_FILES} files")
                written += member.size
                if written > MAX_EXTRACTED_BYTES:
                    raise FetchError(f"{tarball}: more than {MAX_EXTRACTED_BYTES} bytes unpacked")
                source = archive.extractfile(member)
                if source is None:
                    raise FetchError(f"{tarball}: cannot read {member.name}")
                files[clean] = _write(source, dest / clean, member.size)
    except (OSError, tarfile.TarError) as exc:
        raise FetchError(f"{tarball}: extraction failed ({exc})") from None
    if "index.html" not in files:
        raise FetchError(f"{tarball}: no package/dist/index.html: not an OHIF build")
    return files, skipped


def _members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    try:
        yield from archive
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise FetchError(f"corrupt tarball: {exc}") from None


def _write(source: IO[bytes], path: Path, size: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    copied = 0
    with source, path.open("xb") as out:
        while chunk := source.read(1 << 20):
            copied += len(chunk)
            digest.update(chunk)
            out.write(chunk)
    if copied != size:
        raise FetchError(f"{path.name}: {copied} bytes instead of {size}")
    path.chmod(0o644)
    return digest.hexdigest()
