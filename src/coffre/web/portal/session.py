"""``/portal/session``: open and close a viewer session in this browser.

A session is the cookie ``coffre_session`` holding an access token (today a facility
API token, later the portal's user tokens): ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (never sent by another site's request), ``Secure`` on HTTPS, a
browser-session cookie (no expiry). It is minted only from a POST — the token is typed
or pasted into the form, or sent by a script in ``Authorization: Bearer`` — never from
a URL, which would leave the token in history and logs. The token is authenticated
exactly as a DICOMweb request would be before the cookie is set; a cross-site POST
(``Origin`` or ``Sec-Fetch-Site`` of another site) is refused, so another site cannot
sign a browser into an account of its choosing.
"""

from __future__ import annotations

import base64
import hashlib
import html
import urllib.parse

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from coffre.errors import CoffreError
from coffre.web.viewer import (
    SESSION_COOKIE,
    SESSION_PAGE,
    authenticate_token,
    page_headers,
    safe_next,
)

MAX_FORM_BYTES = 16_384

_STYLE = (
    "body{font-family:system-ui,sans-serif;background:#0b1220;color:#e5e7eb;display:flex;"
    "justify-content:center;margin-top:12vh}main{max-width:32rem;width:90%}"
    "input{width:100%;box-sizing:border-box;padding:.5rem;margin:.5rem 0 1rem;font:inherit}"
    "button{padding:.5rem 1.2rem;font:inherit}.error{color:#fca5a5}a{color:#93c5fd}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
PAGE_CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


def _page(next_path: str, error: str = "", status: int = 200) -> HTMLResponse:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Coffre — open the viewer</title><style>{_STYLE}</style></head>
<body><main>
<h1>Coffre</h1>
<p>Paste an access token to open the viewer in this browser.</p>{message}
<form method="post" action="{SESSION_PAGE}">
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="off" required autofocus>
<input type="hidden" name="next" value="{html.escape(next_path, quote=True)}">
<button type="submit">Open the viewer</button>
</form>
<p><a href="/portal/login?{html.escape(urllib.parse.urlencode({"next": next_path}), quote=True)}">Sign in with a user account instead</a></p>
</main></body></html>
"""
    return HTMLResponse(body, status_code=status, headers=page_headers(PAGE_CSP))


@router.get(SESSION_PAGE)
def session_form(request: Request) -> HTMLResponse:
    """The sign-in form; ``next`` is where to go afterwards (a path of this origin)."""
    return _page(safe_next(request.query_params.get("next")))


def _cross_site(request: Request) -> bool:
    """A browser's request started by another site. Browsers send ``Sec-Fetch-Site``;
    ``Origin`` is the fallback (it is ``null`` under this page's ``no-referrer``
    policy, hence only trusted when it names an origin). A request with neither is not
    a browser's (e.g. curl), so it cannot carry a forged form."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in {"same-origin", "none"}
    origin = request.headers.get("origin")
    return origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}"


@router.post(SESSION_PAGE)
async def session_open(request: Request) -> Response:
    """Check the token, set the session cookie and go to ``next`` (303)."""
    if _cross_site(request):
        return Response("cross-site request refused\n", status_code=403, media_type="text/plain",
                        headers=page_headers(PAGE_CSP))
    fields: dict[str, list[str]] = {}
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return Response("form too large\n", status_code=413, media_type="text/plain")
        fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    next_path = safe_next((fields.get("next") or [""])[0] or request.query_params.get("next"))
    token = (fields.get("token") or [""])[0].strip()
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    if not token and scheme.lower() == "bearer":
        token = bearer.strip()
    if not token or len(token) > 8192 or not token.isascii() or not token.isprintable():
        return _page(next_path, "An access token is required.", status=401)
    try:
        await run_in_threadpool(authenticate_token, request, token)
    except CoffreError:
        return _page(next_path, "This token is not valid (unknown, revoked or expired).", status=401)
    response = RedirectResponse(next_path, status_code=303, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        SESSION_COOKIE, token, path="/", httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post(SESSION_PAGE + "/end")
def session_end(request: Request) -> Response:
    """Forget the session cookie in this browser."""
    if _cross_site(request):
        return Response("cross-site request refused\n", status_code=403, media_type="text/plain")
    response = RedirectResponse(SESSION_PAGE, status_code=303, headers={"Cache-Control": "no-store"})
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response
