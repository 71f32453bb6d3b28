"""What the portal's admin pages share: the signed-in admin, the admin menu, POST
handling with CSRF checks, result messages and value formatting.

**Authorization** is the services' job: a page calls its service with the session's
actor and shows the forbidden error when the service refuses (``NotAuthorized``:
403). The menu (:func:`sections_of`) only hides entries whose action the actor's
roles lack; hiding is not protecting.

**Forms** are POSTs checked by :mod:`.csrf` (origin, then the session's synchronizer
token); a refused check answers 403 and does nothing. After the service call the
browser is redirected (303) back to the page with ``?done=KEY``, a catalogue key
(never free text, so a crafted link can only show one of the catalogue's messages).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from coffre.app import Context
from coffre.errors import (
    AlreadyExists,
    BadRequest,
    CoffreError,
    ConfigurationError,
    Conflict,
    NotAuthorized,
    NotFound,
)
from coffre.model import Actor
from coffre.services.access import Action, Resource, is_allowed
from coffre.web.portal import csrf
from coffre.web.portal.admin_messages import RESULT_KEYS
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
    format_datetime,
    html,
    join,
    page,
    redirect,
    shell,
)

ADMIN = PORTAL + "/admin"
DONE = "done"


@dataclass(frozen=True, slots=True)
class Section:
    """One entry of the admin menu: shown to actors whose roles have one of ``actions``."""

    key: str
    path: str
    actions: tuple[Action, ...]


SECTIONS: tuple[Section, ...] = (
    Section("facilities", ADMIN + "/facilities", (Action.MANAGE_FACILITY,)),
    Section("users", ADMIN + "/users", (Action.MANAGE_USERS,)),
    Section("identity", ADMIN + "/identity", (Action.MANAGE_IDENTITY,)),
    Section("break_glass", ADMIN + "/break-glass", (Action.REVIEW_BREAK_GLASS,)),
    Section("audit", ADMIN + "/audit", (Action.READ_AUDIT,)),
    Section("usage", ADMIN + "/usage", (Action.MANAGE_FACILITY,)),
)


def sections_of(actor: Actor) -> list[Section]:
    """The menu entries of ``actor`` (its roles have the section's action somewhere)."""
    return [s for s in SECTIONS if any(is_allowed(actor, a, Resource(None)) for a in s.actions)]


@dataclass(frozen=True, slots=True)
class Admin:
    """One admin page request: the session, the archive, the page shell."""

    request: Request
    session: Session
    ctx: Context
    shell: Shell

    @property
    def actor(self) -> Actor:
        return self.session.actor

    @property
    def t(self) -> Translator:
        return self.shell.t

    @property
    def csrf(self) -> str:
        return self.session.csrf


def admin_session(request: Request) -> Admin | Response:
    """The signed-in caller, or the redirect to the sign-in page (blocking: sync routes)."""
    session = current_session(request)
    if session is None:
        return login_redirect(request)
    ctx: Context = request.app.state.ctx
    return Admin(request, session, ctx, shell(request, user=session.display_name, csrf=session.csrf, actor=session.actor))


def forbidden(a: Admin) -> HTMLResponse:
    return error_page(a.request, a.shell, a.t("error.forbidden"), 403, back=ADMIN)


def failure(a: Admin, exc: CoffreError, back: str = ADMIN) -> HTMLResponse:
    """The error page of a refused or failed service call of a GET page."""
    if isinstance(exc, NotAuthorized):
        return forbidden(a)
    if isinstance(exc, NotFound):
        return error_page(a.request, a.shell, a.t("error.not_found"), 404, back=back)
    return error_page(a.request, a.shell, a.t("error.invalid"), 400, back=back)


def _menu(a: Admin, current: str) -> Safe:
    links = []
    for section in sections_of(a.actor):
        mark = ' aria-current="page"' if section.key == current else ""
        links.append(html('<li><a href="{href}"' + mark + ">{label}</a></li>", href=section.path,
                          label=a.t(f"admin.nav.{section.key}")))
    return html('<nav class="admin-menu" aria-label="{label}"><ul>{links}</ul></nav>',
                label=a.t("admin.nav.label"), links=join(links))


def _result(a: Admin) -> Safe:
    key = a.request.query_params.get(DONE, "")
    if key not in RESULT_KEYS:
        return Safe("")
    kind = "ok" if key.startswith("admin.ok.") else "error"
    role = "status" if kind == "ok" else "alert"
    return html('<p class="flash {kind}" role="{role}" data-result="{key}">{text}</p>', kind=kind, role=role,
                key=key, text=a.t(key))


def render(a: Admin, section: str, title: str, body: Safe, *, status: int = 200) -> HTMLResponse:
    """An admin page: the menu, the title, the result of the last form, ``body``."""
    content = html('<div class="admin" data-section="{section}">{menu}<div class="admin-body">'
                   '<h1>{title}</h1>{result}{body}</div></div>',
                   section=section, menu=_menu(a, section), title=title, result=_result(a), body=body)
    return page(a.request, a.shell, f"{title} · {a.t('admin.title')}", content, status=status)


def with_done(path: str, key: str) -> str:
    return path + ("&" if "?" in path else "?") + urllib.parse.urlencode({DONE: key})


class Invalid(CoffreError):
    """A form value the page itself refuses, with the catalogue key of the message."""

    http_status = 400

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


Handler = Callable[[Context, Session, dict[str, str]], str]
"""A form's service call: returns the catalogue key of the result."""


def _problem(exc: CoffreError) -> str:
    if isinstance(exc, Invalid):
        return exc.key
    if isinstance(exc, NotFound):
        return "admin.error.not_found"
    if isinstance(exc, AlreadyExists):
        return "admin.error.exists"
    if isinstance(exc, Conflict):
        return "admin.error.conflict"
    if isinstance(exc, BadRequest | ConfigurationError):
        return "admin.error.invalid"
    return "error.invalid"


async def post_form(request: Request, back: str, handler: Handler) -> Response:
    """Check origin and CSRF token, run ``handler`` in the thread pool, go back with its
    result; a refusal of the service answers the forbidden page (403)."""
    checked = await checked_post(request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    ctx: Context = request.app.state.ctx
    try:
        key = await run_in_threadpool(handler, ctx, session, form)
    except NotAuthorized:
        s = shell(request, user=session.display_name, csrf=session.csrf, actor=session.actor)
        return error_page(request, s, s.t("error.forbidden"), 403, back=back)
    except CoffreError as exc:
        key = _problem(exc)
    return redirect(with_done(back, key))


# -- values -------------------------------------------------------------------------------


def when(t: Translator, value: datetime | None) -> str:
    """An instant for reading: date and time in UTC (the server's zone); "" for None."""
    if value is None:
        return ""
    day, hour = format_datetime(t, value)
    return f"{day} {hour} UTC"


def number(t: Translator, value: int) -> str:
    """An integer with the language's thousands separator."""
    text = f"{value:,}"
    return text.replace(",", "\u202f") if t.lang == "fr" else text


def size(t: Translator, value: int) -> str:
    """A byte count in decimal units (kB, MB … / ko, Mo …), one decimal."""
    units = ("o", "ko", "Mo", "Go", "To", "Po") if t.lang == "fr" else ("B", "kB", "MB", "GB", "TB", "PB")
    amount = float(value)
    unit = 0
    while amount >= 1000 and unit < len(units) - 1:
        amount /= 1000
        unit += 1
    text = f"{int(amount)}" if unit == 0 else f"{amount:.1f}"
    if t.lang == "fr":
        text = text.replace(".", ",")
    return f"{text}\u00a0{units[unit]}"


def checked(on: bool) -> Safe:
    return Safe(" checked" if on else "")


def choices(items: Iterable[tuple[str, str, str, bool]], *, form: str = "") -> Safe:
    """Checkboxes ``(id, name, label, checked)`` as a one-row table, each label above its
    box (the portal's stylesheet gives every input the full width of its box)."""
    heads: list[Safe] = []
    cells: list[Safe] = []
    owner = html(' form="{f}"', f=form) if form else Safe("")
    for field_id, name, label, on in items:
        heads.append(html('<th scope="col"><label for="{id}">{label}</label></th>', id=field_id, label=label))
        cells.append(html('<td><input type="checkbox" id="{id}" name="{name}"{owner}{on}></td>', id=field_id,
                          name=name, owner=owner, on=checked(on)))
    return html('<table class="choices"><thead><tr>{heads}</tr></thead><tbody><tr>{cells}</tr></tbody></table>',
                heads=join(heads), cells=join(cells))


def hidden(name: str, value: object) -> Safe:
    return html('<input type="hidden" name="{name}" value="{value}">', name=name, value=value)


def csrf_field(a: Admin) -> Safe:
    return hidden(csrf.CSRF_FIELD, a.csrf)


def table(headers: Iterable[str], rows: Iterable[Safe], *, caption: str = "", css: str = "") -> Safe:
    """A table: escaped header labels, rows already built (``<tr>…</tr>``)."""
    head = join(html('<th scope="col">{h}</th>', h=h) for h in headers)
    cap = html("<caption>{c}</caption>", c=caption) if caption else Safe("")
    return html('<div class="table-wrap"><table class="admin-table {css}">{cap}<thead><tr>{head}</tr></thead>'
                "<tbody>{rows}</tbody></table></div>", css=css, cap=cap, head=head, rows=join(rows))


def reason_of(form: dict[str, str], field: str = "reason", limit: int = 500) -> str:
    """A required free-text reason or note (whitespace folded); :class:`Invalid` otherwise."""
    reason = " ".join(form.get(field, "").split())
    if not reason:
        raise Invalid("error.reason_required")
    if len(reason) > limit:
        raise Invalid("error.reason_long")
    return reason


def positive_id(raw: str) -> int:
    """A positive index id from a URL or form; ``NotFound`` otherwise (ids are never large)."""
    if not raw.isdigit() or len(raw) > 18 or int(raw) == 0:
        raise NotFound("no such object")
    return int(raw)


__all__ = [
    "ADMIN",
    "SECTIONS",
    "Admin",
    "Handler",
    "Invalid",
    "Section",
    "admin_session",
    "checked",
    "choices",
    "csrf_field",
    "failure",
    "forbidden",
    "hidden",
    "number",
    "positive_id",
    "post_form",
    "reason_of",
    "render",
    "sections_of",
    "size",
    "table",
    "when",
    "with_done",
]
