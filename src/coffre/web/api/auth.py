"""REST API: password login of built-in users, logout, who am I (``/api/auth``).

- ``POST /api/auth/login`` ``{"username", "password"}`` → ``{"access_token",
  "token_type": "Bearer", "expires_in"}``. Every failure — wrong password, unknown or
  disabled user, locked account — is the same 401 with the same body, so that the
  answer never tells whether a user exists (docs/authentication.md).
- ``POST /api/auth/logout`` revokes the presented access token (204).
- ``GET /api/auth/me``: the caller's user name, subject, roles and facilities.
- ``GET /api/auth/jwks``: the public key of Coffre's tokens (RFC 7517), for services
  that verify them.

The login body is read with a bound (:data:`MAX_LOGIN_BODY`) before it is parsed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from coffre.errors import BadRequest, TooLarge
from coffre.services import auth
from coffre.services.users import MAX_PASSWORD_LENGTH
from coffre.web.deps import ActorDep, ContextDep, bearer_token, client_address, get_context

router = APIRouter(tags=["auth"])

MAX_LOGIN_BODY = 8192
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class LoginRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth 2.0 token type
    expires_in: int


class Me(BaseModel):
    username: str
    subject: str
    kind: str
    roles: list[str]
    #: slugs of the caller's facilities; ``facility`` is the one it acts for
    facilities: list[str]
    facility: str | None


async def _bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise TooLarge(f"the request body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the request body exceeds {limit} bytes")
    return bytes(body)


@router.post(
    "/auth/login",
    summary="Password login of a built-in user: a signed access token",
    response_model=TokenResponse,
    responses={401: {"description": "login failed (whatever the reason)"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": LoginRequest.model_json_schema()}}}},
)
async def login(request: Request) -> JSONResponse:
    ctx = get_context(request)
    body = await _bounded_body(request, MAX_LOGIN_BODY)
    try:
        credentials = LoginRequest.model_validate_json(body)
    except ValidationError:
        raise BadRequest('expected a JSON object {"username": …, "password": …}') from None
    issued = await run_in_threadpool(
        auth.login, ctx, credentials.username, credentials.password, address=client_address(request))
    answer = TokenResponse(access_token=issued.access_token, token_type=issued.token_type,
                           expires_in=issued.expires_in)
    return JSONResponse(answer.model_dump(), headers=_NO_STORE)


@router.post("/auth/logout", status_code=204, summary="Revoke the presented access token")
def logout(request: Request, ctx: ContextDep) -> Response:
    token = bearer_token(request)
    address = client_address(request)
    if token is None or not auth.looks_like_jwt(token):
        auth.authenticate(ctx, token, address=address)  # 401 (audited) unless a valid API token
        raise BadRequest("only access tokens log out; facility API tokens are revoked with `coffre token revoke`")
    auth.logout(ctx, token, address=address)
    return Response(status_code=204)


@router.get("/auth/me", summary="The caller: user name, roles, facilities", response_model=Me)
def me(actor: ActorDep) -> Me:
    return Me(
        username=actor.name, subject=actor.subject, kind=actor.kind.value,
        roles=sorted(r.value for r in actor.roles),
        facilities=sorted({f.slug for f in actor.facilities} | ({actor.facility.slug} if actor.facility else set())),
        facility=actor.facility.slug if actor.facility else None,
    )


@router.get("/auth/jwks", summary="Public key of the access tokens Coffre signs (RFC 7517)")
def jwks(ctx: ContextDep) -> dict[str, Any]:
    return auth.public_jwks(ctx)
