"""The portal's patient pages: search, the imaging timeline and its dialogs.

- ``GET /portal/patients?q=…``: search by name, birth date, PatientID (the caller's
  facility, or ``facility:PatientID``) or INS (:func:`coffre.services.timeline.search`:
  the same scope as QIDO-RS). An INS or a facility's PatientID with nothing visible
  offers break-the-glass, without saying whether the person exists.
- ``GET /portal/persons/{id}``: the person's studies across facilities, newest first
  (:func:`coffre.services.timeline.timeline`), each with a thumbnail, a link to the
  viewer (``/viewer?StudyInstanceUIDs=…``), "compare with prior" (the study and the
  previous one, same modality preferred, in one viewer), and a visible marker on what is
  seen through break-the-glass. ``GET /portal/timeline?patient_id=…`` opens it by the
  caller's local PatientID.
- Dialogs (``<details>`` forms, no script): record a care relationship, break the glass
  (mandatory reason), record or withdraw the patient's opposition. Each is a POST
  checked by :mod:`.csrf` and calls one service (authorized and audited there), then
  redirects back with a flash message. Users allowed to share also get "create a share
  link" (:mod:`.share_dialog`, which also serves ``/portal/shares``).
- ``GET /portal/thumbnails/{StudyInstanceUID}``: the study's thumbnail for the session's
  actor (:func:`coffre.services.render.render`, authorized and audited as a retrieve,
  absent when out of scope). DICOMweb authenticates only ``Authorization`` headers, so
  the portal's ``<img>`` elements, which can only send the session cookie, use this.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Sequence

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from coffre.app import Context
from coffre.codecs.render import JPEG, RenderOptions, Viewport
from coffre.dicom.ins import check_ins, normalize_ins
from coffre.dicom.instance import normalize_da
from coffre.dicom.uid import check_uid
from coffre.errors import BadRequest, CoffreError, NotAuthorized, NotFound
from coffre.services import grants, render, timeline
from coffre.services.access import Action, Resource, is_allowed
from coffre.services.grants import MAX_REASON, PersonRef
from coffre.services.timeline import Criteria, PersonHit, StudyEntry, Timeline
from coffre.web.portal import share_dialog
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
    Shell,
    error_page,
    format_date,
    format_datetime,
    format_name,
    format_sex,
    html,
    join,
    page,
    redirect,
    security_headers,
    set_flash,
    shell,
)

SEARCH = PORTAL + "/patients"
PERSONS = PORTAL + "/persons"
BREAK_GLASS = PORTAL + "/break-glass"
THUMBNAILS = PORTAL + "/thumbnails"
VIEWER = "/viewer"
MAX_QUERY = 128
THUMBNAIL_SIDE = 128

router = APIRouter(include_in_schema=False)
router.include_router(share_dialog.router)

_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_DMY = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
_YMD = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")


# -- reading the search box ---------------------------------------------------------------


def _date(word: str) -> str | None:
    for pattern, order in ((_DMY, (2, 1, 0)), (_YMD, (0, 1, 2))):
        found = pattern.fullmatch(word)
        if found:
            year, month, day = (found.group(i + 1) for i in order)
            return normalize_da(f"{year}{int(month):02d}{int(day):02d}")
    return None


def parse_query(text: str) -> Criteria:
    """What the search box says (module doc); empty criteria when it says nothing."""
    text = " ".join(text.split())[:MAX_QUERY]
    compact = text.replace(" ", "")
    if len(compact) == 15 and check_ins(normalize_ins(compact)) is None:
        return Criteria(ins=normalize_ins(compact))
    prefix, sep, rest = text.partition(":")
    if sep and rest.strip() and _SLUG.fullmatch(prefix.strip().lower()):
        return Criteria(facility=prefix.strip().lower(), patient_id=rest.strip())
    birth, patient_id, names = "", "", []
    for word in text.split(" "):
        as_date = _date(word)
        if as_date and not birth:
            birth = as_date
        elif any(c.isdigit() for c in word) and not patient_id:
            patient_id = word
        elif word:
            names.append(word)
    return Criteria(name=" ".join(names), birth_date=birth, patient_id=patient_id)


# -- pages ------------------------------------------------------------------------------


def _session_or_login(request: Request) -> Session | Response:
    session = current_session(request)
    return session if session is not None else login_redirect(request)


def _shell(request: Request, session: Session) -> Shell:
    return shell(request, user=session.display_name, csrf=session.csrf, actor=session.actor)


def _search_form(t: Translator, q: str) -> Safe:
    return html(
        '<section class="card"><h1>{title}</h1>'
        '<form method="get" action="{action}" role="search" class="searchbar">'
        '<label for="q">{label}</label><div class="row">'
        '<input id="q" name="q" type="search" value="{q}" required minlength="2" maxlength="{max}" '
        'autocomplete="off" spellcheck="false" autofocus><button type="submit">{submit}</button></div>'
        '<p class="hint">{hint}</p></form></section>',
        title=t("search.title"), action=SEARCH, label=t("search.label"), q=q, max=MAX_QUERY,
        submit=t("search.submit"), hint=t("search.hint"))


def _identities(t: Translator, identities: Sequence[timeline.Identity]) -> Safe:
    return join((html('<span class="ident"><abbr title="{name}">{slug}</abbr> {pid}</span>', name=i.facility_name,
                      slug=i.facility_slug, pid=i.patient_id) for i in identities), " ")


def _names(names: Sequence[str], t: Translator) -> str:
    return " / ".join(format_name(n) for n in names) or t("value.unknown")


def _person(t: Translator, hit: PersonHit) -> Safe:
    marker = html(' <span class="badge btg">{m}</span>', m=t("access.break-glass")) if hit.break_glass else Safe("")
    return html(
        '<li class="card person"><h3><a href="{href}">{name}</a>{marker}</h3><dl class="facts">'
        '<div><dt>{born_label}</dt><dd>{born}</dd></div><div><dt>{sex_label}</dt><dd>{sex}</dd></div>'
        '<div><dt>{ids_label}</dt><dd>{ids}</dd></div></dl>'
        '<p class="muted">{count} · {latest}</p><p><a class="button small" href="{href}">{open}</a></p></li>',
        href=f"{PERSONS}/{hit.person_id}", name=_names(hit.names, t), marker=marker,
        born_label=t("field.birth_date"), born=format_date(t, hit.birth_date),
        sex_label=t("field.sex"), sex=format_sex(t, hit.sex), ids_label=t("field.identifiers"),
        ids=_identities(t, hit.identities), count=t("search.studies", n=hit.studies),
        latest=t("search.latest", date=format_date(t, hit.latest)), open=t("search.open"))


def _reason_field(t: Translator, field_id: str) -> Safe:
    return html('<label for="{id}">{label}</label><textarea id="{id}" name="reason" required maxlength="{max}" '
                'rows="2"></textarea>', id=field_id, label=t("dialog.reason"), max=MAX_REASON)


def _break_glass_form(ctx: Context, session: Session, t: Translator, *, person_id: int | None = None,
                      ref: str = "", open_: bool = False) -> Safe:
    minutes = ctx.settings.territory.break_glass_minutes
    target = (html('<input type="hidden" name="person" value="{p}">', p=person_id) if person_id is not None
              else html('<input type="hidden" name="ref" value="{r}">', r=ref))
    return html(
        '<details class="dialog danger"' + (" open" if open_ else "") + '><summary>{title}</summary>'
        '<form method="post" action="{action}" class="stack"><p>{help}</p>'
        '<input type="hidden" name="csrf" value="{csrf}">{target}{reason}'
        '<button type="submit" class="danger">{submit}</button></form></details>',
        title=t("dialog.btg.title"), action=BREAK_GLASS, help=t("dialog.btg.help", minutes=minutes),
        csrf=session.csrf, target=target, reason=_reason_field(t, "btg-reason"), submit=t("dialog.btg.submit"))


def _may(session: Session, action: Action) -> bool:
    return is_allowed(session.actor, action, Resource(session.actor.facility_id))


@router.get(SEARCH)
def search_page(request: Request) -> Response:
    """The search box and, with ``q``, the persons found (module doc)."""
    found = _session_or_login(request)
    if not isinstance(found, Session):
        return found
    session = found
    ctx: Context = request.app.state.ctx
    s = _shell(request, session)
    t = s.t
    q = " ".join(request.query_params.get("q", "").split())[:MAX_QUERY]
    parts = [_search_form(t, q)]
    if share_dialog.may_share(session):
        parts.append(html('<p class="links">{link}</p>', link=share_dialog.shares_link(t)))
    criteria = parse_query(q) if len(q) >= 2 else Criteria()
    if not criteria.empty:
        try:
            result = timeline.search(ctx, session.actor, criteria)
        except NotAuthorized:
            return error_page(request, s, t("error.forbidden"), 403)
        except CoffreError:
            return error_page(request, s, t("error.invalid"), 400, back=SEARCH)
        items = [_person(t, hit) for hit in result.persons]
        parts.append(html('<section aria-labelledby="results"><h2 id="results">{title}</h2>', title=t("search.results", q=q)))
        if items:
            parts.append(html('<ul class="persons">{items}</ul>', items=join(items)))
        else:
            parts.append(html('<p class="empty">{none}</p>', none=t("search.none", q=q)))
        if result.truncated:
            parts.append(html('<p class="flash info">{m}</p>', m=t("search.truncated")))
        if result.nothing_visible_for_reference and _may(session, Action.BREAK_GLASS):
            parts.append(html('<div class="card warn"><p>{offer}</p>{form}</div>', offer=t("search.btg_offer"),
                              form=_break_glass_form(ctx, session, t, ref=q, open_=True)))
        parts.append(Safe("</section>"))
    title = t("search.results", q=q) if q else t("search.title")
    return page(request, s, title, join(parts))


@router.get(PORTAL + "/timeline")
def timeline_by_patient_id(request: Request) -> Response:
    """The timeline of a PatientID of the caller's facility (or ``facility``)."""
    found = _session_or_login(request)
    if not isinstance(found, Session):
        return found
    patient_id = request.query_params.get("patient_id", "").strip()
    facility = request.query_params.get("facility", "").strip().lower()
    try:
        person_id = timeline.person_of_local_id(request.app.state.ctx, found.actor, patient_id, facility)
    except CoffreError:
        return redirect(f"{SEARCH}?{urllib.parse.urlencode({'q': patient_id})}")
    return redirect(f"{PERSONS}/{person_id}")


