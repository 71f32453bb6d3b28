"""The FastAPI application. At this stage it answers a health check only."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from coffre import __version__
from coffre.app import Context
from coffre.services.health import health


def create_app(ctx: Context) -> FastAPI:
    app = FastAPI(title="Coffre", version=__version__, docs_url=None, redoc_url=None)

    @app.get("/healthz", summary="Liveness and readiness of the index and the blob store")
    def healthz() -> JSONResponse:
        report = health(ctx)
        return JSONResponse(
            {"status": "ok" if report.ok else "unavailable", "index": report.index, "storage": report.storage},
            status_code=200 if report.ok else 503,
        )

    return app
