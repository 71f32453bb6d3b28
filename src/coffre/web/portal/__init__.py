"""The territory portal and the OHIF viewer, served from Coffre's origin (being written)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)

__all__ = ["router"]
