"""Signing in and out of the portal: built-in users and an OpenID Connect provider.

**Session.** A portal session is the cookie ``coffre_session`` (the viewer's, see
:mod:`coffre.web.viewer`) holding an access token: ``HttpOnly``, ``SameSite=Strict``,
``Secure`` on HTTPS, ``path=/``, no expiry of its own (it ends with the browser, or
when the token expires: ``[security] token_ttl_seconds`` for Coffre's tokens, the
provider's lifetime for OpenID Connect ones). Every page authenticates the cookie's
token exactly as an API call (:func:`coffre.services.auth.authenticate`): a revoked,
expired or forged token sends the browser back to the sign-in page.

- ``GET /portal/login``, ``POST /portal/login``: user name and password
  (:func:`coffre.services.auth.login`, audited there). Every failure — unknown user,
  wrong password, disabled or locked account — shows the same message, so the page
  does not reveal whether an account exists. The form is protected against login
  CSRF (:mod:`.csrf`).
- ``POST /portal/logout``: revokes the token (:func:`coffre.services.auth.logout`,
  effective in every process within ``revocation_cache_seconds``) and clears the cookie.
- ``GET /portal/oidc/start``, ``GET /portal/oidc/callback``: :mod:`.oidc`. The callback
  answers a small page that moves on by ``<meta http-equiv="refresh">`` rather than a
  redirect: the flow arrives from the provider's site, and a ``SameSite=Strict`` cookie
  is not sent on a redirect chain started by another site, while it is on a
  navigation started by this origin's own page.
"""

from __future__ import annotations

import logging
import secrets
import time
import urllib.parse
from dataclasses import dataclass

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from coffre.app import Context
from coffre.errors import CoffreError
from coffre.model import Actor, ActorKind
from coffre.services import audit, auth
from coffre.services.tokens import NotAuthenticated
from coffre.web.deps import client_address
from coffre.web.portal import csrf
from coffre.web.portal.i18n import Translator
from coffre.web.portal.layout import (
    PORTAL,
    Safe,
    error_page,
    html,
    page,
    redirect,
    set_flash,
    shell,
)
from coffre.web.portal.oidc import (
    STATE_TTL,
    Attempt,
    OidcConfig,
    OidcError,
    authorization_url,
    check_id_token,
    discover,
    exchange_code,
    oidc_config,
)
from coffre.web.viewer import SESSION_COOKIE, safe_next

log = logging.getLogger(__name__)

LOGIN = PORTAL + "/login"
LOGOUT = PORTAL + "/logout"
OIDC_START = PORTAL + "/oidc/start"
OIDC_CALLBACK = PORTAL + "/oidc/callback"
OIDC_COOKIE = "coffre_oidc"
HOME = PORTAL + "/patients"
MAX_TOKEN = 16384

router = APIRouter(include_in_schema=False)


# -- sessions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """The signed-in caller of a request: its actor, access token and CSRF token."""

    actor: Actor
    token: str
    csrf: str

    @property
    def display_name(self) -> str:
        return self.actor.name


def _context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def _plausible(token: str) -> bool:
    return 0 < len(token) <= MAX_TOKEN and token.isascii() and token.isprintable()


def current_session(request: Request) -> Session | None:
    """The session of the ``coffre_session`` cookie, if its token is valid (blocking:
    call from a sync route or through the thread pool)."""
    token = request.cookies.get(SESSION_COOKIE, "")
    if not _plausible(token):
        return None
    try:
        actor = auth.authenticate(_context(request), token, address=client_address(request))
    except CoffreError:
        return None
    if actor.kind is ActorKind.RECIPIENT:  # a share link's session is not a staff session
        return None
    return Session(actor, token, csrf.csrf_token(csrf.portal_secret(request), token))


