"""The portal's page shell: HTML escaping, the Content Security Policy, security headers,
flash messages, static files and value formatting.

**Escaping.** Pages are built from literal templates with :func:`html`: every value is
escaped (``&<>"'``) unless it is already :class:`Safe` (the output of :func:`html`
itself, or of :func:`escape`). Values from DICOM (names, descriptions, identifiers)
and from the request are therefore always escaped, in text and in attributes (which are
always double-quoted).

**Policy.** Every page is served with a strict Content Security Policy
(:data:`PORTAL_CSP`): no script at all (``script-src 'none'``: the portal works
without JavaScript), styles only from the portal's static file, images only from this
origin, forms only to this origin, no ``<base>``, no framing. Plus
``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` (URLs of the
portal name persons and studies), ``X-Frame-Options: DENY``, cross-origin isolation of
the window and resources, and ``Cache-Control: no-store`` (pages show patient data and
depend on the session).

**Flash messages** survive one redirect in the ``coffre_flash`` cookie, which holds only
a catalogue key (never free text), and are shown once.
"""

from __future__ import annotations

import hashlib
import html as _html
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from coffre.model import Actor
from coffre.services.access import Action, actions_of
from coffre.web.portal.i18n import LANG_COOKIE, LANGUAGES, Translator, is_flash_key, translator
from coffre.web.viewer import safe_next

PORTAL = "/portal"
STATIC = PORTAL + "/static"
FLASH_COOKIE = "coffre_flash"

