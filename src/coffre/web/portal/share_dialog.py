"""The portal's share links: the timeline's "create a share link" dialog, the one-time
result page and the user's list of links with revocation.

- The dialog (:func:`share_dialog`, on the timeline of users allowed ``Action.SHARE``:
  radiologists, clinicians): one of the timeline's studies, or all of the person's
  studies in an optional date range; lifetime in days (1 to ``[territory]
  share_link_max_days``), maximum uses, download allowed, recipient label.
- ``POST /portal/persons/{id}/share`` (CSRF, :mod:`.csrf`): calls
  :func:`coffre.services.shares.create_share` (authorized and audited there) and answers
  the **result page** directly (no redirect, ``Cache-Control: no-store``): the link's
  full URL (``<origin>/share/<token>``) and its access code, shown this once. They are
  never put in a flash cookie, a URL or a log; Coffre keeps only their hashes.
  A refusal by the service is a 403 page; a form or scope problem goes back to the
  timeline with a flash message.
- ``GET /portal/shares``: the user's links (recipient, scope, expiry, uses, state),
  never a secret, each live one with a revoke button.
- ``POST /portal/shares/{id}/revoke`` (CSRF): :func:`coffre.services.shares.revoke_share`,
  back to the list with a flash message.
"""

from __future__ import annotations

import re

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from coffre.app import Context
from coffre.errors import CoffreError, NotAuthorized, NotFound
from coffre.services import shares
from coffre.services.access import Action, Resource, is_allowed
from coffre.services.grants import PersonRef
from coffre.services.shares import ShareInfo, ShareRequest
from coffre.services.timeline import Timeline
from coffre.web.portal.auth_pages import (
    Session,
    checked_post,
    current_session,
    login_redirect,
)
from coffre.web.portal.i18n import Translator
from coffre.web.portal.layout import (
    PORTAL,
    Safe,
    error_page,
    format_date,
    format_datetime,
    html,
    join,
    page,
    redirect,
    set_flash,
    shell,
)

SHARES = PORTAL + "/shares"
PERSONS = PORTAL + "/persons"
ALL_STUDIES = "all"
DEFAULT_USES = 5

router = APIRouter(include_in_schema=False)

_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


def may_share(session: Session) -> bool:
    """Whether the user's roles allow creating share links (the service decides anyway)."""
    return is_allowed(session.actor, Action.SHARE, Resource(session.actor.facility_id))


def shares_link(t: Translator) -> Safe:
    return html('<a class="button small secondary" href="{href}">{label}</a>', href=SHARES,
                label=t("share.list.link"))


# -- the dialog ---------------------------------------------------------------------------


def share_dialog(ctx: Context, session: Session, t: Translator, view: Timeline) -> Safe:
    """The "create a share link" dialog of a timeline (empty without studies or SHARE)."""
    if not view.studies or not may_share(session):
        return Safe("")
    limit = shares.max_days(ctx)
    options = [html('<option value="{v}">{label}</option>', v=ALL_STUDIES, label=t("share.scope.all"))]
    for study in view.studies:
        label = f"{format_date(t, study.date)} · {study.description or t('timeline.study')} · {study.facility_name}"
        options.append(html('<option value="{v}">{label}</option>', v=study.study_uid, label=label))
    return html(
        '<details class="dialog" id="share-dialog"><summary>{title}</summary>'
        '<form method="post" action="{action}" class="stack"><p>{help}</p>'
        '<input type="hidden" name="csrf" value="{csrf}">'
        '<label for="share-target">{target_label}</label><select id="share-target" name="target">{options}</select>'
        '<fieldset><legend>{range_label}</legend>'
        '<label for="share-from">{from_label}</label><input id="share-from" name="date_from" type="date">'
        '<label for="share-to">{to_label}</label><input id="share-to" name="date_to" type="date"></fieldset>'
        '<label for="share-days">{days_label}</label>'
        '<input id="share-days" name="days" type="number" min="1" max="{max_days}" value="{days}" required>'
        '<label for="share-uses">{uses_label}</label>'
        '<input id="share-uses" name="max_uses" type="number" min="1" max="{max_uses}" value="{uses}" required>'
        '<label><input id="share-download" name="allow_download" type="checkbox" value="1"> {download_label}</label>'
        '<label for="share-recipient">{recipient_label}</label>'
        '<input id="share-recipient" name="recipient" type="text" maxlength="{max_recipient}" '
        'placeholder="{recipient_hint}" autocomplete="off">'
        '<button type="submit" id="share-submit">{submit}</button></form>'
        '<p>{list}</p></details>',
        title=t("share.title"), action=f"{PERSONS}/{view.person_id}/share", help=t("share.help"),
        csrf=session.csrf, target_label=t("share.target"), options=join(options),
        range_label=t("share.range"), from_label=t("share.date_from"), to_label=t("share.date_to"),
        days_label=t("share.days", max=limit), max_days=limit, days=min(shares.DEFAULT_DAYS, limit),
        uses_label=t("share.max_uses", max=shares.MAX_USES), max_uses=shares.MAX_USES, uses=DEFAULT_USES,
        download_label=t("share.download"), recipient_label=t("share.recipient"),
        max_recipient=shares.MAX_RECIPIENT, recipient_hint=t("share.recipient_hint"), submit=t("share.submit"),
        list=shares_link(t))


