"""Admin pages: the identity reconciliation queue and the break-the-glass review.

``/portal/admin/identity`` (identity managers, ``MANAGE_IDENTITY``): the possible
matches queued at ingest for identities of the manager's facilities
(:func:`coffre.services.identity.reconciliation`), each shown side by side — the
incoming local identity and every identity of the candidate person, field by field,
with the score and the evidence it rests on — and decided with a stated reason: link
(the identity joins the person) or reject (not the same human)
(:func:`coffre.services.identity.decide`, audited, reversible).

``/portal/admin/break-glass`` (facility admins, ``REVIEW_BREAK_GLASS``): the
break-the-glass accesses to their facilities' data
(:func:`coffre.services.grants.break_glass_to_review`): who, from which facility, when,
until when, the stated reason and the person; each is marked reviewed with the admin's
note (:func:`coffre.services.grants.review_break_glass`, audited). The person's access
report (``/portal/admin/audit/persons/{id}``) shows what was done with the access.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from coffre.app import Context
from coffre.errors import CoffreError
from coffre.index.grants import GrantRow
from coffre.index.persons import IdentityRecord, LocalIdentity
from coffre.services import facilities, grants, identity
from coffre.services.identity import CandidateView
from coffre.web.portal.admin_base import (
    ADMIN,
    Admin,
    Invalid,
    admin_session,
    csrf_field,
    failure,
    positive_id,
    post_form,
    reason_of,
    render,
    table,
    when,
)
from coffre.web.portal.admin_messages import ADMIN_MESSAGES
from coffre.web.portal.auth_pages import Session
from coffre.web.portal.layout import Safe, format_date, format_name, format_sex, html, join

IDENTITY = ADMIN + "/identity"
BREAK_GLASS = ADMIN + "/break-glass"
REPORT = ADMIN + "/audit/persons"
PAGE = 25
STATUSES = ("open", "linked", "rejected")

router = APIRouter(include_in_schema=False)


# -- reconciliation ---------------------------------------------------------------------------


def _cell(value: str, reference: str | None) -> Safe:
    """A demographic value, marked same/different from the incoming identity's."""
    if reference is None:
        return html("<td>{v}</td>", v=value)
    mark = "same" if value == reference else "diff"
    return html('<td class="{m}" data-compare="{m}">{v}</td>', m=mark, v=value)


def _comparison(a: Admin, view: CandidateView) -> Safe:
    t = a.t
    incoming = view.identity
    others = [i for i in view.person.identities if i.patient_pk != incoming.patient_pk]
    matched = str(view.candidate.evidence.get("matched_identity", ""))

    def values(i: IdentityRecord) -> list[str]:
        return [format_name(i.patient_name) or t("value.unknown"), format_date(t, i.birth_date),
                format_sex(t, i.sex), i.facility_slug, i.patient_id, i.issuer]

    labels = [t("field.name"), t("field.birth_date"), t("field.sex"), t("admin.identity.facility"),
              t("admin.identity.patient_id"), t("admin.identity.issuer")]
    mine = values(incoming)
    columns = [values(i) for i in others]
    rows = []
    for n, label in enumerate(labels):
        cells = join(_cell(col[n], mine[n] if n < 3 else None) for col in columns)
        rows.append(html('<tr><th scope="row">{label}</th><td class="incoming">{value}</td>{cells}</tr>',
                         label=label, value=mine[n], cells=cells))
    heads = [html('<th scope="col" class="incoming">{h}</th>', h=t("admin.identity.incoming"))]
    for i in others:
        star = " ★" if str(i.patient_pk) == matched else ""
        heads.append(html('<th scope="col">{h}{star}</th>', h=t("admin.identity.candidate_identity",
                                                                   person=view.person.id), star=star))
    return html('<div class="table-wrap"><table class="admin-table compare"><thead><tr><td></td>{heads}</tr>'
                "</thead><tbody>{rows}</tbody></table></div>", heads=join(heads), rows=join(rows))


def _evidence(a: Admin, view: CandidateView) -> Safe:
    t = a.t
    items = [html("<div><dt>{k}</dt><dd>{v}</dd></div>", k=t("admin.identity.score"), v=view.candidate.score)]
    if view.person.ins:
        items.append(html("<div><dt>INS</dt><dd><code>{v}</code></dd></div>", v=view.person.ins))
    for key, value in sorted(view.candidate.evidence.items()):
        if key == "matched_identity" or not isinstance(value, str | int | bool):
            continue
        label_key = f"admin.evidence.{key}"
        value_key = f"admin.evidence.value.{value}"
        items.append(html("<div><dt>{k}</dt><dd>{v}</dd></div>",
                          k=t(label_key) if label_key in ADMIN_MESSAGES else key,
                          v=t(value_key) if value_key in ADMIN_MESSAGES else value))
    return html('<dl class="facts evidence">{items}</dl>', items=join(items))


