"""Admin pages: audit search and the patient access report.

``/portal/admin/audit`` (auditors, ``READ_AUDIT``): events of the auditor's facilities
in time order (:func:`coffre.services.audit.search_events`), filtered by period (dates
in UTC, the end date included), action, actor name and person id, :data:`PAGE` at a
time; "next page" continues after the last event shown (the service's cursor), so
paging is stable while new events arrive. The search is itself audited
(``audit-search``).

``/portal/admin/audit/persons/{id}``: the patient access report
(:func:`coffre.services.audit.access_report`): who — facility, roles, user — touched
the person's data, when, for which purpose, which study. Auditors of a facility that
knows the person see staff names; a facility admin (from the break-the-glass review)
sees "staff" instead. Opening it is audited (``audit-report``).
"""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, date, datetime, timedelta

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from coffre.errors import CoffreError
from coffre.index.audit import AuditRow
from coffre.services import audit, facilities
from coffre.services.audit import AccessEntry
from coffre.web.portal.admin_base import (
    ADMIN,
    Admin,
    admin_session,
    failure,
    positive_id,
    render,
    table,
    when,
)
from coffre.web.portal.admin_messages import ADMIN_MESSAGES
from coffre.web.portal.layout import Safe, html, join, redirect

AUDIT = ADMIN + "/audit"
REPORT = AUDIT + "/persons"
PAGE = 50
#: entries of an access report shown (newest first); the service bounds the report itself
REPORT_ROWS = 2000
DEFAULT_DAYS = 7
MAX_DETAIL = 600
ACTIONS = ("login", "query", "timeline", "retrieve", "store", "break-glass", "break-glass-reviewed", "grant-care",
           "grant-reading", "grant-revoked", "opposition", "identity-link", "identity-unlink", "reconcile-link",
           "reconcile-reject", "person-merge", "person-split", "share-view", "share-download", "user-create",
           "user-roles", "node-add", "node-remove", "association", "audit-search", "audit-report")

router = APIRouter(include_in_schema=False)


class _Filters:
    """The search form's values as typed, and what they mean (or the problem)."""

    def __init__(self, a: Admin) -> None:
        q = a.request.query_params
        today = a.ctx.clock().astimezone(UTC).date()
        self.submitted = "since" in q or "until" in q
        self.since_text = q.get("since", (today - timedelta(days=DEFAULT_DAYS)).isoformat())[:10]
        self.until_text = q.get("until", today.isoformat())[:10]
        self.action = q.get("action", "").strip()[:48]
        self.actor = q.get("actor", "").strip()[:100]
        self.person_text = q.get("person", "").strip()[:18]
        cursor = q.get("cursor", "")
        self.cursor = int(cursor) if cursor.isdigit() and len(cursor) < 19 else None
        self.problem = ""
        self.since = self.until = None
        self.person: int | None = None
        try:
            self.since = self._day(self.since_text)
            end = self._day(self.until_text)
            self.until = end + timedelta(days=1) if end is not None else None
        except ValueError:
            self.problem = "admin.audit.bad_date"
        if self.person_text:
            if self.person_text.isdigit() and int(self.person_text) > 0:
                self.person = int(self.person_text)
            else:
                self.problem = "admin.audit.bad_person"

    @staticmethod
    def _day(text: str) -> datetime | None:
        if not text:
            return None
        day = date.fromisoformat(text)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    def query(self, **extra: object) -> str:
        values = {"since": self.since_text, "until": self.until_text, "action": self.action, "actor": self.actor,
                  "person": self.person_text, **{k: str(v) for k, v in extra.items()}}
        return urllib.parse.urlencode({k: v for k, v in values.items() if v})