def _viewer_link(uids: Sequence[str]) -> str:
    return f"{VIEWER}?StudyInstanceUIDs=" + ",".join(urllib.parse.quote(u, safe=".") for u in uids)


def _prior(studies: Sequence[StudyEntry], index: int) -> StudyEntry | None:
    """The study to compare with: the most recent older one of the same modality and body
    part, else of the same body part, else of the same modality; None when nothing is
    comparable (a knee MR is not compared with a chest X-ray)."""
    current = studies[index]
    older = [s for s in studies[index + 1:] if s.study_uid != current.study_uid]
    modality = set(current.modalities)
    parts = set(current.body_parts)
    ranked = (
        [s for s in older if modality & set(s.modalities) and parts & set(s.body_parts)],
        [s for s in older if parts & set(s.body_parts)],
        [s for s in older if modality & set(s.modalities)],
    )
    return next((found[0] for found in ranked if found), None)


def _study(t: Translator, studies: Sequence[StudyEntry], index: int) -> Safe:
    study = studies[index]
    date = format_date(t, study.date)
    badges = []
    if study.access == "break-glass":
        badges.append(html('<span class="badge btg" title="{label}">{m}</span>',
                           label=t("access.label", reason=t("access.break-glass")), m=t("access.break-glass")))
    elif study.access != "own":
        badges.append(html('<span class="badge">{m}</span>', m=t(f"access.{study.access}")))
    prior = _prior(studies, index)
    compare = Safe("")
    if prior is not None:
        compare = html('<a class="button small secondary" href="{href}">{label}</a>',
                       href=_viewer_link([study.study_uid, prior.study_uid]),
                       label=t("timeline.compare", date=format_date(t, prior.date)))
    iso = f"{study.date[:4]}-{study.date[4:6]}-{study.date[6:8]}" if len(study.date) == 8 else ""
    return html(
        '<li class="study{btg}" data-access="{access}">'
        '<a class="thumb" href="{viewer}"><img src="{thumb}" alt="{alt}" width="{side}" height="{side}" '
        'loading="lazy"></a><div class="meta">'
        '<p class="when"><time datetime="{iso}">{date}</time> · <span class="facility">{facility}</span> {badges}</p>'
        '<h3>{description}</h3><dl class="facts">'
        '<div><dt>{modality_label}</dt><dd>{modalities}</dd></div>'
        '<div><dt>{part_label}</dt><dd>{parts}</dd></div>'
        '<div><dt>{report_label}</dt><dd>{report}</dd></div>'
        '<div><dt>{images_label}</dt><dd>{images}</dd></div></dl>'
        '<p class="links"><a class="button small" href="{viewer}">{open}</a> {compare}</p></div></li>',
        btg=" btg" if study.access == "break-glass" else "", access=study.access,
        viewer=_viewer_link([study.study_uid]), thumb=f"{THUMBNAILS}/{study.study_uid}",
        alt=t("timeline.thumbnail", date=date), side=THUMBNAIL_SIDE, iso=iso, date=date,
        facility=study.facility_name, badges=join(badges, " "),
        description=study.description or t("timeline.study"),
        modality_label=t("timeline.modality"), modalities=", ".join(study.modalities) or t("value.unknown"),
        part_label=t("timeline.body_part"), parts=", ".join(study.body_parts) or t("value.unknown"),
        report_label=t("timeline.report"), report=t("report.archived" if study.has_report else "report.none"),
        images_label=t("timeline.content"), images=t("timeline.images", series=study.series, instances=study.instances),
        open=t("timeline.open_viewer"), compare=compare)


