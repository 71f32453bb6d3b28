"""EXPERIMENT, not Coffre: ``coffre serve`` with proposed listener changes patched in-process.

Used by ``query.py --experiment`` and ``retrieve.py --experiment`` to measure what a
proposed change would gain, without touching ``src/``. ``BENCH_COFFRE_PATCHES`` (comma
separated, default ``shallow-contexts``) selects the patches; there is one:

- ``shallow-contexts``: pynetdicom's ``RequestHandler._create_association`` deep-copies the
  AE's supported presentation contexts for every association (``transport.py``:
  ``deepcopy(self.server.contexts)``). Coffre supports ~204 storage SOP classes x 25
  transfer syntaxes, so each association re-creates and re-validates ~5,000 ``UID``
  objects (``UID.__new__`` + regex) before negotiation. Patched: a shallow copy of each
  context with a fresh transfer-syntax list (UIDs are immutable ``str``).

(An ``explicit-first`` patch measured here earlier is obsolete: since commit 796b38b the
listener prefers Explicit VR Little Endian itself, so C-GET no longer transcodes.)

Run as ``python benchmarks/_experiment_serve.py serve --data DIR`` (same CLI as ``coffre``).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pynetdicom.transport as transport


def _shallow_contexts(contexts: Any, memo: Any = None) -> Any:
    if not isinstance(contexts, list):
        return copy.deepcopy(contexts, memo)
    out = []
    for cx in contexts:
        new = copy.copy(cx)
        new._transfer_syntax = list(cx._transfer_syntax)
        out.append(new)
    return out


def apply(patches: set[str]) -> None:
    if "shallow-contexts" in patches:
        transport.deepcopy = _shallow_contexts  # type: ignore[attr-defined]


if __name__ == "__main__":
    apply(set(filter(None, os.environ.get("BENCH_COFFRE_PATCHES", "shallow-contexts").split(","))))
    from coffre.cli import main

    main()
