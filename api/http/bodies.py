"""JSON request bodies with a bounded nesting depth, for every JSON route and every upload line.

Why a bound: Python's parser and every recursive walk after it (pydantic, the draft builder,
the contracts' codec) recurse once per level. A 2 KB body nested a thousand levels deep ends in
`RecursionError` somewhere past validation, which is a 500 and a traceback as long as the
nesting; thirty thousand levels stop the parser itself. No request of this API needs more than
a few levels, so anything deeper than `JSON_DEPTH_MAX` is refused with a 422 before any of
that runs, and logged on one line that quotes nothing of the body.

`BoundedJsonRoute` puts the check where FastAPI parses a body (`Request.json`), so a route
only has to be declared on a router that uses it; `loads_bounded` serves the upload lines.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

JSON_DEPTH_MAX = 32
_log = logging.getLogger(__name__)


class TooDeep(ValueError):
    """A JSON document nested deeper than allowed."""


def nesting_exceeds(value: Any, limit: int) -> bool:
    """True when `value` holds arrays or objects more than `limit` levels deep.

    Iterative on purpose: a recursive walk would fail on exactly the inputs it must refuse.
    """
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def loads_bounded(
    raw: bytes | str,
    limit: int = JSON_DEPTH_MAX,
    *,
    loads: Callable[[bytes | str], Any] = json.loads,
) -> Any:
    """`loads` (`json.loads`, or one with its options bound: `vault.jsontext.Loads`), refusing
    documents nested deeper than `limit` with `TooDeep`.

    A document with at most `limit` brackets cannot be deeper, and counting them runs at C
    speed, so ordinary bodies pay no walk at all.
    """
    if isinstance(raw, str):
        brackets = raw.count("[") + raw.count("{")
    else:
        brackets = raw.count(b"[") + raw.count(b"{")
    try:
        value = loads(raw)
    except RecursionError:
        raise TooDeep(f"nested deeper than {limit} levels") from None
    if brackets > limit and isinstance(value, dict | list) and nesting_exceeds(value, limit):
        raise TooDeep(f"nested deeper than {limit} levels")
    return value


def too_deep(request: Request, limit: int = JSON_DEPTH_MAX) -> StarletteHTTPException:
    """The 422 for a body nested too deep, logged once with the route template only."""
    route = getattr(request.scope.get("route"), "path", "unmatched")
    _log.info("refused %s %s: JSON nested deeper than %d levels", request.method, route, limit)
    # An HTTPException: FastAPI's body parser lets it through unchanged (any other exception
    # raised while it parses becomes a 400 that says nothing).
    return StarletteHTTPException(422, f"the JSON body is nested deeper than {limit} levels")


def not_unicode(exc: UnicodeDecodeError) -> StarletteHTTPException:
    """The 422 for a JSON body that is not UTF-8 (nor the UTF-16/32 `json` also reads).

    Raised here because FastAPI answers any decoding error but a syntax error with a 400 that
    says only "There was an error parsing the body". A syntax error is left to FastAPI, and
    `api/http/errors.py` names its line and column.
    """
    return StarletteHTTPException(
        422, f"the body is not JSON: it is not valid {exc.encoding} (byte {exc.start + 1})"
    )


class BoundedRequest(Request):
    """A request whose `json()` is `loads_bounded`, refusing with the 422s above."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = loads_bounded(await self.body())
            except TooDeep:
                raise too_deep(self) from None
            except UnicodeDecodeError as exc:
                raise not_unicode(exc) from None
        return self._json


class BoundedJsonRoute(APIRoute):
    """An `APIRoute` whose JSON body is parsed with `loads_bounded`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(BoundedRequest(request.scope, request.receive))

        return bounded
