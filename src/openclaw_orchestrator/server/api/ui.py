"""The dashboard at ``/ui`` (docs/dashboard.md): its login, logout, page and assets.

The page and its assets are files of this package (:mod:`..ui`): plain HTML, one JavaScript
module and one stylesheet, nothing from a CDN. Logging in posts the API key once; the
answer sets an HttpOnly, ``SameSite=Strict`` cookie (``Secure`` over https) holding a value
*derived* from the key (:meth:`~.security.Authenticator.ui_cookie`), never the key, which
then stands in for the key on the dashboard's reads only (:func:`~.security.ui_cookie_grants`).
Every page carries a strict Content-Security-Policy: only this origin's scripts, styles and
connections, and no framing.
"""

from __future__ import annotations

import html
import time
from importlib.resources import files
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from .security import UI_COOKIE, Authenticator

__all__ = ["LOGIN_PATH", "UI_PATH", "UI_SESSION_SECONDS", "install_ui"]

UI_PATH = "/ui"
LOGIN_PATH = "/ui/login"
LOGOUT_PATH = "/ui/logout"
STATIC_PATH = "/ui/static"
UI_SESSION_SECONDS = 12 * 3600
"""How long a dashboard login lasts."""
MAX_LOGIN_BODY = 4096
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

pages = APIRouter(include_in_schema=False)


def install_ui(app: FastAPI) -> None:
    """Add the dashboard's pages and its static files to ``app``."""
    static = StaticFiles(directory=str(files("openclaw_orchestrator.server.ui") / "static"))
    app.mount(STATIC_PATH, static, name="ui-static")
    app.include_router(pages)


def _auth(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.authenticator
    return auth


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _is_logged_in(request: Request) -> bool:
    auth = _auth(request)
    return not auth.is_enabled or auth.is_ui_cookie(request.cookies.get(UI_COOKIE), time.time())


@pages.get(UI_PATH)
async def dashboard(request: Request) -> Response:
    """The dashboard, or a redirect to its login page."""
    root = _root(request)
    if not _is_logged_in(request):
        return RedirectResponse(root + LOGIN_PATH, status_code=303, headers=SECURITY_HEADERS)
    page = (files("openclaw_orchestrator.server.ui") / "static" / "index.html").read_text()
    return HTMLResponse(page.replace("{{root}}", html.escape(root)), headers=SECURITY_HEADERS)


@pages.get(LOGIN_PATH)
async def login_page(request: Request) -> Response:
    """The login form (the API key, posted once)."""
    if _is_logged_in(request):
        return RedirectResponse(_root(request) + UI_PATH, status_code=303)
    return _login_html(request, None, 200)


@pages.post(LOGIN_PATH)
async def login(request: Request) -> Response:
    """Check the posted key; set the derived cookie and go to the dashboard, or show the
    form again with the reason (401)."""
    body = await request.body()
    if len(body) > MAX_LOGIN_BODY:
        return _login_html(request, "The form is too large.", 413)
    key = parse_qs(body.decode(errors="replace")).get("key", [""])[0]
    auth = _auth(request)
    if not key or not auth.is_api_key(key) or not auth.is_enabled:
        message = "Enter the API key." if not key else "That is not the API key."
        return _login_html(request, message, 401 if auth.is_enabled else 400)
    expires = int(time.time()) + UI_SESSION_SECONDS
    reply = RedirectResponse(_root(request) + UI_PATH, status_code=303, headers=SECURITY_HEADERS)
    reply.set_cookie(
        UI_COOKIE,
        auth.ui_cookie(expires),
        max_age=UI_SESSION_SECONDS,
        path=_root(request) + "/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return reply


@pages.post(LOGOUT_PATH)
async def logout(request: Request) -> Response:
    """Forget the cookie and go back to the login page."""
    reply = RedirectResponse(_root(request) + LOGIN_PATH, status_code=303)
    reply.delete_cookie(
        UI_COOKIE,
        path=_root(request) + "/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return reply


def _login_html(request: Request, error: str | None, status: int) -> HTMLResponse:
    root = html.escape(_root(request))
    template = (files("openclaw_orchestrator.server.ui") / "static" / "login.html").read_text()
    alert = "" if error is None else f'<p class="error" role="alert">{html.escape(error)}</p>'
    page = template.replace("{{root}}", root).replace("{{error}}", alert)
    return HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)
