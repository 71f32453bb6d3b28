"""The FastAPI application: health check and DICOMweb (PS3.18) under one base path."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from coffre import __version__
from coffre.app import Context
from coffre.services.health import health
from coffre.web import errors
from coffre.web.api import router as api_router
from coffre.web.dicomweb import router as dicomweb_router
from coffre.web.portal import router as portal_router


def create_app(ctx: Context) -> FastAPI:
    s = ctx.settings.http
    app = FastAPI(
        title="Coffre",
        version=__version__,
        summary="Territorial imaging archive: DICOMweb (STOW-RS, QIDO-RS, WADO-RS, WADO-URI)",
        redoc_url=None,
    )
    app.state.ctx = ctx
    errors.install(app)
    origins = [o.strip() for o in s.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type"],
            expose_headers=["Warning", "ETag", "Content-Location", "Location"],
        )

    @app.get("/healthz", summary="Liveness and readiness of the index and the blob store")
    def healthz() -> JSONResponse:
        report = health(ctx)
        return JSONResponse(
            {"status": "ok" if report.ok else "unavailable", "index": report.index, "storage": report.storage},
            status_code=200 if report.ok else 503,
        )

    app.include_router(dicomweb_router, prefix=s.dicomweb_base)
    app.include_router(api_router, prefix="/api")
    app.include_router(portal_router)
    return app
