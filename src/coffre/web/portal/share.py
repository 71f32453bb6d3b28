"""The recipient's pages of a share link (``/share``): access code, studies, download.

- ``GET /share/{token}``: the access-code form, or the **neutral page** (404) when the
  link is unknown, expired, revoked, used up or locked — one page for all, so that it
  tells nothing about which.
- ``POST /share/{token}``: checks the code (``services.shares.open_share``). A wrong
  code shows the form again (401) and counts a failure; the fifth locks the link and
  shows the neutral page, as every refusal does. The right code sets the session
  cookie ``coffre_session`` (the viewer's: ``HttpOnly``, ``SameSite=Strict``,
  ``Secure`` on HTTPS, ending with the session) holding a short-lived recipient token,
  and redirects (303) to ``/share``, so the link token leaves the address bar. The form
  needs no CSRF token (nobody is signed in yet) but a cross-site POST (``Sec-Fetch-Site``
  or ``Origin`` of another site) is refused: another site cannot spend a link's uses
  or lock it.
- ``GET /share``: the read-only list of the link's studies, each with a link to the
  viewer (``/viewer?StudyInstanceUIDs=…``, which accepts the same session), and the
  download button when the link allows it.
- ``GET /share/download``: a ZIP with the studies, a DICOMDIR and a README, streamed
  (``services.export``).
- ``POST /share/end``: forget the session in this browser.

Pages carry the portal's headers (no referrer — the link token is in the URL —,
``no-store``, no framing, a Content Security Policy allowing only their own style).
Nothing here logs a token, a code or patient data.
"""

from __future__ import annotations

import base64
import hashlib
import html
import urllib.parse

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from coffre.errors import CoffreError, NotAuthorized
from coffre.index.shares import SharedStudy
from coffre.model import Actor
from coffre.services import export, shares
from coffre.services.shares import LinkUnavailable, SharePage, WrongCode
from coffre.web.viewer import SESSION_COOKIE, page_headers

MAX_FORM_BYTES = 4096
SHARE_PAGE = "/share"

_STYLE = (
    "body{font-family:system-ui,sans-serif;background:#0b1220;color:#e5e7eb;margin:0;display:flex;"
    "justify-content:center}main{max-width:48rem;width:92%;margin-top:8vh}"
    "input{width:100%;box-sizing:border-box;padding:.5rem;margin:.5rem 0 1rem;font:inherit;"
    "letter-spacing:.15em;text-transform:uppercase}button,.button{padding:.5rem 1.2rem;font:inherit;"
    "color:#0b1220;background:#93c5fd;border:0;border-radius:.3rem;text-decoration:none;display:inline-block}"
    ".error{color:#fca5a5}.muted{color:#9ca3af}table{border-collapse:collapse;width:100%;margin:1rem 0}"
    "th,td{text-align:left;padding:.5rem;border-bottom:1px solid #1f2937}a{color:#93c5fd}"
    "form.inline{display:inline}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
PAGE_CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


def _html(title: str, body: str, status: int = 200) -> HTMLResponse:
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="robots" content="noindex,nofollow">
<title>Coffre — {html.escape(title)}</title><style>{_STYLE}</style></head>
<body><main>
<h1>Coffre</h1>
{body}
</main></body></html>
"""
    return HTMLResponse(page, status_code=status, headers=page_headers(PAGE_CSP))


def neutral_page() -> HTMLResponse:
    """The one answer for every link that cannot be used (no oracle)."""
    return _html("link not available", """<h2>This link is not available</h2>
<p id="unavailable">It may have expired, been revoked or already used, or the address may be
incomplete. Ask the person who shared these images with you for a new link.</p>""", status=404)


def _code_form(path: str, error: str = "", status: int = 200) -> HTMLResponse:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return _html("access code", f"""<h2>Shared medical images</h2>
<p>Enter the access code you received separately from this link.</p>{message}
<form method="post" action="{html.escape(path, quote=True)}">
<label for="code">Access code</label>
<input id="code" name="code" type="text" autocomplete="off" autocapitalize="characters" spellcheck="false"
 maxlength="32" required autofocus>
<button type="submit">Open</button>
</form>
<p class="muted">After {shares.MAX_FAILED_CODES} wrong codes the link is locked.</p>""", status=status)


def _cross_site(request: Request) -> bool:
    """A browser request started by another site (``Sec-Fetch-Site``, else ``Origin``)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in {"same-origin", "none"}
    origin = request.headers.get("origin")
    return origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}"


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


async def _form_code(request: Request) -> str | None:
    """The ``code`` field of a small urlencoded form; None if the body is too large."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return ""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
    return (fields.get("code") or [""])[0]


def _recipient(request: Request) -> Actor | None:
    """The recipient actor of this browser's session cookie, if it holds a valid one."""
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token or not shares.is_share_token(token):
        return None
    try:
        return shares.authenticate_share_token(request.app.state.ctx, token, _address(request))
    except CoffreError:
        return None


