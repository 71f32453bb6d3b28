"""Admin pages: facilities and their DICOM nodes (``/portal/admin/facilities``).

- the facilities the admin manages (``MANAGE_FACILITY``: a facility admin its own, the
  territory admin all), each with its issuer, its DICOM TLS state (required or not)
  and its nodes: AE title, address, permissions, certificate binding;
- forms: add a node, change a node's permissions, remove a node, require DICOM TLS or
  not (facility admins for their facilities, the territory admin for all), add a
  facility (the territory admin: ``MANAGE_TERRITORY``).

Every change is audited by :mod:`coffre.services.facilities`.

Every change is authorized by the service it calls (``MANAGE_FACILITY`` on the node's
facility, ``MANAGE_TERRITORY`` for a new facility); the listing, which holds no patient
data, asks the same authorization function first (:func:`_require`).
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from coffre.app import Context
from coffre.errors import CoffreError, NotFound
from coffre.model import Actor, Facility, Node, Permission
from coffre.services import facilities
from coffre.services.access import Action, Resource, authorize, is_allowed
from coffre.web.portal.admin_base import (
    ADMIN,
    Admin,
    Invalid,
    admin_session,
    checked,
    choices,
    csrf_field,
    failure,
    hidden,
    post_form,
    render,
    table,
)
from coffre.web.portal.auth_pages import Session
from coffre.web.portal.layout import Safe, html, join

FACILITIES = ADMIN + "/facilities"
NODES = ADMIN + "/nodes"
PERMISSIONS = tuple(Permission)

router = APIRouter(include_in_schema=False)


def _require(actor: Actor, action: Action, facility_id: int | None) -> None:
    """Interim: the facilities service does not authorize yet (module doc)."""
    authorize(actor, action, Resource(facility_id))


def _managed(actor: Actor, all_facilities: list[Facility]) -> list[Facility]:
    return [f for f in all_facilities if is_allowed(actor, Action.MANAGE_FACILITY, Resource(f.id))]


# -- the page -------------------------------------------------------------------------------


def _permission_choices(a: Admin, prefix: str, current: frozenset[Permission]) -> Safe:
    return choices((f"{prefix}-{p.value}", f"perm-{p.value}", a.t(f"admin.perm.{p.value}"), p in current)
                   for p in PERMISSIONS)


def _fingerprint(a: Admin, node: Node) -> Safe:
    if not node.tls_fingerprint:
        return html('<span class="muted">{none}</span>', none=a.t("admin.nodes.no_certificate"))
    short = f"{node.tls_fingerprint[:8]}…{node.tls_fingerprint[-8:]}"
    return html('<code title="SHA-256 {full}">{short}</code>', full=node.tls_fingerprint, short=short)


def _node_row(a: Admin, node: Node) -> Safe:
    """One node: its permissions are checkboxes of the row, owned by the row's form."""
    form_id = f"perm-{node.id}"
    boxes = join(html('<td class="check"><input type="checkbox" name="perm-{v}" form="{form}" aria-label="{label}"'
                      '{on}></td>', v=p.value, form=form_id, label=f"{a.t(f'admin.perm.{p.value}')} {node.ae_title}",
                      on=checked(p in node.permissions)) for p in PERMISSIONS)
    return html(
        '<tr data-ae="{ae}"><th scope="row"><code>{ae}</code></th><td>{host}:{port}</td>{boxes}'
        '<td><form method="post" action="{perm_action}" class="inline" id="{form_id}">{csrf}{ae_field}'
        '<button type="submit" class="button small secondary">{save}</button></form></td>'
        "<td>{description}</td><td>{cert}</td>"
        '<td><details class="dialog danger"><summary>{remove}</summary>'
        '<form method="post" action="{remove_action}" class="stack">{csrf}{ae_field}<p>{confirm_text}</p>'
        '<button type="submit" class="danger">{confirm}</button></form></details></td></tr>',
        ae=node.ae_title, host=node.host, port=node.port, boxes=boxes, perm_action=f"{NODES}/permissions",
        form_id=form_id, csrf=csrf_field(a), ae_field=hidden("ae_title", node.ae_title), save=a.t("admin.save"),
        description=node.description, cert=_fingerprint(a, node), remove=a.t("admin.nodes.remove"),
        remove_action=f"{NODES}/remove", confirm_text=a.t("admin.nodes.remove_help", ae=node.ae_title),
        confirm=a.t("admin.nodes.remove_confirm"))


