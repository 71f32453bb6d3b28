"""The OHIF viewer served from Coffre's own origin (see docs/viewer.md).

**Serving model.** OHIF's ``index.html`` and its webpack runtime use root-absolute
paths (``/app.bundle.….js``, public path ``"/"`` compiled in), so the build is served at
the root of the origin, as a *fallback*: :class:`ViewerRoute` matches a path only when
it names a file of the installed build's manifest, ``/app-config.js``, or one of OHIF's
client-side routes (:data:`SPA_ROUTES`: ``/``, ``/viewer…``, the other modes), and never
under the reserved prefixes (:data:`RESERVED`: ``/api``, the DICOMweb base, ``/portal``,
``/share``, ``/healthz``, ``/docs``, ``/openapi.json`` …). Any other path falls through to
the routes registered after it, or to 404; so OHIF's file names cannot shadow Coffre's
routes, and Coffre's routes cannot be shadowed by a future OHIF file.

**Sessions.** The viewer pages and ``/app-config.js`` need a session: the cookie
``coffre_session`` holding an access token (minted by ``/portal/session``). Without a
valid one, a page redirects to ``/portal/session?next=…``. ``app-config.js`` is
generated for the session by :func:`coffre.viewer.viewer_config` and never cached.

**Headers.** Every response: ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
no-referrer``, ``Cross-Origin-Resource-Policy: same-origin``,
``Cross-Origin-Embedder-Policy: require-corp`` and the Content Security Policy of
:func:`content_security_policy` (a script's policy governs it when it runs as a web
worker). Pages add ``Cache-Control: no-store``, ``X-Frame-Options: DENY``,
``Cross-Origin-Opener-Policy: same-origin`` and a ``Permissions-Policy``. Hashed assets
are cached for a year, ``immutable``; the other files revalidate with an ETag (their
SHA-256).

If no build is installed, the viewer's routes answer 503 with the command that
installs it; nothing is ever downloaded at serve time.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Match
from starlette.types import Scope

from coffre.app import Context
from coffre.errors import CoffreError
from coffre.model import Actor
from coffre.viewer.bundle import Bundle, fetch_hint, find_bundle, is_hashed_asset
from coffre.viewer.config import viewer_config

SESSION_COOKIE = "coffre_session"
SESSION_PAGE = "/portal/session"
#: where a browser without a session is sent (the portal's sign-in, which comes back to ``next``)
LOGIN_PAGE = "/portal/login"

#: First path segments OHIF's router answers client-side (its modes' routes and the
#: study list at ``/``); they all get ``index.html``.
SPA_ROUTES = frozenset({
    "viewer", "basic", "segmentation", "tmtv", "dynamic-volume", "usAnnotation",
    "microscopy", "local", "localbasic",
})
#: First path segments the viewer never answers, whatever the build contains.
RESERVED = frozenset({"api", "portal", "share", "healthz", "docs", "redoc", "openapi.json", "dicomweb"})

#: Seconds between two looks for a build while none is installed.
_RECHECK_SECONDS = 2.0

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".jsonc": "application/json",
    ".webapp": "application/x-web-app-manifest+json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".xml": "application/xml",
    ".txt": "text/plain; charset=utf-8",
}

_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def content_security_policy(inline_script_hashes: tuple[str, ...] = (), *, worker: bool = False) -> str:
    """The viewer's Content Security Policy; every source listed was measured as needed
    in Chromium (docs/viewer.md), everything else is refused.

    - pages: ``script-src 'self'`` plus the SHA-256 of ``index.html``'s two inline
      scripts (they set ``window.PUBLIC_URL``): no ``'unsafe-inline'``, no eval of any
      kind, not even WebAssembly (stack, MPR and volume views need none in the page);
    - scripts (``worker=True``), whose policy applies only when they run as a web worker:
      ``'unsafe-eval'`` as well, for the image decoding worker: the OpenJPEG (JPEG 2000)
      and CharLS (JPEG-LS) decoders are Emscripten/embind builds that create functions
      with ``new Function``, and all codecs compile WebAssembly. A worker has no DOM,
      no cookies and no token: it receives compressed frames and returns pixels;
    - ``style-src 'self' 'unsafe-inline'``: the UI sets styles at run time (style
      elements and attributes); a style cannot run code;
    - ``img-src 'self' data:``: the UI's icons and the study browser's thumbnails are
      ``data:`` URLs;
    - ``connect-src 'self'``: the viewer's files and DICOMweb only: nothing leaves the
      origin; ``frame-ancestors 'none'``: the viewer cannot be framed.
    """
    script = ["'self'", *(f"'sha256-{h}'" for h in inline_script_hashes)]
    if worker:
        script.append("'unsafe-eval'")
    return "; ".join([
        "default-src 'none'",
        f"script-src {' '.join(script)}",
        "worker-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "media-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "font-src 'self'",
        "manifest-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


def security_headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Resource-Policy": "same-origin",
        # a dedicated worker of a cross-origin-isolated page must be isolated too
        # (Chromium blocks the worker script otherwise)
        "Cross-Origin-Embedder-Policy": "require-corp",
    }


def page_headers(csp: str) -> dict[str, str]:
    """Headers of an HTML page of the viewer (or the portal)."""
    return {
        **security_headers(csp),
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        # cross-origin isolation: SharedArrayBuffer for cornerstone's volume loading
        "Cross-Origin-Opener-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    }


def _inline_hashes(html: bytes) -> tuple[str, ...]:
    return tuple(
        base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode("ascii")
        for m in _INLINE_SCRIPT.finditer(html)
    )


@dataclass
class _Served:
    """The installed build as served: its index page and policy, read once."""

    bundle: Bundle
    index_html: bytes
    #: policy of the pages, and of the scripts (which matters when they run as workers)
    csp: str
    worker_csp: str


@dataclass
class ViewerState:
    """Per application: the build (looked up lazily, again while none is found)."""

    ctx: Context
    served: _Served | None = None
    checked_at: float = field(default=-1e9)

    def current(self) -> _Served | None:
        if self.served is None and time.monotonic() - self.checked_at >= _RECHECK_SECONDS:
            self.checked_at = time.monotonic()
            bundle = find_bundle(self.ctx.settings.data_dir)
            if bundle is not None:
                index = bundle.path / "index.html"
                html = index.read_bytes()
                self.served = _Served(bundle, html, content_security_policy(_inline_hashes(html)),
                                      content_security_policy(worker=True))
        return self.served

    def claims(self, path: str) -> bool:
        """Whether ``path`` is the viewer's (see the module's serving model)."""
        rel = path.lstrip("/")
        first = rel.split("/", 1)[0]
        base = self.ctx.settings.http.dicomweb_base.strip("/").split("/", 1)[0]
        if first in RESERVED or first == base:
            return False
        if rel in {"", "app-config.js"} or first in SPA_ROUTES:
            return True
        served = self.current()
        return served is not None and rel in served.bundle.files


def viewer_state(app: Any) -> ViewerState:
    state: ViewerState | None = getattr(app.state, "coffre_viewer", None)
    if state is None:
        state = ViewerState(ctx=app.state.ctx)
        app.state.coffre_viewer = state
    return state


class ViewerRoute(APIRoute):
    """Matches only the viewer's paths (:meth:`ViewerState.claims`), so that it can sit
    at the root without shadowing any route, registered before or after it."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        app = scope.get("app")
        if scope["type"] != "http" or app is None or getattr(app.state, "ctx", None) is None:
            return Match.NONE, {}
        if not viewer_state(app).claims(scope["path"]):
            return Match.NONE, {}
        return super().matches(scope)


