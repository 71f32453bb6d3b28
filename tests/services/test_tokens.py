"""API tokens: created once in clear, stored hashed, refused when unknown or revoked."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from coffre.app import Context
from coffre.index.engine import Database
from coffre.index.schema import api_token, audit_event
from coffre.model import Actor, ActorKind, Permission
from coffre.services import facilities
from coffre.services.tokens import NotAuthenticated, authenticate, create_token, revoke_token
from coffre.settings import Settings
from coffre.storage.memory import MemoryBlobStore


@pytest.fixture
def ctx(database: Database, tmp_path: Path) -> Context:
    ctx = Context(settings=Settings(data_dir=tmp_path), db=database, blobs=MemoryBlobStore())
    facilities.add_facility(ctx, Actor.system("t"), slug="site-a", name="A", issuer="A")
    return ctx


def test_token_authenticates_as_a_client_of_its_facility(ctx: Context) -> None:
    token = create_token(ctx, Actor.system("t"), facility_slug="site-a", name="pacs",
                         permissions=frozenset({Permission.QUERY}))
    actor = authenticate(ctx, token, address="127.0.0.1")
    assert actor.kind is ActorKind.CLIENT
    assert actor.facility is not None and actor.facility.slug == "site-a"
    assert actor.permissions == frozenset({Permission.QUERY})


def test_only_the_hash_is_stored(ctx: Context) -> None:
    token = create_token(ctx, Actor.system("t"), facility_slug="site-a", name="pacs")
    with ctx.db.read() as tx:
        stored = tx.execute(select(api_token.c.token_hash)).scalar_one()
    assert token not in stored and len(stored) == 64 and len(token) > 40


@pytest.mark.parametrize("token", [None, "", "cof_unknown", "x" * 10_000])
def test_unknown_tokens_are_refused_and_audited(ctx: Context, token: str | None) -> None:
    with pytest.raises(NotAuthenticated):
        authenticate(ctx, token, address="10.0.0.9")
    with ctx.db.read() as tx:
        events = tx.execute(select(audit_event).where(audit_event.c.action == "authenticate")).all()
    assert [(e.outcome, e.actor_address) for e in events] == [("refused", "10.0.0.9")]


def test_revoked_token_is_refused(ctx: Context) -> None:
    token = create_token(ctx, Actor.system("t"), facility_slug="site-a", name="pacs")
    authenticate(ctx, token, address="")
    revoke_token(ctx, Actor.system("t"), facility_slug="site-a", name="pacs")
    with pytest.raises(NotAuthenticated):
        authenticate(ctx, token, address="")