def login_redirect(request: Request) -> RedirectResponse:
    """To the sign-in page, coming back here afterwards; a stale cookie is cleared."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = here if request.method == "GET" else HOME
    response = redirect(f"{LOGIN}?{urllib.parse.urlencode({'next': safe_next(target)})}")
    if request.cookies.get(SESSION_COOKIE):
        set_flash(response, "error", "login.expired")
        clear_session_cookie(response, request)
    return response


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")


def refused(request: Request, t: Translator, session: Session | None = None) -> HTMLResponse:
    """The answer to a POST that fails the CSRF checks (403, nothing done)."""
    s = shell(request, user=session.display_name if session else None, csrf=session.csrf if session else "",
              actor=session.actor if session else None)
    return error_page(request, s, t("error.csrf"), 403)


async def checked_post(request: Request) -> tuple[Session, dict[str, str]] | Response:
    """The session and form of a portal POST that passes the origin and CSRF checks, or
    the answer to send instead (forbidden page, or the sign-in page)."""
    t = shell(request).t
    session = await run_in_threadpool(current_session, request)
    if csrf.cross_site(request):
        return refused(request, t, session)
    if session is None:
        return login_redirect(request)
    form = await csrf.read_form(request)
    if form is None or not csrf.valid(session.csrf, form.get(csrf.CSRF_FIELD)):
        return refused(request, t, session)
    return session, form


# -- built-in users ---------------------------------------------------------------------


def _login_form(request: Request, next_path: str, nonce: str, *, error: str = "", status: int = 200,
                username: str = "") -> HTMLResponse:
    s = shell(request)
    t = s.t
    config = oidc_config(_context(request).settings.security)
    provider = Safe("")
    if config is not None:
        provider = html('<p><a class="button secondary" href="{href}">{label}</a></p><p class="or">{or_}</p>',
                        href=f"{OIDC_START}?{urllib.parse.urlencode({'next': next_path})}",
                        label=t("login.oidc", provider=config.provider_name), or_=t("login.or"))
    body = html(
        '<section class="card narrow"><h1>{title}</h1>{provider}'
        '<form method="post" action="{action}" class="stack">'
        '<input type="hidden" name="csrf" value="{token}"><input type="hidden" name="next" value="{next}">'
        '<label for="username">{user_label}</label>'
        '<input id="username" name="username" autocomplete="username" required maxlength="64" '
        'autocapitalize="none" spellcheck="false" value="{username}" autofocus>'
        '<label for="password">{password_label}</label>'
        '<input id="password" name="password" type="password" autocomplete="current-password" required '
        'maxlength="1024">'
        '<button type="submit">{submit}</button></form></section>',
        title=t("login.title"), provider=provider, action=LOGIN,
        token=csrf.login_token(csrf.portal_secret(request), nonce), next=next_path,
        user_label=t("login.username"), username=username, password_label=t("login.password"),
        submit=t("login.submit"))
    response = page(request, s, t("login.title"), body, status=status, error=error)
    response.set_cookie(csrf.LOGIN_COOKIE, nonce, max_age=csrf.LOGIN_COOKIE_SECONDS, path=LOGIN,
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


def _login_nonce(request: Request) -> str:
    nonce = request.cookies.get(csrf.LOGIN_COOKIE, "")
    return nonce if 16 <= len(nonce) <= 64 and nonce.isascii() and nonce.isprintable() else csrf.new_login_nonce()


@router.get(PORTAL)
def portal_home() -> Response:
    return redirect(HOME)


@router.get(LOGIN)
def login_page(request: Request) -> Response:
    """The sign-in form (a signed-in browser goes straight on to ``next``)."""
    next_path = safe_next(request.query_params.get("next") or HOME)
    if current_session(request) is not None:
        return redirect(next_path)
    return _login_form(request, next_path, _login_nonce(request))


@router.post(LOGIN)
async def login_submit(request: Request) -> Response:
    """Check the form's token, then the password (:func:`coffre.services.auth.login`)."""
    t = shell(request).t
    if csrf.cross_site(request):
        return refused(request, t)
    form = await csrf.read_form(request) or {}
    next_path = safe_next(form.get("next") or HOME)
    nonce = request.cookies.get(csrf.LOGIN_COOKIE, "")
    expected = csrf.login_token(csrf.portal_secret(request), nonce) if nonce else ""
    if not expected or not csrf.valid(expected, form.get("csrf")):
        return _login_form(request, next_path, _login_nonce(request), error=t("error.csrf"), status=403)
    username = form.get("username", "").strip()[:64]
    password = form.get("password", "")
    if not username or not password:
        return _login_form(request, next_path, nonce, error=t("login.required"), status=400, username=username)
    ctx = _context(request)
    try:
        issued = await run_in_threadpool(auth.login, ctx, username, password, address=client_address(request))
    except NotAuthenticated:
        # one message for every failure: an account's existence or lockout never shows
        return _login_form(request, next_path, nonce, error=t("login.failed"), status=401, username=username)
    except CoffreError:
        return _login_form(request, next_path, nonce, error=t("error.invalid"), status=400, username=username)
    response = redirect(next_path)
    set_session_cookie(response, request, issued.access_token)
    response.delete_cookie(csrf.LOGIN_COOKIE, path=LOGIN, httponly=True, samesite="strict")
    return response


@router.post(LOGOUT)
async def logout(request: Request) -> Response:
    """Revoke the session's token and clear the cookie (CSRF-checked)."""
    t = shell(request).t
    session = await run_in_threadpool(current_session, request)
    if csrf.cross_site(request):
        return refused(request, t, session)
    form = await csrf.read_form(request) or {}
    if session is not None:
        if not csrf.valid(session.csrf, form.get("csrf")):
            return refused(request, t, session)
        if auth.looks_like_jwt(session.token):
            try:
                await run_in_threadpool(auth.logout, _context(request), session.token,
                                        address=client_address(request))
            except CoffreError:
                log.info("logout: the token could not be revoked (already invalid)")
    response = redirect(LOGIN)
    clear_session_cookie(response, request)
    return set_flash(response, "ok", "login.signed_out")


