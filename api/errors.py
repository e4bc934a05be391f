"""One renderer for every 4xx/5xx: RFC 9457 `application/problem+json`.

Why one place: routes never build error responses; they raise. Whatever is raised (a vault
domain error, an API error, a validation failure, a routing miss, a bug) leaves the service in
the same shape, and nothing in it echoes request values (which may be personal data) or
internals (tracebacks, SQL, key ids).

    Exception                        → 500  "Internal error", no detail at all
    ├── VaultError (vault/errors.py)  → its .status / .title / .detail
    │   ├── InvalidRecord             422  + "record" (1-based); uploads add "line"
    │   │   └── RecordTooLarge        413
    │   ├── DuplicateRecord           409
    │   ├── NotFound                  404  (Dataset/Upload/RecordNotFound)
    │   ├── RecordErased              410
    │   ├── InvalidDataset            422  (vault/datasets.py)
    │   └── DatasetExists             409  (api/routes/datasets.py)
    ├── ApiError (here)               → its .status / .title / .detail
    │   ├── Unauthorized              401  + WWW-Authenticate: Bearer
    │   ├── Forbidden                 403
    │   ├── UnsupportedMediaType      415
    │   ├── InvalidLine               422/413  + "line": a bad line of an upload body
    │   ├── EmptyUpload               422  (api/streams.py)
    │   ├── TooManyUploads            429  + Retry-After (api/admission.py)
    │   ├── UploadsBusy               503  + Retry-After (api/admission.py)
    │   └── NotReady                  503  (api/routes/health.py)
    ├── RequestValidationError        → 422  + "errors": [{"loc", "type", "msg"}], no input
    ├── HTTPException (Starlette)     → its status (404/405 routing, 413 body limit,
    │                                    408 body too slow, 422 JSON nested too deep)
    └── ClientDisconnect              → 400, which nobody reads: the client left
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from vault.errors import InvalidRecord, VaultError

PROBLEM_JSON = "application/problem+json"
_log = logging.getLogger(__name__)
# Validation errors listed in one problem; a body with thousands of bad fields gets the first few.
VALIDATION_ERRORS_MAX = 20
# A location names a field, and an unknown field's name is the client's own input: a 60 KB name
# must not come back 60 KB long (twice: in `errors` and in `detail`).
LOC_PART_CHARS_MAX = 64


class ApiError(Exception):
    """An HTTP-level refusal that is not a vault domain error."""

    status: int = 400
    title: str = "Bad request"
    headers: tuple[tuple[str, str], ...] = ()  # sent with the problem, e.g. a 429's Retry-After

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthorized(ApiError):
    status = 401
    title = "Unauthorized"


class Forbidden(ApiError):
    status = 403
    title = "Forbidden"


class UnsupportedMediaType(ApiError):
    status = 415
    title = "Unsupported media type"


class InvalidLine(ApiError):
    """A line of an upload body that cannot be a record. `line` is 1-based, header included."""

    title = "Invalid record"

    def __init__(self, line: int, reason: str, *, status: int = 422) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.status = status
        if status == 413:
            self.title = "Record too large"


# The problem+json shape, declared for every 4xx/5xx of every route (FastAPI's `responses`), so
# the OpenAPI document says what clients really get, and schemathesis checks it.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "line": {"type": "integer", "description": "the bad line of an upload body"},
        "record": {"type": "integer", "description": "the bad record (1-based)"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "string"},
                    "type": {"type": "string"},
                    "msg": {"type": "string"},
                },
            },
        },
    },
}
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
    }
    for code, description in (("4XX", "a client error (RFC 9457)"), ("5XX", "a server error"))
}


def body_too_large(limit_bytes: int) -> StarletteHTTPException:
    """The 413 raised while a body is read. An HTTPException so FastAPI's body parser lets it
    through unchanged (it turns any other exception into a 400)."""
    return StarletteHTTPException(413, f"request body exceeds {limit_bytes} bytes")


def body_timeout(idle_s: float, total_s: float) -> StarletteHTTPException:
    """The 408 raised while a body is read too slowly; the connection is closed after it, as
    the rest of the body may still be on its way."""
    return StarletteHTTPException(
        408,
        f"the request body stopped arriving (no data for {idle_s:g} s, "
        f"or not complete within {total_s:g} s)",
        headers={"Connection": "close"},
    )


def problem(
    status: int, title: str, detail: str | None, request: Request, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body["instance"] = request.url.path
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def _vault_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, VaultError)
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidRecord) and exc.position is not None:
        extra["record"] = exc.position
        line_offset = getattr(request.state, "line_offset", None)
        if isinstance(line_offset, int):
            extra["line"] = exc.position + line_offset
    return problem(exc.status, exc.title, exc.detail, request, **extra)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    extra = {"line": exc.line} if isinstance(exc, InvalidLine) else {}
    response = problem(exc.status, exc.title, exc.detail, request, **extra)
    response.headers.update(dict(exc.headers))
    return response


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # loc, type and msg only: pydantic's "input" and "ctx" may carry the submitted values.
    errors = [
        {
            "loc": ".".join(_clip(str(part)) for part in err.get("loc", ())),
            "type": str(err.get("type", "")),
            "msg": str(err.get("msg", "")),
        }
        for err in list(exc.errors())[:VALIDATION_ERRORS_MAX]
    ]
    fields = ", ".join(e["loc"] for e in errors)
    return problem(422, "Validation failed", f"invalid fields: {fields}", request, errors=errors)


def _clip(text: str) -> str:
    if len(text) <= LOC_PART_CHARS_MAX:
        return text
    return text[: LOC_PART_CHARS_MAX - 1] + "…"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    title = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
    response = problem(exc.status_code, title, detail, request)
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:
        # Starlette names only the first route matching the path; one path may have several
        # (GET and POST /v1/datasets are two routes). RFC 9110 wants them all.
        response.headers["Allow"] = ", ".join(_allowed_methods(request))
    return response


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    # Not a fault of ours: no log line (a client that hangs up in a loop must not fill the log),
    # and a problem that no one will read, so the exception ends here instead of in a traceback.
    return problem(400, "Client disconnected", None, request)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The exception type only: its message may quote a SQL statement with parameters.
    _log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return problem(500, "Internal error", None, request)


def install(app: FastAPI) -> None:
    app.add_exception_handler(VaultError, _vault_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _internal_error)
