"""The one place where domain errors become HTTP responses (JSON with a reason).

Every ``CoffreError`` carries its HTTP status; request validation errors are 400;
anything unexpected is logged (without request data) and answered 500 with a generic
reason — the tests treat any 500 as a defect.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from coffre.errors import CoffreError

log = logging.getLogger(__name__)


def error_response(status: int, error: str, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "reason": reason}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(CoffreError)
    async def _domain(_request: Request, exc: CoffreError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="coffre"'} if exc.http_status == 401 else None
        return error_response(exc.http_status, type(exc).__name__, exc.reason, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        return error_response(400, "InvalidRequest", "invalid parameters: " + ", ".join(fields))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "HTTPError", str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return error_response(500, "InternalError", "internal error")