#: the portal's Content Security Policy (module doc)
PORTAL_CSP = "; ".join([
    "default-src 'self'",
    "script-src 'none'",
    "style-src 'self'",
    "img-src 'self'",
    "font-src 'self'",
    "connect-src 'none'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

_STATIC_DIR = Path(__file__).parent / "static"
_STATIC_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")
_TYPES = {".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
          ".ico": "image/x-icon"}


# -- escaping ---------------------------------------------------------------------------


class Safe(str):
    """Text that is already HTML (built by :func:`html` or :func:`escape`)."""

    __slots__ = ()


def escape(value: object) -> Safe:
    """``value`` as HTML text or attribute value; Safe values pass unchanged."""
    if isinstance(value, Safe):
        return value
    return Safe(_html.escape("" if value is None else str(value), quote=True))


def html(template: str, /, **values: object) -> Safe:
    """``template`` (trusted, literal) with ``{name}`` replaced by escaped ``values``."""
    return Safe(template.format(**{k: escape(v) for k, v in values.items()}))


def join(parts: Iterable[Safe], separator: str = "") -> Safe:
    return Safe(separator.join(escape(p) for p in parts))


# -- headers ----------------------------------------------------------------------------


def security_headers() -> dict[str, str]:
    """Headers of every portal response."""
    return {
        "Content-Security-Policy": PORTAL_CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Resource-Policy": "same-origin",
    }


def page_headers() -> dict[str, str]:
    """Headers of a portal page (HTML), which shows patient data or depends on the session."""
    return {
        **security_headers(),
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
        "Vary": "Cookie, Accept-Language",
    }


def redirect(location: str) -> RedirectResponse:
    """A 303 (See Other) to ``location`` (a path of this origin), never cached."""
    return RedirectResponse(location, status_code=303, headers={
        "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"})


def set_flash(response: Response, kind: str, key: str) -> Response:
    """Carry a catalogue message (``ok`` or ``error``) to the next page."""
    if is_flash_key(key) and kind in ("ok", "error"):
        response.set_cookie(FLASH_COOKIE, f"{kind}:{key}", max_age=120, path=PORTAL, httponly=True,
                            samesite="strict")
    return response


def take_flash(request: Request) -> tuple[str, str] | None:
    kind, _, key = request.cookies.get(FLASH_COOKIE, "").partition(":")
    return (kind, key) if kind in ("ok", "error") and is_flash_key(key) else None


# -- formatting -------------------------------------------------------------------------


def format_date(t: Translator, value: str) -> str:
    """A DICOM date (YYYYMMDD) as people of the page's language write it."""
    if len(value) != 8 or not value.isdigit():
        return value or t("value.unknown")
    if t.lang == "fr":
        return f"{value[6:8]}/{value[4:6]}/{value[:4]}"
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}"


def format_datetime(t: Translator, value: datetime) -> tuple[str, str]:
    """(date, time) of an instant, in the page's language (the server's time zone is UTC)."""
    return format_date(t, value.strftime("%Y%m%d")), value.strftime("%H:%M")


def format_name(value: str) -> str:
    """A Person Name (PS3.5 6.2: ``Family^Given^Middle^Prefix^Suffix``) for reading."""
    alphabetic = value.split("=", 1)[0]
    parts = [p.strip() for p in alphabetic.split("^")]
    parts += [""] * (5 - len(parts))
    family, given, middle, prefix, suffix = parts[:5]
    first = " ".join(p for p in (prefix, given, middle) if p)
    name = f"{family}, {first}" if family and first else family or first
    return f"{name} {suffix}".strip() if suffix else name


def format_sex(t: Translator, value: str) -> str:
    return t(f"sex.{value}") if value in ("F", "M", "O") else (value or t("value.unknown"))


# -- the shell --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shell:
    """What every page shows around its content."""

    t: Translator
    #: the signed-in user's display name, or None on the sign-in pages
    user: str | None = None
    #: the session's CSRF token (for the sign-out form)
    csrf: str = ""
    #: where the language switch returns
    here: str = PORTAL + "/patients"
    #: the signed-in actor may share studies / has admin pages (header links)
    may_share: bool = False
    may_administer: bool = False


_ADMIN_ACTIONS = frozenset({Action.MANAGE_FACILITY, Action.MANAGE_USERS, Action.MANAGE_TERRITORY,
                            Action.MANAGE_IDENTITY, Action.READ_AUDIT, Action.REVIEW_BREAK_GLASS})


def shell(request: Request, *, user: str | None = None, csrf: str = "", actor: Actor | None = None) -> Shell:
    here = PORTAL + "/patients"
    if request.method == "GET":  # the language switch comes back to this page
        here = safe_next(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    actions = actions_of(actor) if actor is not None else frozenset()
    return Shell(translator(request), user, csrf, here, Action.SHARE in actions, bool(actions & _ADMIN_ACTIONS))


@cache
def _static_files() -> Mapping[str, tuple[bytes, str]]:
    """name -> (bytes, short SHA-256) of the packaged static files."""
    files: dict[str, tuple[bytes, str]] = {}
    if _STATIC_DIR.is_dir():
        for path in sorted(_STATIC_DIR.iterdir()):
            if path.is_file() and _STATIC_NAME.fullmatch(path.name) and path.suffix in _TYPES:
                data = path.read_bytes()
                files[path.name] = (data, hashlib.sha256(data).hexdigest()[:16])
    return files


def static_url(name: str) -> str:
    """The URL of a static file, versioned by its content (cached for a year)."""
    found = _static_files().get(name)
    return f"{STATIC}/{name}" + (f"?v={found[1]}" if found else "")


def _language_switch(s: Shell) -> Safe:
    links = []
    for code in LANGUAGES:
        target = f"{PORTAL}/lang/{code}?" + urllib.parse.urlencode({"next": s.here})
        current = ' aria-current="true"' if code == s.t.lang else ""
        links.append(html('<a href="{href}" hreflang="{code}" lang="{code}"' + current + ">{label}</a>",
                          href=target, code=code, label=s.t(f"lang.{code}")))
    return html('<nav class="lang" aria-label="{label}">{links}</nav>', label=s.t("nav.language"),
                links=join(links, " "))


def _header(s: Shell) -> Safe:
    nav = Safe("")
    if s.user is not None:
        extra = join([
            *([html('<a href="{h}">{l}</a>', h=PORTAL + "/shares", l=s.t("nav.shares"))] if s.may_share else []),
            *([html('<a href="{h}">{l}</a>', h=PORTAL + "/admin", l=s.t("nav.admin"))] if s.may_administer else []),
        ])
        nav = html(
            '<nav class="main" aria-label="{label}"><a href="{patients}">{patients_label}</a>{extra}'
            '<span class="who">{who}</span>'
            '<form method="post" action="{logout}" class="inline">'
            '<input type="hidden" name="csrf" value="{csrf}">'
            '<button type="submit" class="link">{signout}</button></form></nav>',
            label=s.t("nav.main"), patients=PORTAL + "/patients", patients_label=s.t("nav.patients"),
            extra=extra, who=s.t("nav.signed_in_as", name=s.user), logout=PORTAL + "/logout", csrf=s.csrf,
            signout=s.t("nav.signout"))
    return html('<header class="top"><a class="brand" href="{home}">Coffre</a>'
                '<span class="tagline">{tagline}</span>{nav}{lang}</header>',
                home=PORTAL + "/patients", tagline=s.t("app.tagline"), nav=nav, lang=_language_switch(s))


def _flash(s: Shell, flash: tuple[str, str] | None, error: str) -> Safe:
    out = []
    if flash is not None:
        kind, key = flash
        role = "alert" if kind == "error" else "status"
        out.append(html('<p class="flash {kind}" role="{role}">{text}</p>', kind=kind, role=role, text=s.t(key)))
    if error:
        out.append(html('<p class="flash error" role="alert">{text}</p>', text=error))
    return join(out)


def page(request: Request, s: Shell, title: str, body: Safe, *, status: int = 200, error: str = "",
         head: Safe | None = None) -> HTMLResponse:
    """A complete portal page (module doc: escaping, headers, flash)."""
    flash = take_flash(request)
    document = html(
        '<!doctype html>\n<html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="no-referrer">{head}'
        '<title>{title} · Coffre</title><link rel="stylesheet" href="{css}"></head>'
        '<body>{header}<main id="main">{flash}{body}</main>'
        '<footer class="foot">{footer}</footer></body></html>\n',
        lang=s.t.lang, head=head or Safe(""), title=title, css=static_url("portal.css"), header=_header(s),
        flash=_flash(s, flash, error), body=body, footer=s.t("footer.audit"))
    response = HTMLResponse(document, status_code=status, headers=page_headers())
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path=PORTAL, httponly=True, samesite="strict")
    return response


def error_page(request: Request, s: Shell, message: str, status: int, back: str = "") -> HTMLResponse:
    body = html('<section class="card"><h1>{title}</h1><p>{message}</p>'
                '<p><a href="{back}">{back_label}</a></p></section>',
                title=s.t("error.title"), message=message, back=back or PORTAL + "/patients",
                back_label=s.t("error.back"))
    return page(request, s, s.t("error.title"), body, status=status)


# -- routes: static files and the language switch ----------------------------------------

router = APIRouter(include_in_schema=False)


@router.get(STATIC + "/{name}")
def static_file(request: Request, name: str) -> Response:
    """A packaged static file (stylesheet); the versioned URL is cached for a year."""
    found = _static_files().get(name) if _STATIC_NAME.fullmatch(name) else None
    if found is None:
        return PlainTextResponse("not found\n", status_code=404, headers=security_headers())
    data, digest = found
    etag = f'"{digest}"'
    headers = {**security_headers(), "ETag": etag,
               "Cache-Control": "public, max-age=31536000, immutable" if request.query_params.get("v") == digest
               else "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=_TYPES[Path(name).suffix], headers=headers)


@router.get(PORTAL + "/lang/{code}")
def switch_language(request: Request, code: str) -> Response:
    """Remember the language (cookie ``coffre_lang``, a year) and go back to ``next``.

    A GET, deliberately: the preference reveals and changes nothing of value, and the
    switch must work before sign-in; the target is a path of this origin only."""
    response = redirect(safe_next(request.query_params.get("next")))
    if code in LANGUAGES:
        response.set_cookie(LANG_COOKIE, code, max_age=365 * 86400, path="/", httponly=True, samesite="lax",
                            secure=request.url.scheme == "https")
    return response


__all__ = [
    "PORTAL",
    "PORTAL_CSP",
    "Safe",
    "Shell",
    "error_page",
    "escape",
    "format_date",
    "format_name",
    "html",
    "join",
    "page",
    "page_headers",
    "redirect",
    "router",
    "security_headers",
    "set_flash",
    "shell",
    "static_url",
]