def _search_form(a: Admin, f: _Filters) -> Safe:
    t = a.t
    options = join(html('<option value="{v}">', v=v) for v in ACTIONS)
    return html(
        '<form method="get" action="{action}" class="card filters-form" role="search">'
        '<div class="row"><label for="a-since">{since_label}</label>'
        '<input id="a-since" name="since" type="date" value="{since}">'
        '<label for="a-until">{until_label}</label><input id="a-until" name="until" type="date" value="{until}"></div>'
        '<div class="row"><label for="a-action">{action_label}</label>'
        '<input id="a-action" name="action" list="audit-actions" maxlength="48" value="{act}" spellcheck="false">'
        '<datalist id="audit-actions">{options}</datalist>'
        '<label for="a-actor">{actor_label}</label>'
        '<input id="a-actor" name="actor" maxlength="100" value="{actor}" spellcheck="false">'
        '<label for="a-person">{person_label}</label>'
        '<input id="a-person" name="person" inputmode="numeric" maxlength="18" value="{person}"></div>'
        '<button type="submit">{submit}</button></form>',
        action=AUDIT, since_label=t("admin.audit.since"), since=f.since_text, until_label=t("admin.audit.until"),
        until=f.until_text, action_label=t("admin.audit.action"), act=f.action, options=options,
        actor_label=t("admin.audit.actor"), actor=f.actor, person_label=t("admin.audit.person"), person=f.person_text,
        submit=t("admin.audit.search"))


def _report_form(a: Admin) -> Safe:
    t = a.t
    return html(
        '<form method="get" action="{action}" class="card inline-form">'
        '<label for="r-person">{label}</label>'
        '<input id="r-person" name="person" inputmode="numeric" required maxlength="18">'
        '<button type="submit" class="button secondary">{submit}</button></form>',
        action=REPORT, label=t("admin.audit.report_person"), submit=t("admin.audit.open_report"))


def _detail(row: AuditRow) -> Safe:
    shown = {k: v for k, v in row.detail.items() if k != "by"}
    if not shown:
        return Safe("")
    text = json.dumps(shown, ensure_ascii=False, sort_keys=True)
    if len(text) > MAX_DETAIL:
        text = text[:MAX_DETAIL] + "…"
    return html("<code class=\"detail\">{d}</code>", d=text)


def _event_row(a: Admin, row: AuditRow, slugs: dict[int, str]) -> Safe:
    person = (html('<a href="{h}">#{p}</a>', h=f"{REPORT}/{row.person_id}", p=row.person_id)
              if row.person_id is not None else Safe(""))
    obj = f"{row.object_type}:{row.object_id}" if row.object_id else row.object_type
    return html(
        '<tr data-event="{id}" data-action="{action}"><td>{id}</td><td>{at}</td><td><code>{action}</code></td>'
        '<td data-outcome="{outcome}">{outcome}</td><td>{kind}: <code>{name}</code><br><span class="muted">{address}'
        "</span></td><td>{facility}</td><td>{obj}</td><td>{person}</td><td>{detail}</td></tr>",
        id=row.id, at=when(a.t, row.at), action=row.action, outcome=row.outcome, kind=row.actor_kind,
        name=row.actor_name, address=row.actor_address, facility=slugs.get(row.facility_id or 0, ""), obj=obj,
        person=person, detail=_detail(row))


@router.get(AUDIT)
def audit_page(request: Request) -> Response:
    """The audit search (module doc)."""
    found = admin_session(request)
    if not isinstance(found, Admin):
        return found
    a = found
    t = a.t
    f = _Filters(a)
    parts = [_search_form(a, f), _report_form(a)]
    if f.problem:
        parts.append(html('<p class="flash error" role="alert">{m}</p>', m=t(f.problem)))
        return render(a, "audit", t("admin.nav.audit"), join(parts), status=400)
    try:
        result = audit.search_events(a.ctx, a.actor, since=f.since, until=f.until, action=f.action or None,
                                     actor_name=f.actor or None, person_id=f.person, limit=PAGE, cursor=f.cursor)
    except CoffreError as exc:
        return failure(a, exc, back=AUDIT)
    slugs = {fac.id: fac.slug for fac in facilities.list_facilities(a.ctx)}
    headers = ["#", t("admin.audit.when"), t("admin.audit.action"), t("admin.audit.outcome"), t("admin.audit.actor"),
               t("admin.audit.facility"), t("admin.audit.object"), t("admin.audit.person"), t("admin.audit.detail")]
    if result.events:
        parts.append(table(headers, [_event_row(a, e, slugs) for e in result.events],
                           caption=t("admin.audit.shown", n=len(result.events))))
    else:
        parts.append(html('<p class="empty">{m}</p>', m=t("admin.audit.none")))
    pager = []
    if f.cursor is not None:
        pager.append(html('<a href="{h}">{l}</a>', h=f"{AUDIT}?{f.query()}", l=t("admin.first_page")))
    if result.next_cursor is not None:
        pager.append(html('<a href="{h}" rel="next">{l}</a>', h=f"{AUDIT}?{f.query(cursor=result.next_cursor)}",
                          l=t("admin.next")))
    if pager:
        parts.append(html('<p class="pager">{p}</p>', p=join(pager, " · ")))
    return render(a, "audit", t("admin.nav.audit"), join(parts))


