"""``coffre viewer``: install and check the OHIF viewer build (docs/viewer.md).

``fetch`` is the only command that uses the network, and only the npm registry;
``coffre serve`` finds the installed build without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from coffre.cli.common import _progress, _typer, err, out
from coffre.viewer.bundle import (
    OHIF_PACKAGE,
    OHIF_VERSION,
    build_dir,
    default_root,
    find_bundle,
    search_roots,
    verify,
)

viewer_app = _typer("The OHIF viewer served by Coffre.")


@viewer_app.command()
def fetch(
    dest: Annotated[Path | None, typer.Option(
        "--dest", help="Folder to install into (default: the virtualenv's share/coffre, "
                       "else ~/.cache/coffre). Use DATA/viewer for one archive only.",
    )] = None,
    tarball: Annotated[Path | None, typer.Option(
        "--tarball", help="Install from this .tgz instead of downloading it (same integrity check).",
    )] = None,
    full: Annotated[bool, typer.Option(
        "--full", help="Keep the optional parts (AI segmentation runtime, microscopy viewer, source maps).",
    )] = False,
    force: Annotated[bool, typer.Option("--force", help="Reinstall even if an intact build is there.")] = False,
    registry: Annotated[str, typer.Option(
        "--registry", envvar=["npm_config_registry", "NPM_CONFIG_REGISTRY"], help="npm registry URL.",
    )] = "https://registry.npmjs.org",
) -> None:
    """Download the pinned OHIF build, verify its integrity and install its dist/ (idempotent)."""
    from coffre.viewer.fetch import FetchError, installed
    from coffre.viewer.fetch import fetch as run_fetch

    root = (dest if dest is not None else default_root()).expanduser().resolve()
    bundle = None if force else installed(root, full=full)
    what = "already installed and intact"
    if bundle is None:
        try:
            with _progress("download") as progress:
                result = run_fetch(root, registry=registry, tarball=tarball, full=full, force=True,
                                   progress=progress)
        except (FetchError, OSError) as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(1) from None
        bundle, what = result.bundle, "installed"
    out.print(f"{OHIF_PACKAGE}@{bundle.version} {what}: {escape(str(bundle.path))} "
              f"({len(bundle.files)} files{', full' if bundle.full else ''})", soft_wrap=True)


@viewer_app.command()
def status(
    data: Annotated[Path | None, typer.Option(
        "--data", "-d", help="The archive's data folder (its DATA/viewer is searched first).",
    )] = None,
) -> None:
    """Show which viewer build `coffre serve` would use and re-hash its files; exit 1 if none or damaged."""
    folder = (data or Path.cwd()).resolve()
    bundle = find_bundle(folder)
    if bundle is None:
        places = ", ".join(str(build_dir(r)) for r in search_roots(folder))
        err.print(f"OHIF {OHIF_VERSION} is not installed (looked in {escape(places)}); "
                  "run `coffre viewer fetch`")
        raise typer.Exit(1)
    problems = verify(bundle)
    out.print(f"{OHIF_PACKAGE}@{bundle.version} at {escape(str(bundle.path))}: {len(bundle.files)} files, "
              f"{'damaged' if problems else 'intact'}", soft_wrap=True)
    for problem in problems[:50]:
        out.print(f"  {escape(problem)}")
    if problems:
        raise typer.Exit(1)
