"""Built-in users: accounts, authorization of their management, passwords, lockout, demo users."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from coffre.app import Context
from coffre.errors import AlreadyExists, BadRequest, NotAuthorized, NotFound
from coffre.index import state
from coffre.index.engine import Database
from coffre.index.schema import audit_event, user_account
from coffre.model import Actor, Role
from coffre.services import facilities, users
from coffre.services.demo import (
    DEMO_MARKER,
    DEMO_USERS,
    DEMO_VERSION,
    FACILITIES,
    demo_users,
    load_demo_users,
)
from coffre.services.users import LOGIN_FAILED, LoginFailed
from coffre.settings import SecuritySettings, Settings
from coffre.storage.memory import MemoryBlobStore

OPERATOR = Actor.system("tests")
PASSWORD = "correct horse battery staple"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ctx(database: Database, tmp_path: Path, clock: Clock) -> Context:
    security = replace(SecuritySettings(), max_failed_logins=3, lockout_seconds=60)
    ctx = Context(settings=Settings(data_dir=tmp_path, security=security), db=database,
                  blobs=MemoryBlobStore(), clock=clock)
    for slug in ("site-a", "site-b"):
        facilities.add_facility(ctx, OPERATOR, slug=slug, name=slug.upper(), issuer=slug.upper())
    return ctx


def events(ctx: Context, action: str) -> list[tuple[str, str, str, str]]:
    with ctx.db.read() as tx:
        rows = tx.execute(select(audit_event).where(audit_event.c.action == action).order_by(audit_event.c.id))
        return [(r.outcome, r.actor_name, r.object_id, r.detail) for r in rows]


def add(ctx: Context, name: str, roles: set[Role], facs: list[str], actor: Actor = OPERATOR) -> users.UserRow:
    return users.create_user(ctx, actor, username=name, password=PASSWORD, roles=frozenset(roles), facilities=facs)


def as_user(ctx: Context, name: str) -> Actor:
    row = users.get_user(ctx, name)
    assert row is not None
    return Actor.for_user(name, name, row.roles, row.facilities, "10.0.0.5")


# -- accounts --------------------------------------------------------------------------


def test_create_user_stores_an_argon2id_hash_roles_facilities_and_audits(ctx: Context) -> None:
    user = add(ctx, "radio.a", {Role.RADIOLOGIST, Role.CLINICIAN}, ["site-b", "site-a"])

    assert user.roles == frozenset({Role.RADIOLOGIST, Role.CLINICIAN})
    assert [f.slug for f in user.facilities] == ["site-a", "site-b"]
    assert user.active and user.failed_logins == 0
    with ctx.db.read() as tx:
        row = tx.execute(select(user_account)).one()
    assert row.password_hash.startswith("$argon2id$") and PASSWORD not in row.password_hash
    assert PasswordHasher().verify(row.password_hash, PASSWORD)
    assert row.roles == "clinician,radiologist"
    [(outcome, actor, object_id, detail)] = events(ctx, "user-create")
    assert (outcome, actor, object_id) == ("success", "tests", "radio.a")
    assert '"roles":["clinician","radiologist"]' in detail and PASSWORD not in detail


@pytest.mark.parametrize("password", ["short", "x" * 11, "y" * 1025])
def test_password_policy_refuses_and_creates_nothing(ctx: Context, password: str) -> None:
    with pytest.raises(BadRequest, match="12 to 1024"):
        users.create_user(ctx, OPERATOR, username="bob", password=password, roles=frozenset({Role.AUDITOR}),
                          facilities=["site-a"])
    assert users.get_user(ctx, "bob") is None
    assert events(ctx, "user-create") == []


@pytest.mark.parametrize("name", ["", "Bob", "-bob", "bob smith", "bob/../x", "b" * 65, "bob#1"])
def test_invalid_user_names_are_refused(ctx: Context, name: str) -> None:
    with pytest.raises(BadRequest):
        add(ctx, name, {Role.AUDITOR}, ["site-a"])


def test_duplicate_user_and_unknown_facility(ctx: Context) -> None:
    add(ctx, "bob", {Role.AUDITOR}, ["site-a"])
    with pytest.raises(AlreadyExists):
        add(ctx, "bob", {Role.AUDITOR}, ["site-b"])
    with pytest.raises(NotFound, match="no facility"):
        add(ctx, "carol", {Role.AUDITOR}, ["nowhere"])
    assert users.get_user(ctx, "carol") is None


def test_parse_roles() -> None:
    assert users.parse_roles(["radiologist", " auditor ", ""]) == {Role.RADIOLOGIST, Role.AUDITOR}
    with pytest.raises(BadRequest, match="unknown role"):
        users.parse_roles(["root"])


def test_roles_facilities_disable_enable(ctx: Context) -> None:
    add(ctx, "bob", {Role.CLINICIAN}, ["site-a"])
    assert users.set_roles(ctx, OPERATOR, "bob", frozenset({Role.RADIOLOGIST})).roles == {Role.RADIOLOGIST}
    assert [f.slug for f in users.set_facilities(ctx, OPERATOR, "bob", ["site-b"]).facilities] == ["site-b"]
    users.disable(ctx, OPERATOR, "bob")
    row = users.get_user(ctx, "bob")
    assert row is not None and not row.active
    users.enable(ctx, OPERATOR, "bob")
    row = users.get_user(ctx, "bob")
    assert row is not None and row.active
    assert [e[0] for e in events(ctx, "user-roles")] == ["success"]
    assert [e[0] for e in events(ctx, "user-facilities")] == ["success"]
    assert len(events(ctx, "user-disable")) == 1 and len(events(ctx, "user-enable")) == 1
    with pytest.raises(NotFound):
        users.disable(ctx, OPERATOR, "nobody")


# -- who may manage whom ---------------------------------------------------------------


def test_a_facility_admin_manages_the_users_of_its_facility_only(ctx: Context) -> None:
    add(ctx, "admin.a", {Role.FACILITY_ADMIN}, ["site-a"])
    admin_a = as_user(ctx, "admin.a")

    add(ctx, "radio.a", {Role.RADIOLOGIST}, ["site-a"], actor=admin_a)
    users.set_roles(ctx, admin_a, "radio.a", frozenset({Role.RADIOLOGIST, Role.CLINICIAN}))
    with pytest.raises(NotAuthorized):
        add(ctx, "radio.b", {Role.RADIOLOGIST}, ["site-b"], actor=admin_a)
    with pytest.raises(NotAuthorized):  # no facility: territory-wide
        add(ctx, "floating", {Role.RADIOLOGIST}, [], actor=admin_a)
    with pytest.raises(NotAuthorized):  # cannot make a territory admin
        add(ctx, "boss", {Role.TERRITORY_ADMIN}, ["site-a"], actor=admin_a)
    with pytest.raises(NotAuthorized):
        users.set_roles(ctx, admin_a, "radio.a", frozenset({Role.TERRITORY_ADMIN}))
    with pytest.raises(NotAuthorized):  # cannot move a user to another facility
        users.set_facilities(ctx, admin_a, "radio.a", ["site-a", "site-b"])

    add(ctx, "both", {Role.CLINICIAN}, ["site-a", "site-b"])
    with pytest.raises(NotAuthorized):  # its roles apply at site-b too
        users.disable(ctx, admin_a, "both")
    assert {u.username for u in users.list_users(ctx, admin_a)} == {"admin.a", "radio.a", "both"}
    assert users.get_user(ctx, "radio.b") is None and users.get_user(ctx, "boss") is None


def test_territory_admin_manages_everyone_and_others_nobody(ctx: Context) -> None:
    add(ctx, "boss", {Role.TERRITORY_ADMIN}, [])
    add(ctx, "clin.a", {Role.CLINICIAN}, ["site-a"])
    boss = as_user(ctx, "boss")
    add(ctx, "admin.b", {Role.FACILITY_ADMIN}, ["site-b"], actor=boss)
    add(ctx, "boss2", {Role.TERRITORY_ADMIN}, [], actor=boss)
    users.disable(ctx, boss, "clin.a")
    assert len(users.list_users(ctx, boss)) == 4

    clinician = Actor.for_user("clin.x", "clin.x", frozenset({Role.CLINICIAN}),
                               as_user(ctx, "admin.b").facilities, "")
    with pytest.raises(NotAuthorized):
        add(ctx, "x", {Role.CLINICIAN}, ["site-b"], actor=clinician)
    with pytest.raises(NotAuthorized):
        users.list_users(ctx, clinician)


# -- passwords and lockout -------------------------------------------------------------


def test_login_checks_the_password_and_audits(ctx: Context) -> None:
    add(ctx, "bob", {Role.RADIOLOGIST}, ["site-a"])
    assert users.check_password(ctx, "bob", PASSWORD, address="10.1.1.1").username == "bob"
    with pytest.raises(LoginFailed) as wrong:
        users.check_password(ctx, "bob", PASSWORD + "!", address="10.1.1.1")
    with pytest.raises(LoginFailed) as unknown:
        users.check_password(ctx, "nobody", PASSWORD, address="10.1.1.1")
    assert wrong.value.reason == unknown.value.reason == LOGIN_FAILED
    logins = events(ctx, "login")
    assert [(o, a, obj) for o, a, obj, _ in logins] == [
        ("success", "bob", "bob"), ("failure", "bob", "bob"), ("failure", "anonymous", ""),
    ]
    assert '"reason":"wrong-password"' in logins[1][3] and '"reason":"unknown-user"' in logins[2][3]
    assert all(PASSWORD not in detail and "nobody" not in detail for *_, detail in logins)


def test_lockout_after_max_failures_is_indistinguishable_and_ends(ctx: Context, clock: Clock) -> None:
    add(ctx, "bob", {Role.RADIOLOGIST}, ["site-a"])
    for _ in range(3):
        with pytest.raises(LoginFailed):
            users.check_password(ctx, "bob", "wrong password!", address="")
    row = users.get_user(ctx, "bob")
    assert row is not None and row.locked_until == clock.now + timedelta(seconds=60)

    with pytest.raises(LoginFailed) as locked:  # even the right password
        users.check_password(ctx, "bob", PASSWORD, address="")
    assert locked.value.reason == LOGIN_FAILED
    reasons = [d for *_, d in events(ctx, "login")]
    assert '"locked":true' in reasons[2] and '"reason":"locked"' in reasons[3]

    clock.now += timedelta(seconds=61)
    assert users.check_password(ctx, "bob", PASSWORD, address="").username == "bob"
    row = users.get_user(ctx, "bob")
    assert row is not None and row.failed_logins == 0 and row.locked_until is None


def test_a_success_resets_the_failure_count(ctx: Context) -> None:
    add(ctx, "bob", {Role.RADIOLOGIST}, ["site-a"])
    for _ in range(2):
        with pytest.raises(LoginFailed):
            users.check_password(ctx, "bob", "wrong password!", address="")
    users.check_password(ctx, "bob", PASSWORD, address="")
    for _ in range(2):
        with pytest.raises(LoginFailed):
            users.check_password(ctx, "bob", "wrong password!", address="")
    assert users.check_password(ctx, "bob", PASSWORD, address="").username == "bob"


def test_disabled_and_passwordless_users_cannot_log_in(ctx: Context) -> None:
    add(ctx, "bob", {Role.RADIOLOGIST}, ["site-a"])
    users.create_user(ctx, OPERATOR, username="robot", password=None, roles=frozenset({Role.TECHNOLOGIST}),
                      facilities=["site-a"])
    users.disable(ctx, OPERATOR, "bob")
    with pytest.raises(LoginFailed):
        users.check_password(ctx, "bob", PASSWORD, address="")
    with pytest.raises(LoginFailed):
        users.check_password(ctx, "robot", "", address="")
    assert ['"reason":"disabled"' in d for *_, d in events(ctx, "login")] == [True, False]


def test_set_password(ctx: Context) -> None:
    add(ctx, "bob", {Role.RADIOLOGIST}, ["site-a"])
    users.set_password(ctx, OPERATOR, "bob", "another long passphrase")
    with pytest.raises(LoginFailed):
        users.check_password(ctx, "bob", PASSWORD, address="")
    assert users.check_password(ctx, "bob", "another long passphrase", address="").username == "bob"
    with pytest.raises(BadRequest):
        users.set_password(ctx, OPERATOR, "bob", "short")
    assert len(events(ctx, "user-password")) == 1


# -- demo users ------------------------------------------------------------------------


def test_demo_users_one_per_role_and_facility_idempotent(database: Database, tmp_path: Path) -> None:
    ctx = Context(settings=Settings(data_dir=tmp_path), db=database, blobs=MemoryBlobStore())
    for f in FACILITIES:
        facilities.add_facility(ctx, OPERATOR, slug=f.slug, name=f.name, issuer=f.issuer)
    assert demo_users(ctx) == []

    assert load_demo_users(ctx) == len(DEMO_USERS) == 3 * 6 + 1
    assert load_demo_users(ctx) == 0
    assert demo_users(ctx) == []  # not reported (nor their passwords) without the demo marker
    with ctx.db.write() as tx:
        state.put(tx, DEMO_MARKER, DEMO_VERSION)
    assert demo_users(ctx) == list(DEMO_USERS)

    by_name = {u.username: u for u in users.list_users(ctx, OPERATOR)}
    assert by_name["manip.chu-nord"].roles == {Role.TECHNOLOGIST}
    assert [f.slug for f in by_name["identito.clinique-sud"].facilities] == ["clinique-sud"]
    assert by_name["admin.territoire"].roles == {Role.TERRITORY_ADMIN}
    assert by_name["admin.territoire"].facilities == ()
    for role in Role:  # every role is in the demo
        assert any(role in u.roles for u in DEMO_USERS)
    assert users.check_password(ctx, "radiologue.imagerie-est", "demo-radiologist", address="").username
    assert users.check_password(ctx, "admin.territoire", "demo-territory-admin", address="").username


def test_a_hash_with_other_parameters_is_upgraded_at_login(ctx: Context) -> None:
    from coffre.index import users as index

    add(ctx, "bob", {Role.RADIOLOGIST}, ["site-a"])
    old = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=2).hash(PASSWORD)
    with ctx.db.write() as tx:
        row = index.require_user(tx, "bob")
        index.set_password_hash(tx, row.id, old)
    users.check_password(ctx, "bob", PASSWORD, address="")
    row2 = users.get_user(ctx, "bob")
    assert row2 is not None and row2.password_hash != old and "m=19456,t=2,p=1" in row2.password_hash
    assert users.check_password(ctx, "bob", PASSWORD, address="").username == "bob"