# -- the studies page (registered before /share/{token}) -------------------------------------


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


def _name(value: str) -> str:
    return " ".join(p for p in value.split("^") if p).strip()


def _rows(studies: list[SharedStudy]) -> str:
    rows = []
    for s in studies:
        viewer = "/viewer?" + urllib.parse.urlencode({"StudyInstanceUIDs": s.study_instance_uid})
        rows.append(
            "<tr class=\"study\">"
            f"<td>{html.escape(_date(s.study_date))}</td>"
            f"<td>{html.escape(s.study_description or '—')}</td>"
            f"<td>{html.escape(', '.join(s.modalities))}</td>"
            f"<td>{s.instances}</td>"
            f'<td><a class="viewer" href="{html.escape(viewer, quote=True)}">Open in the viewer</a></td>'
            "</tr>"
        )
    return "\n".join(rows)


def _studies_page(page: SharePage) -> HTMLResponse:
    names = sorted({_name(s.patient_name) for s in page.studies if s.patient_name})
    who = f"<p>Patient: <strong>{html.escape(', '.join(names))}</strong></p>" if names else ""
    download = (
        f'<p><a class="button" id="download" href="{SHARE_PAGE}/download" download>'
        "Download all (ZIP with DICOMDIR)</a></p>"
        if page.allow_download else ""
    )
    count = len(page.studies)
    return _html("shared images", f"""<h2>Shared medical images</h2>
{who}<p class="muted">{count} stud{'y' if count == 1 else 'ies'} · available until
{page.expires_at:%Y-%m-%d %H:%M} UTC · read only</p>
<table id="studies"><thead><tr><th>Date</th><th>Description</th><th>Modality</th><th>Images</th><th></th></tr>
</thead><tbody>
{_rows(page.studies)}
</tbody></table>
{download}
<form class="inline" method="post" action="{SHARE_PAGE}/end"><button type="submit">Close this session</button></form>""")


@router.get(SHARE_PAGE)
def share_home(request: Request) -> Response:
    """The link's studies for the recipient of this browser's session."""
    actor = _recipient(request)
    if actor is None:
        return neutral_page()
    try:
        page = shares.shared_studies(request.app.state.ctx, actor)
    except CoffreError:
        return neutral_page()
    return _studies_page(page)


@router.get(SHARE_PAGE + "/download")
def share_download(request: Request) -> Response:
    """The studies as a ZIP (DICOMDIR + README), streamed, if the link allows it."""
    actor = _recipient(request)
    if actor is None:
        return neutral_page()
    try:
        archive = export.share_download(request.app.state.ctx, actor)
    except NotAuthorized:
        return _html("download not allowed", "<p>This link does not allow downloading the images.</p>",
                     status=403)
    except CoffreError:
        return neutral_page()
    headers = {
        "Content-Disposition": f'attachment; filename="{archive.filename}"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return StreamingResponse(archive.chunks, media_type="application/zip", headers=headers)


@router.post(SHARE_PAGE + "/end")
def share_end(request: Request) -> Response:
    """Forget the session cookie in this browser."""
    if _cross_site(request):
        return Response("cross-site request refused\n", status_code=403, media_type="text/plain")
    response = _html("session closed", "<p id=\"closed\">The session is closed. "
                     "Open the link again to see the images.</p>")
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


# -- the link ------------------------------------------------------------------------------


@router.get(SHARE_PAGE + "/{token}")
def share_link(request: Request, token: str) -> Response:
    """The access-code form of a usable link; the neutral page otherwise."""
    if not shares.link_available(request.app.state.ctx, token):
        return neutral_page()
    return _code_form(request.url.path)


@router.post(SHARE_PAGE + "/{token}")
async def share_open(request: Request, token: str) -> Response:
    """Check the access code; on success open a recipient session and go to ``/share``."""
    if _cross_site(request):
        return Response("cross-site request refused\n", status_code=403, media_type="text/plain",
                        headers=page_headers(PAGE_CSP))
    code = await _form_code(request)
    if code is None:
        return Response("form too large\n", status_code=413, media_type="text/plain")
    ctx = request.app.state.ctx
    try:
        session = await run_in_threadpool(shares.open_share, ctx, token, code, address=_address(request))
    except WrongCode:
        return _code_form(request.url.path, "This access code is not valid.", status=401)
    except LinkUnavailable:
        return neutral_page()
    response = RedirectResponse(SHARE_PAGE, status_code=303, headers={"Cache-Control": "no-store"})
    max_age = max(1, int((session.expires_at - ctx.clock()).total_seconds()))
    response.set_cookie(SESSION_COOKIE, session.token, path="/", max_age=max_age, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response
