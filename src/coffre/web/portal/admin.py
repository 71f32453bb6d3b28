"""The portal's admin pages (``/portal/admin/…``): one router for all of them.

- ``/portal/admin``: the sections the signed-in user's roles give (403 when none);
- facilities and nodes (:mod:`.admin_facilities`), users and roles
  (:mod:`.admin_users`), the identity reconciliation queue and the break-the-glass
  review (:mod:`.admin_review`), audit search and the patient access report
  (:mod:`.admin_audit`);
- usage, here: storage used and exams received per facility and month
  (:func:`coffre.services.usage.usage_by_month`, for the territory admin and the
  facility admins), as a table and as CSV (``/portal/admin/usage.csv``).

Every page calls its service with the session's actor; the service authorizes and
audits. Shared machinery (menu, forms, CSRF, results): :mod:`.admin_base`; strings:
:mod:`.admin_messages` (merged into :data:`coffre.web.portal.i18n.MESSAGES`).
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from coffre.errors import CoffreError
from coffre.services.usage import Month, UsageRow, to_csv, usage_by_month
from coffre.web.portal import admin_audit, admin_facilities, admin_review, admin_users
from coffre.web.portal.admin_base import (
    ADMIN,
    Admin,
    admin_session,
    failure,
    forbidden,
    number,
    render,
    sections_of,
    size,
    table,
)
from coffre.web.portal.layout import Safe, html, join, security_headers

USAGE = ADMIN + "/usage"
USAGE_CSV = ADMIN + "/usage.csv"
#: months shown when the page is opened without a period
DEFAULT_MONTHS = 12

router = APIRouter(include_in_schema=False)


@router.get(ADMIN)
def admin_home(request: Request) -> Response:
    """The admin sections of the signed-in user (module doc)."""
    found = admin_session(request)
    if not isinstance(found, Admin):
        return found
    a = found
    sections = sections_of(a.actor)
    if not sections:
        return forbidden(a)
    items = [html('<li class="card"><h2><a href="{href}">{label}</a></h2><p class="muted">{help}</p></li>',
                  href=s.path, label=a.t(f"admin.nav.{s.key}"), help=a.t(f"admin.help.{s.key}")) for s in sections]
    return render(a, "", a.t("admin.title"), html('<ul class="admin-sections">{items}</ul>', items=join(items)))


# -- usage --------------------------------------------------------------------------------------


def _period(a: Admin) -> tuple[Month, Month]:
    """The period of the query (``since``/``until``, ``YYYY-MM``), by default the last
    :data:`DEFAULT_MONTHS` months; ``BadRequest`` when malformed."""
    until_text = a.request.query_params.get("until", "")
    since_text = a.request.query_params.get("since", "")
    until = Month.parse(until_text) if until_text else Month.of(a.ctx.clock())
    since = Month.parse(since_text) if since_text else until.minus(DEFAULT_MONTHS - 1)
    return since, until


def _empty(rows: list[UsageRow]) -> bool:
    return not any(r.studies or r.instances or r.bytes_stored for r in rows)


def _usage_rows(a: Admin, rows: list[UsageRow]) -> list[Safe]:
    """Newest month first; months when the territory (in scope) held and received
    nothing are left out; with several facilities, each month's total and shares."""
    t = a.t
    several = len({r.facility for r in rows}) > 1
    out: list[Safe] = []
    for month in sorted({r.month for r in rows}, reverse=True):
        of_month = [r for r in rows if r.month == month]
        if _empty(of_month):
            continue
        total_stored = sum(r.bytes_stored for r in of_month)
        for r in of_month:
            share = (f"{100 * r.bytes_stored / total_stored:.1f} %".replace(".", "," if t.lang == "fr" else ".")
                     if several and total_stored else "")
            out.append(html(
                '<tr data-month="{month}" data-facility="{slug}"><td>{month}</td>'
                '<td><abbr title="{name}">{slug}</abbr></td><td class="num">{studies}</td>'
                '<td class="num">{instances}</td><td class="num" title="{received_bytes}">{received}</td>'
                '<td class="num" title="{stored_bytes}" data-bytes="{stored_raw}">{stored}</td>'
                '<td class="num">{share}</td></tr>',
                month=r.month, slug=r.facility, name=r.facility_name, studies=number(t, r.studies),
                instances=number(t, r.instances), received_bytes=number(t, r.bytes_received),
                received=size(t, r.bytes_received), stored_bytes=number(t, r.bytes_stored),
                stored_raw=r.bytes_stored, stored=size(t, r.bytes_stored), share=share))
        if several:
            out.append(html(
                '<tr class="total" data-month="{month}" data-facility=""><td>{month}</td><th scope="row">{label}</th>'
                '<td class="num">{studies}</td><td class="num">{instances}</td><td class="num">{received}</td>'
                '<td class="num">{stored}</td><td class="num">{share}</td></tr>',
                month=month, share="100 %" if total_stored else "", label=t("admin.usage.total"), studies=number(t, sum(r.studies for r in of_month)),
                instances=number(t, sum(r.instances for r in of_month)),
                received=size(t, sum(r.bytes_received for r in of_month)), stored=size(t, total_stored)))
    return out