def _decide_form(a: Admin, view: CandidateView) -> Safe:
    t = a.t
    c = view.candidate
    if c.status != "open":
        return html('<p class="muted" data-status="{s}">{m}</p>', s=c.status,
                    m=t(f"admin.identity.status.{c.status}", by=c.decided_by, at=when(t, c.decided_at)))
    return html(
        '<form method="post" action="{action}" class="stack decide">{csrf}'
        '<label for="reason-{id}">{reason_label}</label>'
        '<textarea id="reason-{id}" name="reason" required maxlength="500" rows="2"></textarea>'
        '<p class="row"><button type="submit" name="decision" value="link">{link}</button> '
        '<button type="submit" name="decision" value="reject" class="button secondary">{reject}</button></p></form>',
        action=f"{IDENTITY}/{c.id}/decide", csrf=csrf_field(a), id=c.id, reason_label=t("dialog.reason"),
        link=t("admin.identity.link"), reject=t("admin.identity.reject"))


def _candidate(a: Admin, view: CandidateView) -> Safe:
    t = a.t
    return html(
        '<section class="card candidate" id="candidate-{id}" data-candidate="{id}">'
        "<h2>{title}</h2><p class=\"muted\">{queued}</p>{compare}{evidence}{form}</section>",
        id=view.candidate.id,
        title=t("admin.identity.candidate_title", patient_id=view.identity.patient_id,
                facility=view.identity.facility_slug, person=view.person.id),
        queued=t("admin.identity.queued", at=when(t, view.candidate.created_at)),
        compare=_comparison(a, view), evidence=_evidence(a, view), form=_decide_form(a, view))


def _status_links(a: Admin, current: str) -> Safe:
    links = []
    for status in STATUSES:
        mark = ' aria-current="true"' if status == current else ""
        links.append(html('<a href="{href}"' + mark + ">{label}</a>", href=f"{IDENTITY}?status={status}",
                          label=a.t(f"admin.identity.filter.{status}")))
    return html('<nav class="filters" aria-label="{l}">{links}</nav>', l=a.t("admin.identity.filter"),
                links=join(links, " · "))


@router.get(IDENTITY)
def identity_page(request: Request) -> Response:
    """The reconciliation queue of the manager's facilities (module doc)."""
    found = admin_session(request)
    if not isinstance(found, Admin):
        return found
    a = found
    status = request.query_params.get("status", "open")
    status = status if status in STATUSES else "open"
    raw_offset = request.query_params.get("offset", "0")
    offset = int(raw_offset) if raw_offset.isdigit() and len(raw_offset) < 9 else 0
    try:
        views = identity.reconciliation(a.ctx, a.actor, status=status, limit=PAGE + 1, offset=offset)
    except CoffreError as exc:
        return failure(a, exc)
    t = a.t
    parts = [html('<p class="muted">{m}</p>', m=t("admin.identity.intro")), _status_links(a, status)]
    parts += [_candidate(a, v) for v in views[:PAGE]]
    if not views:
        parts.append(html('<p class="empty">{m}</p>', m=t("admin.identity.none")))
    pager = []
    if offset > 0:
        pager.append(html('<a href="{h}">{l}</a>', h=f"{IDENTITY}?status={status}&offset={max(0, offset - PAGE)}",
                          l=t("admin.previous")))
    if len(views) > PAGE:
        pager.append(html('<a href="{h}" rel="next">{l}</a>', h=f"{IDENTITY}?status={status}&offset={offset + PAGE}",
                          l=t("admin.next")))
    if pager:
        parts.append(html('<p class="pager">{p}</p>', p=join(pager, " · ")))
    return render(a, "identity", t("admin.nav.identity"), join(parts))


@router.post(IDENTITY + "/{candidate_id}/decide")
async def decide(request: Request, candidate_id: str) -> Response:
    """Link or reject one candidate, with a reason."""

    def handler(ctx: Context, session: Session, form: dict[str, str]) -> str:
        decision = form.get("decision", "")
        if decision not in ("link", "reject"):
            raise Invalid("admin.error.invalid")
        reason = reason_of(form)
        identity.decide(ctx, session.actor, positive_id(candidate_id), decision=decision, reason=reason)
        return f"admin.ok.candidate_{decision}"

    return await post_form(request, IDENTITY, handler)