# -- the access report ----------------------------------------------------------------------


def _entry_row(a: Admin, e: AccessEntry) -> Safe:
    t = a.t
    purpose = t(f"admin.purpose.{e.purpose}") if e.purpose in _PURPOSES else e.purpose
    return html(
        '<tr data-event="{id}" data-category="{category}"><td>{at}</td><td>{category_label}</td>'
        "<td><code>{action}</code></td><td>{outcome}</td><td>{facility}</td><td>{roles}</td>"
        '<td data-actor="{actor}">{actor}</td><td>{purpose}</td><td><code>{study}</code></td></tr>',
        id=e.event_id, at=when(t, e.at), category=e.category, category_label=t(f"admin.category.{e.category}")
        if e.category in _CATEGORIES else e.category, action=e.action, outcome=e.outcome, facility=e.facility,
        roles=", ".join(t(f"admin.role.{r}") if f"admin.role.{r}" in ADMIN_MESSAGES else r for r in e.roles), actor=e.actor, purpose=purpose, study=e.study_uid)


_PURPOSES = frozenset({"own", "care", "reading", "break-glass", "shared", "system"})
_CATEGORIES = frozenset({"access", "security", "record", "audit"})


@router.get(REPORT)
def report_by_query(request: Request) -> Response:
    """The report form's target: ``?person=ID`` → the report's page."""
    raw = request.query_params.get("person", "").strip()
    return redirect(f"{REPORT}/{raw}" if raw.isdigit() and len(raw) <= 18 else AUDIT)


@router.get(REPORT + "/{person_id}")
def report_page(request: Request, person_id: str) -> Response:
    """The patient access report (module doc)."""
    found = admin_session(request)
    if not isinstance(found, Admin):
        return found
    a = found
    t = a.t
    try:
        report = audit.access_report(a.ctx, a.actor, positive_id(person_id))
    except CoffreError as exc:
        return failure(a, exc, back=AUDIT)
    entries = list(reversed(report.entries))[:REPORT_ROWS]
    notes = [t("admin.report.count", n=len(report.entries))]
    if len(report.persons) > 1:
        notes.append(t("admin.report.merged", persons=", ".join(f"#{p}" for p in report.persons)))
    if not report.staff_names:
        notes.append(t("admin.report.no_names"))
    if report.truncated or len(report.entries) > REPORT_ROWS:
        notes.append(t("admin.report.truncated"))
    headers = [t("admin.audit.when"), t("admin.report.category"), t("admin.audit.action"), t("admin.audit.outcome"),
               t("admin.audit.facility"), t("admin.report.roles"), t("admin.audit.actor"), t("admin.report.purpose"),
               t("admin.report.study")]
    listing = (table(headers, [_entry_row(a, e) for e in entries]) if entries
               else html('<p class="empty">{m}</p>', m=t("admin.report.none")))
    body = html('<p><a href="{back}">{back_label}</a></p><section class="card"><h2>{title}</h2>{notes}</section>'
                "{listing}", back=AUDIT, back_label=t("admin.report.back"),
                title=t("admin.report.person", person=report.person_id),
                notes=join(html('<p class="muted">{n}</p>', n=n) for n in notes), listing=listing)
    return render(a, "audit", t("admin.report.title"), body)


__all__ = ["AUDIT", "REPORT", "router"]
