"""FastAPI dependencies: the context of the app and the actor of a request.

The actor is built once per request from its ``Authorization: Bearer …`` credential:
an access token (a JWT signed by Coffre for a built-in user, or by the configured
OpenID Connect provider; ``services.auth``) or a facility API token
(``services.tokens``). Anything else — no credential, an unknown, expired, revoked or
forged token — is the same 401 with ``WWW-Authenticate: Bearer`` (set by
``web/errors.py``), audited with its reason category. Routes pass the actor to exactly
one service call, which authorizes and audits.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from coffre.app import Context
from coffre.model import Actor
from coffre.services.auth import authenticate


def get_context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def bearer_token(request: Request) -> str | None:
    """The credential of an ``Authorization: Bearer <token>`` header (RFC 6750 2.1), or None."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def get_actor(request: Request) -> Actor:
    return authenticate(get_context(request), bearer_token(request), address=client_address(request))


ContextDep = Annotated[Context, Depends(get_context)]
ActorDep = Annotated[Actor, Depends(get_actor)]