def _notes(a: Admin, rows: list[UsageRow]) -> str:
    months = {r.month for r in rows}
    hidden = any(_empty([r for r in rows if r.month == m]) for m in months)
    notes = [a.t("admin.usage.definitions")]
    return " ".join([*notes, a.t("admin.usage.hidden")] if hidden else notes)


@router.get(USAGE)
def usage_page(request: Request) -> Response:
    """Storage used and exams received per facility and month (module doc)."""
    found = admin_session(request)
    if not isinstance(found, Admin):
        return found
    a = found
    t = a.t
    try:
        since, until = _period(a)
        rows = usage_by_month(a.ctx, a.actor, since, until)
    except CoffreError as exc:
        return failure(a, exc, back=USAGE)
    query = f"since={since}&until={until}"
    form = html(
        '<form method="get" action="{action}" class="card filters-form"><div class="row">'
        '<label for="u-since">{since_label}</label><input id="u-since" name="since" type="month" value="{since}" '
        'required pattern="[0-9]{{4}}-[0-9]{{2}}">'
        '<label for="u-until">{until_label}</label><input id="u-until" name="until" type="month" value="{until}" '
        'required pattern="[0-9]{{4}}-[0-9]{{2}}">'
        '<button type="submit">{submit}</button></div></form>',
        action=USAGE, since_label=t("admin.usage.since"), since=since, until_label=t("admin.usage.until"),
        until=until, submit=t("admin.usage.show"))
    headers = [t("admin.usage.month"), t("admin.usage.facility"), t("admin.usage.studies"),
               t("admin.usage.instances"), t("admin.usage.received"), t("admin.usage.stored"), t("admin.usage.share")]
    shown = _usage_rows(a, rows)
    listing = (table(headers, shown, css="usage") if shown
               else html('<p class="empty">{m}</p>', m=t("admin.usage.none")))
    body = html('<p class="muted">{intro}</p>{form}<p><a class="button small secondary" href="{csv}" download>{csv_label}'
                "</a></p>{listing}<p class=\"hint\">{definitions}</p>",
                intro=t("admin.usage.intro"), form=form, csv=f"{USAGE_CSV}?{query}", csv_label=t("admin.usage.csv"),
                listing=listing, definitions=_notes(a, rows))
    return render(a, "usage", t("admin.nav.usage"), body)


@router.get(USAGE_CSV)
def usage_csv(request: Request) -> Response:
    """The usage table as CSV (UTF-8, one row per facility and month, bytes as integers)."""
    found = admin_session(request)
    if not isinstance(found, Admin):
        return found
    a = found
    try:
        since, until = _period(a)
        rows = usage_by_month(a.ctx, a.actor, since, until)
    except CoffreError as exc:
        return failure(a, exc, back=USAGE)
    headers = {**security_headers(), "Cache-Control": "no-store",
               "Content-Disposition": f'attachment; filename="coffre-usage-{since}-{until}.csv"'}
    return Response(to_csv(rows).encode("utf-8"), media_type="text/csv; charset=utf-8", headers=headers)


for _module in (admin_facilities, admin_users, admin_review, admin_audit):
    router.include_router(_module.router)

__all__ = ["ADMIN", "USAGE", "USAGE_CSV", "router"]