# -- OpenID Connect ---------------------------------------------------------------------


def _redirect_uri(request: Request, config: OidcConfig) -> str:
    return config.redirect_uri or csrf.own_origin(request) + OIDC_CALLBACK


def _oidc_failed(request: Request, config: OidcConfig, reason: str, status: int) -> HTMLResponse:
    log.warning("OpenID Connect sign-in failed: %s", reason)
    audit.record_alone(_context(request), Actor(kind=ActorKind.USER, name="anonymous", facility=None,
                                                address=client_address(request)),
                       "login", outcome="failure", object_type="user",
                       detail={"reason": reason[:200], "scheme": "oidc"})
    t = shell(request).t
    response = _login_form(request, HOME, _login_nonce(request), status=status,
                           error=t("login.oidc_failed", provider=config.provider_name))
    response.delete_cookie(OIDC_COOKIE, path=PORTAL + "/oidc", httponly=True, samesite="lax")
    return response


@router.get(OIDC_START)
def oidc_start(request: Request) -> Response:
    """Go to the provider's authorization endpoint (code flow, PKCE S256)."""
    config = oidc_config(_context(request).settings.security)
    t = shell(request).t
    if config is None:
        return error_page(request, shell(request), t("error.not_found"), 404, back=LOGIN)
    try:
        provider = discover(config.issuer)
    except OidcError as exc:
        return _oidc_failed(request, config, str(exc), 502)
    attempt = Attempt.new(safe_next(request.query_params.get("next") or HOME))
    sealed = csrf.Sealer(csrf.portal_secret(request)).seal("oidc", attempt.as_dict(), STATE_TTL)
    response = redirect(authorization_url(provider, config, _redirect_uri(request, config), attempt))
    response.set_cookie(OIDC_COOKIE, sealed, max_age=STATE_TTL, path=PORTAL + "/oidc", httponly=True,
                        samesite="lax", secure=request.url.scheme == "https")
    return response


@router.get(OIDC_CALLBACK)
def oidc_callback(request: Request) -> Response:
    """Check state and nonce, exchange the code, verify the access token, open the session."""
    ctx = _context(request)
    config = oidc_config(ctx.settings.security)
    s = shell(request)
    if config is None:
        return error_page(request, s, s.t("error.not_found"), 404, back=LOGIN)
    value = csrf.Sealer(csrf.portal_secret(request)).unseal("oidc", request.cookies.get(OIDC_COOKIE))
    attempt = Attempt.from_dict(value) if value is not None else None
    state = request.query_params.get("state", "")
    if attempt is None or not secrets.compare_digest(state.encode("utf-8", "replace"), attempt.state.encode()):
        return _oidc_failed(request, config, "state does not match this browser's sign-in", 400)
    if request.query_params.get("error"):
        return _oidc_failed(request, config, "the provider refused: "
                            + request.query_params.get("error", "")[:64], 401)
    try:
        provider = discover(config.issuer)
        tokens = exchange_code(provider, config, request.query_params.get("code", ""),
                               _redirect_uri(request, config), attempt)
        claims = check_id_token(tokens.id_token, config, attempt, time.time())
    except OidcError as exc:
        return _oidc_failed(request, config, str(exc), 502)
    try:
        actor = auth.authenticate_bearer(ctx, tokens.access_token, client_address(request))
    except CoffreError:
        return _oidc_failed(request, config, "the access token was refused", 401)
    if actor.subject != f"{config.issuer}#{claims['sub']}":
        return _oidc_failed(request, config, "the access token and the ID token name different users", 401)
    audit.record_alone(ctx, actor, "login", object_type="user", object_id=actor.subject,
                       detail={"scheme": "oidc"})
    body = html('<section class="card narrow"><h1>{done}</h1><p><a class="button" href="{next}">{go}</a></p>'
                '</section>', done=s.t("login.oidc_done"), next=attempt.next_path, go=s.t("login.continue"))
    head = html('<meta http-equiv="refresh" content="0;url={next}">', next=attempt.next_path)
    response = page(request, s, s.t("login.oidc_done"), body, head=head)
    set_session_cookie(response, request, tokens.access_token)
    response.delete_cookie(OIDC_COOKIE, path=PORTAL + "/oidc", httponly=True, samesite="lax")
    return response


__all__ = [
    "LOGIN",
    "Session",
    "clear_session_cookie",
    "current_session",
    "login_redirect",
    "refused",
    "router",
    "set_session_cookie",
]