# -- sessions --------------------------------------------------------------------------


def authenticate_token(request: Request, token: str) -> Actor:
    """The actor of ``token``, authenticated exactly as a DICOMweb request carrying it
    in ``Authorization: Bearer`` (``services.auth.authenticate``, as ``web.deps``):
    raises the same errors (401, audited). Blocking: call from a sync route or the
    thread pool."""
    from coffre.services.auth import authenticate
    from coffre.web.deps import client_address, get_context

    return authenticate(get_context(request), token, address=client_address(request))


def session_token(request: Request) -> str | None:
    """The access token of the caller's session, if valid (cookie ``coffre_session``).

    This is the one place the viewer learns who is asking; the portal's sessions plug
    in here.
    """
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token or len(token) > 8192 or not token.isascii() or not token.isprintable():
        return None
    try:
        authenticate_token(request, token)
    except CoffreError:
        return None
    return token


def safe_next(value: str | None) -> str:
    """A same-origin path to go back to after signing in (anything else: ``/``)."""
    if not value or len(value) > 4096 or not value.startswith("/") or value.startswith("//"):
        return "/"
    if "\\" in value or any(ord(c) < 0x21 for c in value):
        return "/"
    return value


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = f"{LOGIN_PAGE}?{urllib.parse.urlencode({'next': target})}"
    return RedirectResponse(location, status_code=303, headers={"Cache-Control": "no-store"})


