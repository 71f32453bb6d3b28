"""DESIGN 3, checked on the source: who may read the environment, who may import what.

- No module reads the process environment on its own: ``settings.load_settings`` takes
  it as an argument and the CLI adapter (``cli/common.py``) is the one place that passes
  ``os.environ`` in.
- Arrows point down only: the lower layers never import the adapters; ``services/``
  never imports pynetdicom, FastAPI, boto3 or SQLAlchemy; ``storage/`` never imports
  pydicom; the pure layer does no network or database IO.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "coffre"
#: the adapter that hands ``os.environ`` to ``load_settings``
ENVIRONMENT_READERS = {"cli/common.py"}

ADAPTERS = ("coffre.net", "coffre.web", "coffre.cli")
LIBRARIES_OF_ADAPTERS_AND_PORTS = ("pynetdicom", "fastapi", "starlette", "uvicorn", "boto3", "sqlalchemy", "alembic")


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), ast.parse(path.read_text(encoding="utf-8"), str(path))


def imported(tree: ast.Module) -> set[str]:
    """Every module name imported anywhere in ``tree`` (function-level imports too)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def environment_reads(tree: ast.Module) -> list[str]:
    """``os.environ`` / ``os.getenv`` / ``os.putenv`` uses, and imports of them."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                and node.attr in {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}:
            found.append(f"os.{node.attr} (line {node.lineno})")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [f"from os import {a.name} (line {node.lineno})" for a in node.names
                      if a.name in {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}]
    return found


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_scan_sees_the_package() -> None:
    found = dict(modules())
    assert {"settings.py", "cli/common.py", "services/ingest.py", "storage/filesystem.py"} <= set(found)
    # the scan finds what it looks for: the CLI adapter does pass os.environ in
    assert environment_reads(found["cli/common.py"])
    assert "coffre.settings.load_settings" in imported(found["cli/common.py"])


def test_no_module_reads_the_environment_on_its_own() -> None:
    offenders = {name: reads for name, tree in modules()
                 if name not in ENVIRONMENT_READERS and (reads := environment_reads(tree))}
    assert offenders == {}


PURE_FORBIDDEN = (*ADAPTERS, "coffre.services", "coffre.index", *LIBRARIES_OF_ADAPTERS_AND_PORTS)


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("services/", (*ADAPTERS, "pynetdicom", "fastapi", "starlette", "boto3", "sqlalchemy")),
        ("index/", (*ADAPTERS, "coffre.services", "pynetdicom", "fastapi")),
        ("storage/", (*ADAPTERS, "coffre.services", "coffre.index", "pydicom")),
        ("codecs/", (*ADAPTERS, "coffre.services", "coffre.index", "sqlalchemy")),
        ("dicom/", (*PURE_FORBIDDEN, "coffre.storage")),
        ("model.py", PURE_FORBIDDEN),
        ("errors.py", PURE_FORBIDDEN),
        ("settings.py", PURE_FORBIDDEN),
    ],
)
def test_arrows_point_down_only(layer: str, forbidden: tuple[str, ...]) -> None:
    checked = 0
    offenders = {}
    for name, tree in modules():
        if not name.startswith(layer):
            continue
        checked += 1
        if bad := sorted(m for m in imported(tree) if _under(m, forbidden)):
            offenders[name] = bad
    assert checked, f"no module under {layer}"
    assert offenders == {}