def _add_node_form(a: Admin, fac: Facility) -> Safe:
    prefix = f"add-{fac.slug}"
    return html(
        '<details class="dialog"><summary>{title}</summary>'
        '<form method="post" action="{action}" class="stack">{csrf}{facility}'
        '<label for="{p}-ae">{ae_label}</label>'
        '<input id="{p}-ae" name="ae_title" required maxlength="16" autocomplete="off" spellcheck="false">'
        '<label for="{p}-host">{host_label}</label>'
        '<input id="{p}-host" name="host" required maxlength="255" autocomplete="off" spellcheck="false">'
        '<label for="{p}-port">{port_label}</label>'
        '<input id="{p}-port" name="port" type="number" min="1" max="65535" required value="104">'
        '<fieldset><legend>{perm_label}</legend>{boxes}</fieldset>'
        '<label for="{p}-description">{description_label}</label>'
        '<input id="{p}-description" name="description" maxlength="200">'
        '<label for="{p}-fingerprint">{fingerprint_label}</label>'
        '<input id="{p}-fingerprint" name="tls_fingerprint" maxlength="100" autocomplete="off" spellcheck="false">'
        '<p class="hint">{fingerprint_hint}</p>'
        '<button type="submit">{submit}</button></form></details>',
        title=a.t("admin.nodes.add"), action=f"{NODES}/add", csrf=csrf_field(a), facility=hidden("facility", fac.slug),
        p=prefix, ae_label=a.t("admin.nodes.ae_title"), host_label=a.t("admin.nodes.host"),
        port_label=a.t("admin.nodes.port"), perm_label=a.t("admin.nodes.permissions"),
        boxes=_permission_choices(a, prefix, frozenset({Permission.STORE})),
        description_label=a.t("admin.nodes.description"), fingerprint_label=a.t("admin.nodes.fingerprint"),
        fingerprint_hint=a.t("admin.nodes.fingerprint_hint"), submit=a.t("admin.nodes.add_submit"))


def _tls_form(a: Admin, fac: Facility) -> Safe:
    state = a.t("admin.facilities.tls_required" if fac.require_tls else "admin.facilities.tls_optional")
    label = a.t("admin.facilities.tls_off" if fac.require_tls else "admin.facilities.tls_on")
    return html('<span class="tls" data-required="{req}">{state}</span> '
                '<form method="post" action="{action}" class="inline">{csrf}{slug}{value}'
                '<button type="submit" class="button small secondary">{label}</button></form>',
                req="yes" if fac.require_tls else "no", state=state, action=f"{FACILITIES}/tls", csrf=csrf_field(a),
                slug=hidden("facility", fac.slug), value=hidden("require", "off" if fac.require_tls else "on"),
                label=label)


def _facility_card(a: Admin, fac: Facility, nodes: list[Node]) -> Safe:
    t = a.t
    rows = [_node_row(a, n) for n in nodes]
    headers = [t("admin.nodes.ae_title"), t("admin.nodes.address"), *(t(f"admin.perm.{p.value}") for p in PERMISSIONS),
               "", t("admin.nodes.description"), t("admin.nodes.certificate"), ""]
    listing = (table(headers, rows, css="nodes")
               if rows else html('<p class="empty">{m}</p>', m=t("admin.nodes.none")))
    return html(
        '<section class="card facility" id="facility-{slug}" data-facility="{slug}">'
        "<h2>{name} <code>{slug}</code></h2>"
        '<dl class="facts"><div><dt>{issuer_label}</dt><dd>{issuer}</dd></div>'
        "<div><dt>{tls_label}</dt><dd>{tls}</dd></div></dl>"
        "<h3>{nodes_title}</h3>{listing}{add}</section>",
        slug=fac.slug, name=fac.name, issuer_label=t("admin.facilities.issuer"), issuer=fac.issuer,
        tls_label=t("admin.facilities.tls"), tls=_tls_form(a, fac), nodes_title=t("admin.nodes.title"),
        listing=listing, add=_add_node_form(a, fac))


def _add_facility_form(a: Admin) -> Safe:
    t = a.t
    return html(
        '<details class="dialog"><summary>{title}</summary><form method="post" action="{action}" class="stack">'
        '{csrf}<label for="fac-slug">{slug_label}</label>'
        '<input id="fac-slug" name="slug" required maxlength="32" pattern="[a-z0-9][a-z0-9-]*" spellcheck="false">'
        '<label for="fac-name">{name_label}</label><input id="fac-name" name="name" required maxlength="200">'
        '<label for="fac-issuer">{issuer_label}</label>'
        '<input id="fac-issuer" name="issuer" required maxlength="64" spellcheck="false">'
        '<button type="submit">{submit}</button></form></details>',
        title=t("admin.facilities.add"), action=f"{FACILITIES}/add", csrf=csrf_field(a),
        slug_label=t("admin.facilities.slug"), name_label=t("admin.facilities.name"),
        issuer_label=t("admin.facilities.issuer"), submit=t("admin.facilities.add_submit"))


