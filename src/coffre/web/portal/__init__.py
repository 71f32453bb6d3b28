"""The territory portal and the OHIF viewer, served from Coffre's origin.

For now: the sign-in page that opens a viewer session (:mod:`.session`) and the viewer
itself (:mod:`coffre.web.viewer`, a root fallback that claims only its own paths, so it
stays last). The portal's pages come next.
"""

from __future__ import annotations

from fastapi import APIRouter

from coffre.web import viewer
from coffre.web.portal import admin, auth_pages, layout, patients, session, share

router = APIRouter(include_in_schema=False)
router.include_router(session.router)
router.include_router(share.router)
router.include_router(layout.router)
router.include_router(auth_pages.router)
router.include_router(patients.router)
router.include_router(admin.router)
# last: the viewer answers only the paths it claims, the rest falls through
router.include_router(viewer.router)

__all__ = ["router"]
