"""One renderer for every 4xx/5xx: RFC 9457 `application/problem+json`.

Why one place: routes never build error responses; they raise. Whatever is raised (a vault
domain error, an API error, a validation failure, a routing miss, a bug) leaves the service in
the same shape, and nothing in it echoes request values (which may be personal data) or
internals (tracebacks, SQL, key ids).

    Exception                        → 500  "Internal error", a fixed detail, nothing internal
    ├── VaultError (vault/errors.py)  → its .status / .title / .detail
    │   ├── InvalidRecord             422  + "record" (1-based); uploads add "line"
    │   │   └── RecordTooLarge        413
    │   ├── DuplicateRecord           409
    │   ├── NotFound                  404
    │   │   ├── DatasetNotFound       404
    │   │   ├── UploadNotFound        404
    │   │   └── RecordNotFound        404
    │   ├── RecordErased              410
    │   │   └── RecordSuperseded      410  a rectification replaced it; names the current one
    │   ├── RectificationRefused      409  erased, superseded, not anchored, done (vault/errors.py)
    │   │   └── RectificationBusy     409  an upload or erasure holds the dataset's keys
    │   ├── InvalidDataset            422  (vault/datasets.py)
    │   ├── InvalidPredicate          422  (vault/disclosure.py)
    │   ├── DatasetExists             409  (api/http/routes/datasets.py)
    │   └── NoLedgerIdentity          403  (api/services/identity.py)
    ├── ApiError (here)               → its .status / .title / .detail
    │   ├── Unauthorized              401  + WWW-Authenticate: Bearer
    │   │   └── KeyExpired            401  (api/services/keys.py) the right secret of an expired
    │   │                                  key: says so, with its key id, which the caller holds
    │   ├── Forbidden                 403
    │   │   ├── ProofRefused          403  (api/services/subject_sessions.py) a sign-in proof
    │   │   │                              that does not verify over its challenge
    │   │   ├── NotASession           403  (api/services/subject_sessions.py) signing out
    │   │   │                              with an API key
    │   │   ├── MemberSuspended       403  (api/services/member_standing.py) governance
    │   │   │                              suspended the key's member
    │   │   └── KeyReplaced           403  (api/services/member_standing.py) governance moved
    │   │                                  the membership to another ledger key
    │   ├── UnsupportedMediaType      415
    │   ├── InvalidLine               422/413  + "line": a bad line of an upload body
    │   ├── EmptyUpload               422  (api/http/streams.py)
    │   ├── TooManyUploads            429  + Retry-After (api/http/admission.py)
    │   ├── UploadsBusy               503  + Retry-After (api/http/admission.py)
    │   ├── NotReady                  503  (api/http/routes/health.py)
    │   ├── InvalidTransaction        422  (api/http/signed.py)
    │   ├── ChallengeGone             410  (api/services/subject_sessions.py) a sign-in
    │   │                                  challenge used, expired or unknown
    │   ├── AccessRefused             403  (api/http/routes/access.py)
    │   ├── InvalidAccess             422  (api/http/routes/access.py)
    │   ├── InvalidScope              422  (api/http/routes/erasures.py)
    │   ├── ErasureReceiptLost        410  (api/http/routes/erasures.py) an erasure recorded
    │   │                                  whose receipt could not be made, nor ever will be
    │   ├── InvalidNotice             422  (api/services/notices.py)
    │   ├── NoticeNotFound            404  (api/services/notices.py)
    │   ├── InvalidCursor             422  (api/services/export.py)
    │   ├── ExtensionRefused          409  (api/services/requests.py): a request answered,
    │   │                                  extended already, or past its first month
    │   ├── BlockNotFound             404  (api/http/routes/ledger.py)
    │   ├── InvalidWebhook            422  (api/services/recipient_notices.py)
    │   ├── ProcessingRestricted      409  (api/services/restrictions.py)
    │   ├── LedgerUnavailable         503  (api/services/gateway.py)
    │   │   └── LedgerAnswerWithheld  503  (api/services/gateway.py) ordered, its result
    │   │                                  withheld since an erasure followed it
    │   ├── IncidentNotFound          404  (api/services/incidents.py)
    │   ├── InvalidIncident           422  (api/services/incidents.py)
    │   ├── IncidentClosed            409  (api/services/incidents.py)
    │   ├── NotificationMissing       409  (api/services/incidents.py) closing an incident
    │   │                                  neither notified nor assessed unlikely
    │   ├── InvalidFilter             422  (api/http/dpo_views.py) a console filter
    │   │                                  that is not well-formed
    │   ├── MemberNotFound            404  (api/services/directory.py) naming a key no
    │   │                                  member holds
    │   ├── SubjectNotNamed           422  (api/services/directory.py) naming a resident's
    │   │                                  pseudonym
    │   └── LedgerRefused             403/404/409/422/502  (api/services/gateway.py): the
    │                                      contract's result code decides
    ├── RequestValidationError        → 422  + "errors": [{"loc", "type", "msg"}], no input;
    │                                    a body that is not JSON adds "line" and "column"
    ├── DBAPIError, TimeoutError (SQLAlchemy), psycopg.Error (the event loop's own reads,
    │                                    vault/db.py `AsyncPool`)
    │                                 → 503 "Database unavailable" + Retry-After when the
    │                                    database cannot be reached (refused, restarting, the
    │                                    connection lost, the pool exhausted); any other
    │                                    database error is a 500
    ├── HTTPException (Starlette)     → its status (404/405 routing, 413 body limit,
    │                                    408 body too slow, 422 JSON nested too deep,
    │                                    400 body not UTF-8); a 405 lists the path's methods
    │                                    in `Allow` and in its detail
    └── ClientDisconnect              → 400, which nobody reads: the client left

Two statuses or more ("422/413"): the instance sets its own. tests/test_error_tree.py checks
that this tree lists every VaultError and ApiError subclass, under its base, with its status
and module.

Every problem has a `detail` that tells a person what to do next: the raiser's own sentence,
else one of `_FALLBACK_DETAILS` for the status (a routing miss, a bug of ours). A client that
prefers JSON to HTML (`prefers_json`) gets problem+json from the HTML pages too.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
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
# A request's path and a validator's message are cut to these in problems and log lines: both
# may quote the caller's input (a 60 KB path, a 10 KB union tag pydantic names in its
# message), which a refusal must not hand back or log whole.
PATH_CHARS_MAX = 200
MSG_CHARS_MAX = 200
# Validation errors spelled out in `detail`; the rest are in `errors`.
VALIDATION_DETAIL_MAX = 3


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
        "line": {
            "type": "integer",
            "description": "the bad line of an upload body, or where a JSON body stops parsing",
        },
        "column": {
            "type": "integer",
            "description": "where on `line` a JSON body stops parsing (1-based, in characters)",
        },
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


# Media ranges read from an Accept header; a longer list is cut (it is the client's input).
ACCEPT_RANGES_MAX = 32
_JSON_TYPES = ("application/json", "application/problem+json")


def prefers_json(accept: str | None) -> bool:
    """True when an Accept header ranks JSON above HTML (RFC 9110 section 12.5.1).

    For the routes that answer HTML by default: a browser, curl's `*/*` and a missing header
    all rank HTML at least as high and get the page; `Accept: application/json` gets
    problem+json. Each type's weight is that of the most specific range that matches it.
    """
    if not accept:
        return False
    ranges: list[tuple[str, float]] = []
    for part in accept.split(",")[:ACCEPT_RANGES_MAX]:
        media, *params = (p.strip().lower() for p in part.split(";"))
        weight = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    value = float(param[2:])
                except ValueError:
                    value = 0.0
                weight = value if 0.0 <= value <= 1.0 else 0.0  # NaN too
        ranges.append((media, weight))
    json_weight = max(_weight(ranges, media) for media in _JSON_TYPES)
    return json_weight > _weight(ranges, "text/html")


def _weight(ranges: list[tuple[str, float]], media: str) -> float:
    kind = media.split("/")[0] + "/*"
    for candidate in (media, kind, "*/*"):
        weights = [w for m, w in ranges if m == candidate]
        if weights:
            return max(weights)
    return 0.0


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


# The detail of a problem whose raiser gave none: what the client can do about it. A status
# missing here falls back to the standard's one-line description.
_FALLBACK_DETAILS: dict[int, str] = {
    400: "the request could not be read; check its syntax against openapi.yaml",
    404: "no route has this path; the routes are listed at /openapi.json and in openapi.yaml",
    500: "the server failed on this request and logged it; retry later, or give the operator "
    "the time and the path of this request",
}


def fallback_detail(status: int) -> str:
    if status in _FALLBACK_DETAILS:
        return _FALLBACK_DETAILS[status]
    try:
        known = HTTPStatus(status)
    except ValueError:
        return f"the request was refused with status {status}"
    return known.description or known.phrase


def problem(
    status: int, title: str, detail: str | None, request: Request, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    body["detail"] = detail or fallback_detail(status)
    body["instance"] = bounded_path(request.url.path)
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
    syntax = _json_syntax_error(exc)
    if syntax is not None:
        reason, line, column = syntax
        where = f"{reason} at line {line}, column {column}"
        return problem(
            422,
            "Body is not JSON",
            f"the body is not JSON: {where}",
            request,
            line=line,
            column=column,
            errors=[{"loc": "body", "type": "json_invalid", "msg": where}],
        )
    # loc, type and msg only: pydantic's "input" and "ctx" may carry the submitted values.
    errors = [
        {
            "loc": ".".join(_clip(str(part)) for part in err.get("loc", ())),
            "type": str(err.get("type", "")),
            "msg": _cut(str(err.get("msg", "")), MSG_CHARS_MAX),
        }
        for err in list(exc.errors())[:VALIDATION_ERRORS_MAX]
    ]
    shown = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:VALIDATION_DETAIL_MAX])
    more = len(exc.errors()) - min(len(errors), VALIDATION_DETAIL_MAX)
    detail = f"{shown} (and {more} more in `errors`)" if more > 0 else shown
    return problem(422, "Validation failed", detail, request, errors=errors)


def _json_syntax_error(exc: RequestValidationError) -> tuple[str, int, int] | None:
    """(reason, line, column) when the body did not parse as JSON, else None.

    FastAPI reports only the character offset (`loc` = ("body", offset)) and keeps the decoded
    document in `exc.body`; line and column are counted from them as `json` counts them. The
    reason is the `json` module's own fixed sentence, which quotes nothing of the body.
    """
    for err in exc.errors():
        if err.get("type") != "json_invalid":
            continue
        loc = tuple(err.get("loc", ()))
        document = exc.body
        if len(loc) != 2 or not isinstance(loc[1], int) or not isinstance(document, str):
            return None
        offset = loc[1]
        line = document.count("\n", 0, offset) + 1
        column = offset - document.rfind("\n", 0, offset)
        reason = str((err.get("ctx") or {}).get("error", "")) or "invalid JSON"
        return reason[:1].lower() + reason[1:], line, column
    return None


def bounded_path(path: str) -> str:
    """`path` as a problem's `instance` or a log line shows it: whole up to `PATH_CHARS_MAX`,
    else cut, saying how much was left out."""
    return _cut(path, PATH_CHARS_MAX)


# A 32-byte key or hash in hex: a subject's pseudonym in a path (/v1/subjects/{id}/export,
# ?subject_id=...) is personal data, and a log outlives the subject's erasure.
_KEY_HEX = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])")


def logged_path(path: str) -> str:
    """`path` as a log line may show it: every 64-hex-digit run masked as `<key>`, then cut
    as `bounded_path` cuts it."""
    return bounded_path(_KEY_HEX.sub("<key>", path))


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…(+{len(text) - limit})"


def _clip(text: str) -> str:
    if len(text) <= LOC_PART_CHARS_MAX:
        return text
    return text[: LOC_PART_CHARS_MAX - 1] + "…"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    title = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
    allowed: list[str] = []
    if exc.status_code == 405:
        # Starlette names only the first route matching the path; one path may have several
        # (GET and POST /v1/datasets are two routes). RFC 9110 wants them all.
        allowed = _allowed_methods(request)
        detail = detail or _method_detail(request.method, allowed)
    response = problem(exc.status_code, title, detail, request)
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:
        response.headers["Allow"] = ", ".join(allowed)
    return response


# The methods `Allow` may name: RFC 9110's, and PATCH. Probing a fixed list keeps the answer
# free of anything the client sent; a route with another method would be left out of `Allow`,
# which the test over every route of the app would catch.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_METHOD_SHOWN = re.compile(r"^[A-Z]{1,16}$")


def _allowed_methods(request: Request) -> list[str]:
    """Every method that some route of the app accepts at the request's path.

    Asked of the routes' own matching, one method at a time, rather than read from
    `route.methods`: a router added with `include_router` is one entry of `app.routes` with no
    `methods`, and only its `matches` looks at the routes inside it.
    """
    routes = request.app.router.routes
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return allowed


def _method_detail(method: str, allowed: list[str]) -> str:
    shown = method if _METHOD_SHOWN.fullmatch(method) else "this method"
    if not allowed:
        return f"{shown} is not allowed on this path"
    return f"{shown} is not allowed on this path; use {' or '.join(allowed)} (the Allow header)"


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    # Not a fault of ours: no log line (a client that hangs up in a loop must not fill the log),
    # and a problem that no one will read, so the exception ends here instead of in a traceback.
    return problem(
        400, "Client disconnected", "the client closed the connection before its answer", request
    )


# SQLSTATE classes that mean "the server is not there for us right now": connection
# exceptions (08), operator intervention (57: shut down, crashed, starting up) and insufficient
# resources (53: too many connections). A client-side failure to connect has no SQLSTATE.
_DATABASE_DOWN_CLASSES = ("08", "53", "57")
DATABASE_RETRY_AFTER_S = 2


def database_down(exc: BaseException) -> bool:
    """Whether a database error (SQLAlchemy's, or psycopg's own from an `AsyncPool`) means
    the database is unreachable, not that a statement failed: the request may succeed
    unchanged once it is back."""
    if isinstance(exc, SQLAlchemyTimeout):  # no connection free in the pool in time
        return True
    if isinstance(exc, psycopg.Error):
        driver_error: BaseException | None = exc
        if not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return False
    elif isinstance(exc, DBAPIError):
        if exc.connection_invalidated:  # the connection broke under the statement
            return True
        if not isinstance(exc, OperationalError | InterfaceError):
            return False  # a statement the database refused: a bug of ours, a 500
        driver_error = exc.orig
    else:
        return False
    sqlstate = getattr(driver_error, "sqlstate", None)
    return sqlstate is None or str(sqlstate)[:2] in _DATABASE_DOWN_CLASSES


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if not database_down(exc):
        return await _internal_error(request, exc)
    # The type only, as for any error: a message may quote SQL parameters.
    path = logged_path(request.url.path)
    _log.warning("database unavailable (%s) on %s", type(exc).__name__, path)
    response = problem(
        503,
        "Database unavailable",
        "the database does not answer; retry shortly",
        request,
    )
    response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
    return response


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The exception type only: its message may quote a SQL statement with parameters.
    path = logged_path(request.url.path)
    _log.error("unhandled %s on %s %s", type(exc).__name__, request.method, path)
    return problem(500, "Internal error", None, request)


def install(app: FastAPI) -> None:
    app.add_exception_handler(VaultError, _vault_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(SQLAlchemyTimeout, _database_error)
    app.add_exception_handler(psycopg.Error, _database_error)
    app.add_exception_handler(Exception, _internal_error)