# -- routes ----------------------------------------------------------------------------

router = APIRouter(route_class=ViewerRoute, include_in_schema=False)


def _not_installed() -> Response:
    text = f"The OHIF viewer is not installed on this server: {fetch_hint()}, then restart.\n"
    return PlainTextResponse(text, status_code=503, headers={
        "Cache-Control": "no-store", "Retry-After": "3600", **security_headers("default-src 'none'"),
    })


@router.api_route("/{path:path}", methods=["GET", "HEAD"])
def viewer_resource(request: Request, path: str) -> Response:
    """A file of the build, the session's ``app-config.js``, or a client-side route."""
    state = viewer_state(request.app)
    served = state.current()
    if served is None:
        return _not_installed()
    if path == "app-config.js":
        return _app_config(request, served, state.ctx)
    if path == "" or path == "index.html" or path.split("/", 1)[0] in SPA_ROUTES:
        if session_token(request) is None:
            return login_redirect(request)
        return Response(served.index_html, media_type="text/html; charset=utf-8",
                        headers={**page_headers(served.csp), "Vary": "Cookie"})
    file = served.bundle.file(path)
    if file is None:
        return PlainTextResponse("not found\n", status_code=404)
    return _file(request, served, path, file)


def _app_config(request: Request, served: _Served, ctx: Context) -> Response:
    # the session's token is in it: never stored by any cache
    headers = {**security_headers(served.csp), "Cache-Control": "no-store", "Vary": "Cookie"}
    token = session_token(request)
    if token is None:
        # the session ended between the page and its script: back to the sign-in page
        body = f"window.location.replace({SESSION_PAGE!r} + '?next=' + encodeURIComponent(window.location.pathname + window.location.search));\n"
        return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)
    base = str(request.base_url).rstrip("/") + ctx.settings.http.dicomweb_base
    return Response(viewer_config(base, token), media_type="text/javascript; charset=utf-8", headers=headers)


def _file(request: Request, served: _Served, name: str, file: Path) -> Response:
    etag = f'"{served.bundle.files[name][:32]}"'
    if name.endswith(".html"):
        headers = page_headers(served.csp)
    else:
        headers = security_headers(served.worker_csp if name.endswith((".js", ".mjs")) else served.csp)
        # the build never changes under a name: hashed names forever, others revalidate
        headers["Cache-Control"] = "public, max-age=31536000, immutable" if is_hashed_asset(name) else "no-cache"
    headers["ETag"] = etag
    if request.headers.get("if-none-match", "") in {etag, f"W/{etag}", "*"}:
        return Response(status_code=304, headers=headers)
    media_type = _TYPES.get(file.suffix.lower(), "application/octet-stream")
    return FileResponse(file, media_type=media_type, headers=headers)


__all__ = [
    "SESSION_COOKIE",
    "ViewerRoute",
    "authenticate_token",
    "content_security_policy",
    "page_headers",
    "router",
    "security_headers",
    "session_token",
]
