"""The one place where domain errors become HTTP responses (JSON with a reason).

Every ``CoffreError`` carries its HTTP status; request validation errors are 400;
anything unexpected is logged (without request data) and answered 500 with a generic
reason — the tests treat any 500 as a defect.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from coffre.errors import CoffreError

log = logging.getLogger(__name__)


def error_response(status: int, error: str, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "reason": reason}, status_code=status, headers=headers)


#: how the OpenAPI description gives the 400 of a request validation error
_VALIDATION_400 = {"description": "Invalid parameters: a JSON error with a reason"}


def _openapi_without_422(app: FastAPI) -> None:
    """FastAPI documents 422 for requests it validates; this app answers them 400.

    The generated description is corrected once, when first built: each 422 becomes
    (or joins) the operation's 400, and the validation error schemas go.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                responses = operation.get("responses") if isinstance(operation, dict) else None
                if isinstance(responses, dict) and responses.pop("422", None) is not None:
                    responses.setdefault("400", dict(_VALIDATION_400))
        schemas = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):  # unless still referenced
            if name in schemas and f'"#/components/schemas/{name}"' not in json.dumps(schema):
                del schemas[name]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    _openapi_without_422(app)

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