# -- reading the form ---------------------------------------------------------------------


class _FormProblem(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _number(raw: str, limit: int, key: str) -> int:
    raw = raw.strip()
    if not (raw.isdigit() and len(raw) <= 6 and 0 < int(raw) <= limit):
        raise _FormProblem(key)
    return int(raw)


def _dicom_date(raw: str) -> str:
    """``YYYY-MM-DD`` (a date input) as ``YYYYMMDD``; ``""`` stays open."""
    raw = raw.strip()
    if not raw:
        return ""
    found = _ISO_DATE.fullmatch(raw)
    if found is None:
        raise _FormProblem("error.share_dates")
    return "".join(found.groups())


def share_request(ctx: Context, person_id: int, form: dict[str, str]) -> ShareRequest:
    """The service's request from the dialog's fields (:class:`_FormProblem` if invalid)."""
    days = _number(form.get("days", ""), shares.max_days(ctx), "error.days")
    max_uses = _number(form.get("max_uses", ""), shares.MAX_USES, "error.share_uses")
    recipient = " ".join(form.get("recipient", "").split())
    if len(recipient) > shares.MAX_RECIPIENT:
        raise _FormProblem("error.share_recipient")
    target = form.get("target", "").strip()
    person, date_from, date_to = None, "", ""
    if target == ALL_STUDIES:
        date_from, date_to = _dicom_date(form.get("date_from", "")), _dicom_date(form.get("date_to", ""))
        if date_from and date_to and date_from > date_to:
            raise _FormProblem("error.share_dates")
        person, target = PersonRef(person_id=person_id), ""
    elif not target or len(target) > 64:
        raise _FormProblem("error.share_none")
    return ShareRequest(study_instance_uid=target, person=person, date_from=date_from, date_to=date_to, days=days,
                        max_uses=max_uses, allow_download=bool(form.get("allow_download")), recipient=recipient)


# -- pages --------------------------------------------------------------------------------


def _result_page(request: Request, session: Session, created: shares.CreatedShare, back: str) -> Response:
    s = shell(request, user=session.display_name, csrf=session.csrf, actor=session.actor)
    t = s.t
    url = str(request.base_url).rstrip("/") + created.path
    day, hour = format_datetime(t, created.expires_at)
    body = html(
        '<section class="card" id="share-created"><h1>{title}</h1>'
        '<p class="flash warn" role="alert">{once}</p>'
        '<dl class="facts"><div><dt>{url_label}</dt><dd><code id="share-url">{url}</code></dd></div>'
        '<div><dt>{code_label}</dt><dd><code id="share-code">{code}</code></dd></div>'
        '<div><dt>{expires_label}</dt><dd>{expires}</dd></div>'
        '<div><dt>{studies_label}</dt><dd>{studies}</dd></div></dl>'
        '<p>{separately}</p>'
        '<p><a class="button small" href="{back}">{back_label}</a> {list}</p></section>',
        title=t("share.created.title"), once=t("share.created.once"), url_label=t("share.created.url"),
        url=url, code_label=t("share.created.code"), code=created.access_code,
        expires_label=t("share.expires"), expires=t("share.at", date=day, time=hour),
        studies_label=t("share.studies"), studies=created.studies, separately=t("share.created.separately"),
        back=back, back_label=t("share.created.back"), list=shares_link(t))
    return page(request, s, t("share.created.title"), body)


@router.post(PERSONS + "/{person_id}/share")
async def create_share(request: Request, person_id: str) -> Response:
    """Create a share link from the timeline's dialog and show its secrets once (module doc)."""
    checked = await checked_post(request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    if not person_id.isdigit() or len(person_id) > 18:
        return set_flash(redirect(PORTAL + "/patients"), "error", "error.person")
    back = f"{PERSONS}/{person_id}"
    ctx: Context = request.app.state.ctx
    try:
        wanted = share_request(ctx, int(person_id), form)
        created = await run_in_threadpool(shares.create_share, ctx, session.actor, wanted)
    except _FormProblem as problem:
        return set_flash(redirect(back), "error", problem.key)
    except NotAuthorized:
        s = shell(request, user=session.display_name, csrf=session.csrf, actor=session.actor)
        return error_page(request, s, s.t("error.forbidden"), 403, back=back)
    except NotFound:
        return set_flash(redirect(back), "error", "error.share_none")
    except CoffreError:
        return set_flash(redirect(back), "error", "error.invalid")
    return _result_page(request, session, created, back)


def _scope(t: Translator, info: ShareInfo) -> str:
    if info.scope == "study":
        return t("share.scope.study")
    if info.date_from or info.date_to:
        return t("share.scope.range", start=format_date(t, info.date_from) if info.date_from else "…",
                 end=format_date(t, info.date_to) if info.date_to else "…")
    return t("share.scope.all")


def _row(t: Translator, session: Session, info: ShareInfo) -> Safe:
    day, hour = format_datetime(t, info.expires_at)
    revoke = Safe("")
    if info.state not in ("revoked", "expired"):
        revoke = html(
            '<form method="post" action="{action}" class="inline"><input type="hidden" name="csrf" value="{csrf}">'
            '<button type="submit" class="small danger">{label}</button></form>',
            action=f"{SHARES}/{info.id}/revoke", csrf=session.csrf, label=t("share.revoke"))
    return html(
        '<tr class="share" data-share="{id}" data-state="{state}"><td>{recipient}</td><td>{scope}</td>'
        '<td>{studies}</td><td>{expires}</td><td>{uses}</td><td>{state_label}</td><td>{revoke}</td></tr>',
        id=info.id, state=info.state, recipient=info.recipient or t("share.no_recipient"), scope=_scope(t, info),
        studies=info.studies, expires=t("share.at", date=day, time=hour),
        uses=t("share.uses", uses=info.uses, max=info.max_uses), state_label=t(f"share.state.{info.state}"),
        revoke=revoke)


@router.get(SHARES)
def list_page(request: Request) -> Response:
    """The user's share links, newest first, without any secret."""
    session = current_session(request)
    if session is None:
        return login_redirect(request)
    s = shell(request, user=session.display_name, csrf=session.csrf, actor=session.actor)
    t = s.t
    try:
        links = shares.list_shares(request.app.state.ctx, session.actor)
    except NotAuthorized:
        return error_page(request, s, t("error.forbidden"), 403)
    if links:
        listing = html(
            '<table class="shares"><thead><tr><th>{recipient}</th><th>{scope}</th><th>{studies}</th>'
            '<th>{expires}</th><th>{uses}</th><th>{state}</th><th></th></tr></thead><tbody>{rows}</tbody></table>',
            recipient=t("share.recipient"), scope=t("share.target"), studies=t("share.studies"),
            expires=t("share.expires"), uses=t("share.uses_label"), state=t("share.state"),
            rows=join(_row(t, session, info) for info in links))
    else:
        listing = html('<p class="empty">{m}</p>', m=t("share.list.empty"))
    body = html('<section class="card"><h1>{title}</h1><p class="muted">{help}</p>{listing}</section>',
                title=t("share.list.title"), help=t("share.list.help"), listing=listing)
    return page(request, s, t("share.list.title"), body)


@router.post(SHARES + "/{share_id}/revoke")
async def revoke(request: Request, share_id: str) -> Response:
    """Revoke one of the user's links (CSRF), back to the list with a flash message."""
    checked = await checked_post(request)
    if isinstance(checked, Response):
        return checked
    session, _form = checked
    if not share_id.isdigit() or len(share_id) > 18:
        return set_flash(redirect(SHARES), "error", "error.not_found")
    try:
        await run_in_threadpool(shares.revoke_share, request.app.state.ctx, session.actor, int(share_id))
    except NotFound:
        return set_flash(redirect(SHARES), "error", "error.not_found")
    except CoffreError:
        return set_flash(redirect(SHARES), "error", "error.invalid")
    return set_flash(redirect(SHARES), "ok", "flash.share_revoked")


__all__ = ["SHARES", "may_share", "router", "share_dialog", "share_request", "shares_link"]
