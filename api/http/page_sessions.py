"""Server-rendered pages behind a session cookie: the DPO page and the dashboards.

Why one module: both trade an API key, posted once in a form, for a short server-side
session named by an HttpOnly, SameSite=Strict `__Host-` cookie, and both answer with the same
strict headers (no cache, a CSP that allows no script and posts only to this origin). The
cookie's name is each page's own, so a dashboard session never opens the DPO page.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import urllib.parse
from collections.abc import Awaitable, Callable, Container
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session

from api.http.errors import prefers_json, problem
from api.services.dpo_sessions import SESSION_TTL_S, close_session, open_session
from api.services.keys import KeyExpired, Member, authenticate
from vault.models import ApiKey

# The pages' templates (api/http/templates), autoescaped: one environment for every page.
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)

PAGE_HEADERS: dict[str, str] = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
# The DPO's console draws charts: script and style from this origin only (the vendored
# Chart.js and the console's own files, `STATIC`), none inline, nothing fetched or framed.
CONSOLE_HEADERS = {
    **PAGE_HEADERS,
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'none'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
}

_STATIC_DIR = Path(__file__).parent / "static"
_STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def _static_files() -> dict[str, tuple[bytes, str, str]]:
    """The console's files by the name the pages link: `<stem>.<digest>.<ext>`, so a new
    version is a new name and a browser may cache each for good. (bytes, type, plain name)"""
    out = {}
    for path in sorted(_STATIC_DIR.iterdir()):
        media_type = _STATIC_TYPES.get(path.suffix)
        if media_type is None:
            continue  # the licences: shipped beside the code, not served
        body = path.read_bytes()
        name = path.name.removesuffix(path.suffix)
        out[f"{name}.{hashlib.sha256(body).hexdigest()[:12]}{path.suffix}"] = (
            body,
            media_type,
            path.name,
        )
    return out


STATIC = _static_files()
STATIC_URLS = {plain: f"/dpo/static/{name}" for name, (_, _, plain) in STATIC.items()}
TEMPLATES.globals["static_url"] = STATIC_URLS.__getitem__


def form_field(name: str) -> Callable[[Request], Awaitable[str]]:
    """A dependency reading the field `name` of an urlencoded form ("" when absent, repeated
    or not a form; the body limit middleware bounds it)."""

    async def read(request: Request) -> str:
        if request.headers.get("content-type", "").split(";")[0].strip() != (
            "application/x-www-form-urlencoded"
        ):
            return ""
        fields = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        values = fields.get(name, [])
        return values[0].strip() if len(values) == 1 else ""

    return read


form_key = form_field("api_key")


_REFUSALS = {401: "Unauthorized", 403: "Forbidden", 406: "Not Acceptable"}


def refusal(
    request: Request,
    status: int,
    message: str | None,
    *,
    form: Callable[[str | None], str],
    sign_in_detail: str,
) -> Response:
    """The page's sign-in form (`form(message)`) for a browser; problem+json for a client that
    prefers JSON to HTML, as every other route answers it (a script cannot act on a form)."""
    if not prefers_json(request.headers.get("accept")):
        return HTMLResponse(form(message), status_code=status, headers=PAGE_HEADERS)
    answer = problem(status, _REFUSALS[status], message or sign_in_detail, request)
    answer.headers.update(PAGE_HEADERS)
    return answer


class SignInRefused(Exception):
    """A posted key opens no session. `detail`: an expired key's own sentence, else None, for
    which the page gives one answer whatever the reason (the key is never echoed)."""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail


def key_of(session: Session, api_key: str, roles: Container[str]) -> tuple[Member, ApiKey]:
    """The member and the stored key behind a posted API key of one of `roles`."""
    try:
        member = authenticate(session, api_key) if api_key else None
    except KeyExpired as exc:
        raise SignInRefused(exc.detail) from None
    if member is None or member.role not in roles:
        raise SignInRefused
    key = session.get(ApiKey, member.key_id)
    assert key is not None, "authenticate just read this key"
    return member, key


def signed_in(target: str, cookie: str, session: Session, key: ApiKey) -> RedirectResponse:
    """Open a session for `key` and send the browser to `target` with its cookie."""
    response = RedirectResponse(target, status_code=303, headers=PAGE_HEADERS)
    response.set_cookie(
        cookie,
        open_session(session, key, dt.datetime.now(dt.UTC)),
        max_age=SESSION_TTL_S,
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    return response


def signed_out(request: Request, session: Session, cookie: str, target: str) -> RedirectResponse:
    """End the session on the server (its row goes), then clear the cookie in the browser."""
    token = request.cookies.get(cookie)
    if token is not None:
        close_session(session, token)
    response = RedirectResponse(target, status_code=303, headers=PAGE_HEADERS)
    response.delete_cookie(cookie, path="/", secure=True, httponly=True, samesite="strict")
    return response
