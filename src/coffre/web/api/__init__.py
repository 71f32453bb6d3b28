"""The REST API of the territory layer (``/api``): authentication, persons and
identity, grants, audit. One module per concept, each with its own ``router``.
"""

from __future__ import annotations

from fastapi import APIRouter

from coffre.web.api import audit, auth, grants, persons, shares

router = APIRouter()
for _module in (auth, persons, grants, audit, shares):
    router.include_router(_module.router)

__all__ = ["router"]