def _status(t: Translator, view: Timeline) -> Safe:
    items = []
    if view.opposed:
        items.append(html('<p class="flash warn">{m}</p>', m=t("status.opposed")))
    if view.care_until is not None:
        items.append(html('<p class="flash info">{m}</p>',
                          m=t("status.care", date=format_datetime(t, view.care_until)[0])))
    if view.break_glass_until is not None:
        day, hour = format_datetime(t, view.break_glass_until)
        items.append(html('<p class="flash warn btg">{m}</p>', m=t("status.break_glass", date=day, time=hour)))
    return join(items)


def _dialogs(ctx: Context, session: Session, t: Translator, view: Timeline) -> Safe:
    person = f"{PERSONS}/{view.person_id}"
    dialogs = []
    if view.may_record_care:
        max_days = ctx.settings.territory.care_relationship_max_days
        dialogs.append(html(
            '<details class="dialog"><summary>{title}</summary><form method="post" action="{action}" class="stack">'
            '<p>{help}</p><input type="hidden" name="csrf" value="{csrf}">'
            '<label for="care-days">{days_label}</label>'
            '<input id="care-days" name="days" type="number" min="1" max="{max}" value="{default}" required>'
            '{reason}<button type="submit">{submit}</button></form></details>',
            title=t("dialog.care.title"), action=f"{person}/care", help=t("dialog.care.help"), csrf=session.csrf,
            days_label=t("dialog.care.days", max=max_days), max=max_days, default=min(90, max_days),
            reason=_reason_field(t, "care-reason"), submit=t("dialog.care.submit")))
    if view.may_break_glass and view.break_glass_until is None:
        dialogs.append(_break_glass_form(ctx, session, t, person_id=view.person_id))
    if view.may_record_opposition and not view.opposed:
        dialogs.append(html(
            '<details class="dialog"><summary>{title}</summary><form method="post" action="{action}" class="stack">'
            '<p>{help}</p><input type="hidden" name="csrf" value="{csrf}">{reason}'
            '<button type="submit">{submit}</button></form></details>',
            title=t("dialog.opposition.title"), action=f"{person}/opposition", help=t("dialog.opposition.help"),
            csrf=session.csrf, reason=_reason_field(t, "opposition-reason"), submit=t("dialog.opposition.submit")))
    if view.may_record_opposition and view.opposed:
        dialogs.append(html(
            '<details class="dialog"><summary>{title}</summary><form method="post" action="{action}" class="stack">'
            '<p>{help}</p><input type="hidden" name="csrf" value="{csrf}">'
            '<button type="submit">{submit}</button></form></details>',
            title=t("dialog.withdraw.title"), action=f"{person}/opposition/withdraw", help=t("dialog.withdraw.help"),
            csrf=session.csrf, submit=t("dialog.withdraw.submit")))
    dialogs.append(share_dialog.share_dialog(ctx, session, t, view))
    dialogs = [d for d in dialogs if d]
    return html('<section class="actions">{d}</section>', d=join(dialogs)) if dialogs else Safe("")


