"""The OHIF viewer that Coffre serves: fetching a pinned build, finding it, configuring it.

- :mod:`coffre.viewer.bundle`: the pinned package, where installed builds live, their
  manifest (every file with its SHA-256), finding one at serve time (never a download);
- :mod:`coffre.viewer.fetch`: ``coffre viewer fetch``: download from the npm registry,
  verify the pinned Subresource Integrity digest, extract ``dist/`` safely;
- :mod:`coffre.viewer.config`: OHIF's ``app-config.js``, generated per session
  (:func:`viewer_config`).

Nothing here imports FastAPI: the HTTP side is :mod:`coffre.web.viewer`.
"""

from __future__ import annotations

from coffre.viewer.bundle import (
    OHIF_INTEGRITY,
    OHIF_PACKAGE,
    OHIF_VERSION,
    Bundle,
    default_root,
    find_bundle,
    search_roots,
)
from coffre.viewer.config import viewer_config

__all__ = [
    "OHIF_INTEGRITY",
    "OHIF_PACKAGE",
    "OHIF_VERSION",
    "Bundle",
    "default_root",
    "find_bundle",
    "search_roots",
    "viewer_config",
]
