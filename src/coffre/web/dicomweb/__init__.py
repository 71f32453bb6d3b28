"""DICOMweb (PS3.18): STOW-RS, QIDO-RS, WADO-RS, rendered resources and WADO-URI.

One module per service, each with its own ``router``; this package assembles them
under the configured base path (``http.dicomweb_base``).
"""

from __future__ import annotations

from fastapi import APIRouter

from coffre.web.dicomweb import qido, rendered, stow, wado, wado_uri

router = APIRouter(tags=["DICOMweb"])
for _module in (stow, qido, wado, rendered, wado_uri):
    router.include_router(_module.router)

__all__ = ["router"]