@router.get(PERSONS + "/{person_id}")
def person_page(request: Request, person_id: str) -> Response:
    """The person's imaging timeline (module doc)."""
    found = _session_or_login(request)
    if not isinstance(found, Session):
        return found
    session = found
    ctx: Context = request.app.state.ctx
    s = _shell(request, session)
    t = s.t
    if not person_id.isdigit() or len(person_id) > 18:
        return error_page(request, s, t("error.person"), 404)
    try:
        view = timeline.timeline(ctx, session.actor, int(person_id))
    except NotAuthorized:
        return error_page(request, s, t("error.forbidden"), 403)
    except NotFound:
        return error_page(request, s, t("error.person"), 404)
    except CoffreError:
        return error_page(request, s, t("error.invalid"), 400)
    studies = [_study(t, view.studies, i) for i in range(len(view.studies))]
    listing = (html('<ol class="timeline">{items}</ol>', items=join(studies)) if studies
               else html('<p class="empty">{m}</p>', m=t("timeline.empty")))
    body = html(
        '<p><a href="{back}">{back_label}</a></p>'
        '<section class="card person-head"><h1>{name}</h1><dl class="facts">'
        '<div><dt>{born_label}</dt><dd>{born}</dd></div><div><dt>{sex_label}</dt><dd>{sex}</dd></div>'
        '<div><dt>{ids_label}</dt><dd>{ids}</dd></div></dl>{status}</section>{dialogs}'
        '<section aria-labelledby="timeline"><h2 id="timeline">{title}</h2><p class="muted">{count}</p>{listing}</section>',
        back=SEARCH, back_label=t("timeline.back"), name=_names(view.names, t),
        born_label=t("field.birth_date"), born=format_date(t, view.birth_date), sex_label=t("field.sex"),
        sex=format_sex(t, view.sex), ids_label=t("field.identifiers"), ids=_identities(t, view.identities),
        status=_status(t, view), dialogs=_dialogs(ctx, session, t, view), title=t("timeline.title"),
        count=t("timeline.count", n=len(view.studies)), listing=listing)
    return page(request, s, f"{_names(view.names, t)} · {t('timeline.title')}", body)


