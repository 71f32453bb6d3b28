"""The territory portal, share-link pages and the OHIF viewer, served from Coffre's origin.

- :mod:`.auth_pages`: sign-in (built-in users, OpenID Connect), sign-out;
- :mod:`.patients`: search, a person's timeline, the grant dialogs;
- :mod:`.admin`: facilities and nodes, users, reconciliation, break-the-glass review,
  audit, usage;
- :mod:`.share`: a share link's recipient pages; :mod:`.session`: a viewer session from
  a pasted token (scripts, machine clients);
- :mod:`coffre.web.viewer`: the OHIF build (its study list at ``/``, studies under
  ``/viewer``), a root fallback that claims only its own paths, so it stays last.
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
