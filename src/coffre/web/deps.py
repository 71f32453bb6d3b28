"""FastAPI dependencies: the context of the app and the actor of a request.

The actor is built once per request from its bearer token (``services.tokens``);
routes pass it to exactly one service call, which authorizes and audits.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from coffre.app import Context
from coffre.model import Actor
from coffre.services.tokens import authenticate


def get_context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def get_actor(request: Request) -> Actor:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    address = request.client.host if request.client else ""
    return authenticate(get_context(request), bearer, address=address)


ContextDep = Annotated[Context, Depends(get_context)]
ActorDep = Annotated[Actor, Depends(get_actor)]