# -- dialogs (POST) ---------------------------------------------------------------------

Handler = Callable[[Context, Session, dict[str, str]], tuple[str, str, str]]
"""(where to go, flash kind, flash key) after a dialog's service call."""


async def _dialog(request: Request, handler: Handler, back: str) -> Response:
    """Check origin and CSRF token, run ``handler`` in the thread pool, redirect with a flash."""
    checked = await checked_post(request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    ctx: Context = request.app.state.ctx
    try:
        location, kind, key = await run_in_threadpool(handler, ctx, session, form)
    except NotAuthorized:
        location, kind, key = back, "error", "error.forbidden"
    except NotFound:
        location, kind, key = back, "error", "error.person"
    except CoffreError:
        location, kind, key = back, "error", "error.invalid"
    return set_flash(redirect(location), kind, key)


def _reason(form: dict[str, str]) -> tuple[str, str | None]:
    """The stated reason, or the catalogue key of what is wrong with it."""
    reason = " ".join(form.get("reason", "").split())
    if not reason:
        return "", "error.reason_required"
    if len(reason) > MAX_REASON:
        return "", "error.reason_long"
    return reason, None


def _person_id(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound("person not found")
    return int(raw)


@router.post(PERSONS + "/{person_id}/care")
async def record_care(request: Request, person_id: str) -> Response:
    """Record a care relationship of the user's facility with the person (clinicians)."""
    back = f"{PERSONS}/{person_id}" if person_id.isdigit() else SEARCH

    def handler(ctx: Context, session: Session, form: dict[str, str]) -> tuple[str, str, str]:
        reason, problem = _reason(form)
        limit = ctx.settings.territory.care_relationship_max_days
        days = form.get("days", "").strip()
        if problem is None and not (days.isdigit() and 0 < int(days) <= limit):
            problem = "error.days"
        if problem is not None:
            return back, "error", problem
        grants.record_care(ctx, session.actor, _person_id(person_id), days=int(days), reason=reason)
        return back, "ok", "flash.care"

    return await _dialog(request, handler, back)


@router.post(PERSONS + "/{person_id}/opposition")
async def record_opposition(request: Request, person_id: str) -> Response:
    """Record the person's opposition to sharing (a facility holding one of its identities)."""
    back = f"{PERSONS}/{person_id}" if person_id.isdigit() else SEARCH

    def handler(ctx: Context, session: Session, form: dict[str, str]) -> tuple[str, str, str]:
        reason, problem = _reason(form)
        if problem is not None:
            return back, "error", problem
        grants.record_opposition(ctx, session.actor, _person_id(person_id), reason=reason)
        return back, "ok", "flash.opposition"

    return await _dialog(request, handler, back)


@router.post(PERSONS + "/{person_id}/opposition/withdraw")
async def withdraw_opposition(request: Request, person_id: str) -> Response:
    """Withdraw the person's opposition (at the person's request)."""
    back = f"{PERSONS}/{person_id}" if person_id.isdigit() else SEARCH

    def handler(ctx: Context, session: Session, form: dict[str, str]) -> tuple[str, str, str]:
        grants.withdraw_opposition(ctx, session.actor, _person_id(person_id))
        return back, "ok", "flash.withdrawn"

    return await _dialog(request, handler, back)


def _named(ref: str) -> PersonRef:
    criteria = parse_query(ref)
    if criteria.ins:
        return PersonRef(ins=criteria.ins)
    if criteria.facility and criteria.patient_id:
        return PersonRef(facility=criteria.facility, patient_id=criteria.patient_id)
    raise BadRequest("name the person by INS or facility:PatientID")


@router.post(BREAK_GLASS)
async def break_glass(request: Request) -> Response:
    """Break the glass for a person (by id, INS or facility:PatientID), with a reason."""

    def handler(ctx: Context, session: Session, form: dict[str, str]) -> tuple[str, str, str]:
        ref = form.get("ref", "")[:MAX_QUERY]
        back = (f"{PERSONS}/{form['person']}" if form.get("person", "").isdigit()
                else f"{SEARCH}?{urllib.parse.urlencode({'q': ref})}")
        reason, problem = _reason(form)
        if problem is not None:
            return back, "error", problem
        named = PersonRef(person_id=_person_id(form["person"])) if form.get("person") else _named(ref)
        try:
            person_id = grants.resolve_person(ctx, session.actor, named)
        except NotFound:
            return back, "error", "error.person"
        grants.break_glass(ctx, session.actor, person_id, reason=reason)
        return f"{PERSONS}/{person_id}", "ok", "flash.break_glass"

    return await _dialog(request, handler, SEARCH)


# -- thumbnails -------------------------------------------------------------------------


@router.get(THUMBNAILS + "/{study_uid}")
def thumbnail(request: Request, study_uid: str) -> Response:
    """The study's thumbnail for the session's actor (module doc); 404 when out of scope."""
    headers = {**security_headers(), "Cache-Control": "private, no-store", "Vary": "Cookie"}
    session = current_session(request)
    if session is None:
        return Response(status_code=401, headers=headers)
    try:
        uid = check_uid(study_uid, "StudyInstanceUID")
        image = render.render(request.app.state.ctx, session.actor, render.RenderTarget(uid),
                              RenderOptions(media_type=JPEG, viewport=Viewport(THUMBNAIL_SIDE, THUMBNAIL_SIDE)),
                              operation="portal-thumbnail")
    except CoffreError as exc:
        return Response(status_code=exc.http_status if exc.http_status < 500 else 404, headers=headers)
    return Response(image.content, media_type=image.media_type, headers=headers)


__all__ = ["parse_query", "router"]