# -- break-the-glass review -------------------------------------------------------------------


def _review_cell(a: Admin, g: GrantRow) -> Safe:
    t = a.t
    if g.reviewed_at is not None:
        return html('<p data-reviewed="yes">{m}</p><blockquote>{note}</blockquote>',
                    m=t("admin.btg.reviewed", by=g.reviewed_by, at=when(t, g.reviewed_at)), note=g.review_note)
    return html(
        '<form method="post" action="{action}" class="stack">{csrf}'
        '<label for="note-{id}">{note_label}</label>'
        '<textarea id="note-{id}" name="note" required maxlength="500" rows="2"></textarea>'
        '<button type="submit" class="button small">{submit}</button></form>',
        action=f"{BREAK_GLASS}/{g.id}/review", csrf=csrf_field(a), id=g.id, note_label=t("admin.btg.note"),
        submit=t("admin.btg.mark_reviewed"))


def _grant_row(a: Admin, g: GrantRow, slugs: dict[int, str], local: dict[int, list[LocalIdentity]]) -> Safe:
    t = a.t
    now = a.ctx.clock()
    active = g.revoked_at is None and g.expires_at > now
    state = html(' <span class="badge btg">{m}</span>', m=t("admin.btg.active")) if active else Safe("")
    ids = join(html("<br><code>{f}:{p}</code>", f=i.facility_slug, p=i.patient_id) for i in local.get(g.id, []))
    person = (html('<a href="{href}">#{id}</a>{ids}', href=f"{REPORT}/{g.person_id}", id=g.person_id, ids=ids)
              if g.person_id is not None else Safe("—"))
    return html(
        '<tr data-grant="{id}"><td>{at}{state}<br><span class="muted">{until}</span></td>'
        "<td><code>{who}</code><br><span class=\"muted\">{facility}</span></td>"
        "<td>{reason}</td><td>{person}</td><td>{review}</td></tr>",
        id=g.id, at=when(t, g.created_at), state=state, until=t("admin.btg.until", at=when(t, g.expires_at)),
        who=g.grantee_user or g.granted_by, facility=slugs.get(g.grantee_facility_id or 0, ""),
        reason=g.reason, person=person, review=_review_cell(a, g))


def _grants_table(a: Admin, found: Sequence[GrantRow], slugs: dict[int, str]) -> Safe:
    t = a.t
    if not found:
        return html('<p class="empty">{m}</p>', m=t("admin.btg.none"))
    local = grants.identities_for_review(a.ctx, a.actor, list(found))
    return table([t("admin.btg.when"), t("admin.btg.who"), t("admin.btg.reason"), t("admin.btg.person"),
                  t("admin.btg.review")], [_grant_row(a, g, slugs, local) for g in found])


@router.get(BREAK_GLASS)
def break_glass_page(request: Request) -> Response:
    """Break-the-glass accesses to review (module doc); ``?all=1`` adds the reviewed ones."""
    found = admin_session(request)
    if not isinstance(found, Admin):
        return found
    a = found
    include = request.query_params.get("all") == "1"
    try:
        listed = grants.break_glass_to_review(a.ctx, a.actor, include_reviewed=include)
    except CoffreError as exc:
        return failure(a, exc)
    slugs = {f.id: f.slug for f in facilities.list_facilities(a.ctx)}
    t = a.t
    toggle = html('<p><a href="{h}">{l}</a></p>', h=BREAK_GLASS if include else f"{BREAK_GLASS}?all=1",
                  l=t("admin.btg.hide_reviewed" if include else "admin.btg.show_reviewed"))
    body = html('<p class="muted">{intro}</p>{toggle}{listing}', intro=t("admin.btg.intro"), toggle=toggle,
                listing=_grants_table(a, listed, slugs))
    return render(a, "break_glass", t("admin.nav.break_glass"), body)


@router.post(BREAK_GLASS + "/{grant_id}/review")
async def review(request: Request, grant_id: str) -> Response:
    """Mark one access reviewed, with the admin's note."""

    def handler(ctx: Context, session: Session, form: dict[str, str]) -> str:
        note = reason_of(form, "note")
        grants.review_break_glass(ctx, session.actor, positive_id(grant_id), note=note)
        return "admin.ok.reviewed"

    return await post_form(request, BREAK_GLASS, handler)


__all__ = ["BREAK_GLASS", "IDENTITY", "router"]