@router.get(FACILITIES)
def facilities_page(request: Request) -> Response:
    """The facilities the admin manages, their TLS state and nodes (module doc)."""
    found = admin_session(request)
    if not isinstance(found, Admin):
        return found
    a = found
    try:
        _require(a.actor, Action.MANAGE_FACILITY, None)
        managed = _managed(a.actor, facilities.list_facilities(a.ctx))
        nodes = {f.slug: facilities.list_nodes(a.ctx, f.slug) for f in managed}
    except CoffreError as exc:
        return failure(a, exc)
    parts = [_facility_card(a, f, nodes[f.slug]) for f in managed]
    if not parts:
        parts.append(html('<p class="empty">{m}</p>', m=a.t("admin.facilities.none")))
    if is_allowed(a.actor, Action.MANAGE_TERRITORY, Resource(None)):
        parts.append(_add_facility_form(a))
    intro = html('<p class="muted">{m}</p>', m=a.t("admin.facilities.intro"))
    return render(a, "facilities", a.t("admin.nav.facilities"), join([intro, *parts]))


# -- forms ----------------------------------------------------------------------------------


def _permissions(form: dict[str, str]) -> frozenset[Permission]:
    return frozenset(p for p in PERMISSIONS if form.get(f"perm-{p.value}") == "on")


def _port(raw: str) -> int:
    if not raw.strip().isdigit() or not 0 < int(raw.strip()[:6]) <= 65535:
        raise Invalid("admin.error.port")
    return int(raw.strip())


def _node_of(ctx: Context, ae_title: str) -> tuple[Node, Facility]:
    found = facilities.find_node(ctx, ae_title[:16]) if ae_title.strip() else None
    if found is None:
        raise NotFound("no such node")
    return found


@router.post(FACILITIES + "/add")
async def add_facility(request: Request) -> Response:
    """Add a facility (the territory admin)."""

    def handler(ctx: Context, session: Session, form: dict[str, str]) -> str:
        facilities.add_facility(ctx, session.actor, slug=form.get("slug", "").strip(),
                                name=form.get("name", "").strip(), issuer=form.get("issuer", "").strip())
        return "admin.ok.facility_added"

    return await post_form(request, FACILITIES, handler)


@router.post(FACILITIES + "/tls")
async def require_tls(request: Request) -> Response:
    """Admit the facility's nodes only over DICOM TLS with their bound certificate, or not."""

    def handler(ctx: Context, session: Session, form: dict[str, str]) -> str:
        slug = form.get("facility", "")[:32]
        fac = facilities.get_facility(ctx, slug)
        required = form.get("require") == "on"
        facilities.set_require_tls(ctx, session.actor, fac.slug, required)
        return "admin.ok.tls_required" if required else "admin.ok.tls_optional"

    return await post_form(request, FACILITIES, handler)


@router.post(NODES + "/add")
async def add_node(request: Request) -> Response:
    """Register a node of a facility the admin manages."""

    def handler(ctx: Context, session: Session, form: dict[str, str]) -> str:
        fac = facilities.get_facility(ctx, form.get("facility", "")[:32])
        facilities.add_node(ctx, session.actor, ae_title=form.get("ae_title", "").strip(),
                            host=form.get("host", "").strip(), port=_port(form.get("port", "")),
                            facility_slug=fac.slug, permissions=_permissions(form),
                            description=form.get("description", "").strip()[:200],
                            tls_fingerprint=form.get("tls_fingerprint", "").strip())
        return "admin.ok.node_added"

    return await post_form(request, FACILITIES, handler)


@router.post(NODES + "/permissions")
async def node_permissions(request: Request) -> Response:
    """Change a node's permissions (authorized and audited by the service)."""

    def handler(ctx: Context, session: Session, form: dict[str, str]) -> str:
        node = _node_of(ctx, form.get("ae_title", ""))[0]
        wanted = _permissions(form)
        if wanted == node.permissions:
            return "admin.ok.unchanged"
        facilities.set_node_permissions(ctx, session.actor, node.ae_title, wanted)
        return "admin.ok.node_permissions"

    return await post_form(request, FACILITIES, handler)


@router.post(NODES + "/remove")
async def remove_node(request: Request) -> Response:
    """Remove a node: its AE title is refused from its next association."""

    def handler(ctx: Context, session: Session, form: dict[str, str]) -> str:
        node = _node_of(ctx, form.get("ae_title", ""))[0]
        facilities.remove_node(ctx, session.actor, node.ae_title)
        return "admin.ok.node_removed"

    return await post_form(request, FACILITIES, handler)


__all__ = ["FACILITIES", "NODES", "router"]
