"""Admin pages: built-in users and their roles (``/portal/admin/users``).

The users the admin manages (:func:`coffre.services.users.list_users`: those of its
facilities; every user for the territory admin) with roles, facilities and state;
forms to create a user with an initial password, change roles, change facilities, set
a new password and disable or enable an account. Each form calls one function of
:mod:`coffre.services.users`, which authorizes (``MANAGE_USERS`` on every facility
concerned, ``MANAGE_TERRITORY`` for a territory-wide user) and audits. Password
hashes are never shown.

Facilities are typed as slugs separated by commas or spaces: a form carries at most
:data:`coffre.web.portal.csrf.MAX_FORM_FIELDS` fields, too few for one checkbox per
facility of a large territory.
"""

from __future__ import annotations

import re

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from coffre.app import Context
from coffre.errors import CoffreError
from coffre.index.users import UserRow
from coffre.model import Facility, Role
from coffre.services import facilities, users
from coffre.services.access import Action, Resource, is_allowed
from coffre.web.portal.admin_base import (
    ADMIN,
    Admin,
    Invalid,
    admin_session,
    choices,
    csrf_field,
    failure,
    hidden,
    post_form,
    render,
    table,
    when,
)
from coffre.web.portal.auth_pages import Session
from coffre.web.portal.layout import Safe, html

USERS = ADMIN + "/users"
MAX_FACILITIES = 64
_SPLIT = re.compile(r"[\s,;]+")

router = APIRouter(include_in_schema=False)


def _role_choices(a: Admin, prefix: str, current: frozenset[Role]) -> Safe:
    territory = is_allowed(a.actor, Action.MANAGE_TERRITORY, Resource(None))
    # a facility admin cannot give the territory-admin role (the service refuses anyway)
    roles = [r for r in Role if r is not Role.TERRITORY_ADMIN or territory or r in current]
    return choices((f"{prefix}-{r.value}", f"role-{r.value}", a.t(f"admin.role.{r.value}"), r in current)
                   for r in roles)


def _slugs(user: UserRow) -> str:
    return ", ".join(f.slug for f in user.facilities)


def _state(a: Admin, user: UserRow) -> Safe:
    if not user.active:
        return html('<span class="badge" data-state="disabled">{m}</span>', m=a.t("admin.users.disabled"))
    if user.locked_until is not None and user.locked_until > a.ctx.clock():
        return html('<span class="badge btg" data-state="locked" title="{until}">{m}</span>',
                    m=a.t("admin.users.locked"), until=when(a.t, user.locked_until))
    return html('<span class="badge" data-state="active">{m}</span>', m=a.t("admin.users.active"))


def _user_forms(a: Admin, user: UserRow) -> Safe:
    t = a.t
    prefix = f"u{user.id}"
    name = hidden("username", user.username)
    toggle = "enable" if not user.active else "disable"
    return html(
        '<details class="dialog"><summary>{edit}</summary>'
        '<form method="post" action="{users}/roles" class="stack">{csrf}{name}'
        '<fieldset><legend>{roles_label}</legend>{roles}</fieldset>'
        '<button type="submit" class="button small">{save_roles}</button></form>'
        '<form method="post" action="{users}/facilities" class="stack">{csrf}{name}'
        '<label for="{p}-facilities">{facilities_label}</label>'
        '<input id="{p}-facilities" name="facilities" value="{slugs}" maxlength="2000" spellcheck="false">'
        '<button type="submit" class="button small">{save_facilities}</button></form>'
        '<form method="post" action="{users}/password" class="stack">{csrf}{name}'
        '<label for="{p}-password">{password_label}</label>'
        '<input id="{p}-password" name="password" type="password" autocomplete="new-password" required '
        'minlength="{min}" maxlength="{max}">'
        '<button type="submit" class="button small">{save_password}</button></form>'
        '<form method="post" action="{users}/{toggle}" class="stack">{csrf}{name}'
        '<button type="submit" class="button small {toggle_css}">{toggle_label}</button></form></details>',
        edit=t("admin.users.edit"), users=USERS, csrf=csrf_field(a), name=name,
        roles_label=t("admin.users.roles"), roles=_role_choices(a, prefix, user.roles),
        save_roles=t("admin.users.save_roles"), p=prefix, facilities_label=t("admin.users.facilities_field"),
        slugs=_slugs(user), save_facilities=t("admin.users.save_facilities"),
        password_label=t("admin.users.new_password"), min=users.MIN_PASSWORD_LENGTH, max=users.MAX_PASSWORD_LENGTH,
        save_password=t("admin.users.save_password"), toggle=toggle,
        toggle_css="danger" if toggle == "disable" else "secondary",
        toggle_label=t(f"admin.users.{toggle}"))


def _user_row(a: Admin, user: UserRow) -> Safe:
    roles = ", ".join(a.t(f"admin.role.{r.value}") for r in sorted(user.roles)) or a.t("admin.none")
    return html('<tr data-user="{username}"><th scope="row"><code>{username}</code></th><td>{display}</td>'
                "<td>{roles}</td><td>{facilities}</td><td>{state}</td><td>{forms}</td></tr>",
                username=user.username, display=user.display_name, roles=roles,
                facilities=_slugs(user) or a.t("admin.users.territory_wide"), state=_state(a, user),
                forms=_user_forms(a, user))


def _create_form(a: Admin, choices: list[Facility]) -> Safe:
    t = a.t
    default = choices[0].slug if len(choices) == 1 else ""
    return html(
        '<section class="card"><h2>{title}</h2><form method="post" action="{action}" class="stack">{csrf}'
        '<label for="new-username">{username_label}</label>'
        '<input id="new-username" name="username" required maxlength="64" pattern="[a-z0-9][a-z0-9._\\-]*" '
        'autocomplete="off" autocapitalize="none" spellcheck="false">'
        '<label for="new-display">{display_label}</label><input id="new-display" name="display_name" maxlength="200">'
        '<label for="new-password">{password_label}</label>'
        '<input id="new-password" name="password" type="password" autocomplete="new-password" required '
        'minlength="{min}" maxlength="{max}"><p class="hint">{password_hint}</p>'
        '<fieldset><legend>{roles_label}</legend>{roles}</fieldset>'
        '<label for="new-facilities">{facilities_label}</label>'
        '<input id="new-facilities" name="facilities" value="{default}" maxlength="2000" spellcheck="false">'
        '<p class="hint">{facilities_hint}</p>'
        '<button type="submit">{submit}</button></form></section>',
        title=t("admin.users.create"), action=f"{USERS}/create", csrf=csrf_field(a),
        username_label=t("admin.users.username"), display_label=t("admin.users.display_name"),
        password_label=t("admin.users.initial_password"), min=users.MIN_PASSWORD_LENGTH,
        max=users.MAX_PASSWORD_LENGTH, password_hint=t("admin.users.password_hint", n=users.MIN_PASSWORD_LENGTH),
        roles_label=t("admin.users.roles"), roles=_role_choices(a, "new", frozenset()),
        facilities_label=t("admin.users.facilities_field"), default=default,
        facilities_hint=t("admin.users.facilities_hint", slugs=", ".join(f.slug for f in choices) or "—"),
        submit=t("admin.users.create_submit"))


@router.get(USERS)
def users_page(request: Request) -> Response:
    """The users the admin manages and the forms (module doc)."""
    found = admin_session(request)
    if not isinstance(found, Admin):
        return found
    a = found
    try:
        listed = users.list_users(a.ctx, a.actor)
    except CoffreError as exc:
        return failure(a, exc)
    choices = [f for f in facilities.list_facilities(a.ctx)
               if is_allowed(a.actor, Action.MANAGE_USERS, Resource(f.id))]
    t = a.t
    rows = [_user_row(a, u) for u in listed]
    listing = (table([t("admin.users.username"), t("admin.users.display_name"), t("admin.users.roles"),
                      t("admin.users.facilities"), t("admin.users.state"), ""], rows)
               if rows else html('<p class="empty">{m}</p>', m=t("admin.users.none")))
    body = html('<section class="card"><h2>{title}</h2><p class="muted">{count}</p>{listing}</section>{create}',
                title=t("admin.users.list"), count=t("admin.users.count", n=len(listed)), listing=listing,
                create=_create_form(a, choices))
    return render(a, "users", t("admin.nav.users"), body)


# -- forms ----------------------------------------------------------------------------------


def _roles(form: dict[str, str]) -> frozenset[Role]:
    return frozenset(r for r in Role if form.get(f"role-{r.value}") == "on")


def _facilities(form: dict[str, str]) -> list[str]:
    slugs = [s for s in _SPLIT.split(form.get("facilities", "")[:2000].lower()) if s]
    if len(slugs) > MAX_FACILITIES:
        raise Invalid("admin.error.invalid")
    return list(dict.fromkeys(slugs))


def _username(form: dict[str, str]) -> str:
    name = form.get("username", "").strip()
    if not users.USERNAME.match(name):
        raise Invalid("admin.error.username")
    return name


def _password(form: dict[str, str]) -> str:
    password = form.get("password", "")
    if not users.MIN_PASSWORD_LENGTH <= len(password) <= users.MAX_PASSWORD_LENGTH:
        raise Invalid("admin.error.password")
    return password


@router.post(USERS + "/create")
async def create_user(request: Request) -> Response:
    """Create a built-in user with an initial password."""

    def handler(ctx: Context, session: Session, form: dict[str, str]) -> str:
        users.create_user(ctx, session.actor, username=_username(form), password=_password(form),
                          roles=_roles(form), facilities=_facilities(form),
                          display_name=" ".join(form.get("display_name", "").split())[:200])
        return "admin.ok.user_created"

    return await post_form(request, USERS, handler)


@router.post(USERS + "/roles")
async def set_roles(request: Request) -> Response:
    def handler(ctx: Context, session: Session, form: dict[str, str]) -> str:
        users.set_roles(ctx, session.actor, _username(form), _roles(form))
        return "admin.ok.user_roles"

    return await post_form(request, USERS, handler)


@router.post(USERS + "/facilities")
async def set_facilities(request: Request) -> Response:
    def handler(ctx: Context, session: Session, form: dict[str, str]) -> str:
        users.set_facilities(ctx, session.actor, _username(form), _facilities(form))
        return "admin.ok.user_facilities"

    return await post_form(request, USERS, handler)


@router.post(USERS + "/password")
async def set_password(request: Request) -> Response:
    def handler(ctx: Context, session: Session, form: dict[str, str]) -> str:
        users.set_password(ctx, session.actor, _username(form), _password(form))
        return "admin.ok.user_password"

    return await post_form(request, USERS, handler)


@router.post(USERS + "/disable")
async def disable_user(request: Request) -> Response:
    def handler(ctx: Context, session: Session, form: dict[str, str]) -> str:
        users.disable(ctx, session.actor, _username(form))
        return "admin.ok.user_disabled"

    return await post_form(request, USERS, handler)


@router.post(USERS + "/enable")
async def enable_user(request: Request) -> Response:
    def handler(ctx: Context, session: Session, form: dict[str, str]) -> str:
        users.enable(ctx, session.actor, _username(form))
        return "admin.ok.user_enabled"

    return await post_form(request, USERS, handler)


__all__ = ["USERS", "router"]
