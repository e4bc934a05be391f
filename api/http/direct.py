"""A JSON route whose plain request skips FastAPI's general request handler.

Why: FastAPI answers every request through one general handler. It reads the body, parses
the content type with `email.message`, solves the dependency graph (a coroutine per
dependency, the body validated through a field adapter), and only then calls the endpoint.
For an endpoint of the consented access's shape (a JSON body, the caller from its API key,
the request) behind this app's error handlers and body limit, that machinery measured
140-180 µs of CPU per request in-process against 72-95 µs taken the short way, and the whole
system's API spent 13 % less CPU per single-record read (docs/BENCHMARKS.md, "Access").

`DirectJsonRoute` takes the plain request the short way: no query string, a body declared
`application/json` that parses and validates against the route's one body model, a caller
whose verified key and standing this process remembers (`deps.remembered_member`), in a role
the route's caller dependency admits. Anything else (a query string, another content type, a
key to look up, a body that does not validate, FastAPI's telemetry or dependency overrides in
use) goes through FastAPI's own handler with the same request, whose body is already read, so
every refusal is FastAPI's, word for word. The short way passes the endpoint the arguments
FastAPI would, and the endpoint must answer with a `Response` (it is not serialized here).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from fastapi.telemetry import get_telemetry_data
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from api.http.bodies import BoundedRequest, loads_bounded
from api.http.deps import ROLES_ATTRIBUTE, bearer, remembered_member, strict_query

_JSON = "application/json"


class DirectJsonRoute(APIRoute):
    """A route for an endpoint `(body: <a model>, <caller>: Member, request)` whose caller
    dependency is `deps.require_role(...)`; see the module docstring. Its JSON body is parsed
    with `loads_bounded` either way, as a `BoundedJsonRoute`'s is."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, with the short way in front (called by `APIRoute.__init__` once
        the endpoint's dependant is built)."""
        general = super().get_route_handler()  # FastAPI's, given the BoundedRequest below
        endpoint = self.endpoint
        body_model, roles, (body_name, caller_name, request_name) = self._plan()

        async def direct(request: Request) -> Response:
            bounded = BoundedRequest(request.scope, request.receive)
            inputs = await _plain_inputs(bounded, body_model, roles)
            if inputs is None:
                return await general(bounded)
            body, caller = inputs
            response = await endpoint(
                **{body_name: body, caller_name: caller, request_name: bounded}
            )
            if not isinstance(response, Response):
                raise TypeError(f"{self.path}: a direct route's endpoint answers with a Response")
            return response

        return direct

    def _plan(self) -> tuple[type[BaseModel], tuple[str, ...], tuple[str, str, str]]:
        """The endpoint's body model, its caller's roles and the names of its three
        parameters; TypeError for an endpoint of another shape."""
        dependant = self.dependant
        callers = [d for d in dependant.dependencies if d.name is not None]
        roles = getattr(callers[0].call, ROLES_ATTRIBUTE, None) if len(callers) == 1 else None
        # The router's `strict_query` refuses only query strings, which the short way leaves
        # to FastAPI; any other dependency would be skipped by it.
        others = [
            d for d in dependant.dependencies if d.name is None and d.call is not strict_query
        ]
        body = dependant.body_params
        model = body[0].field_info.annotation if len(body) == 1 else None
        request_name = dependant.request_param_name
        if (
            roles is None
            or others
            or request_name is None
            or dependant.query_params
            or dependant.path_params
            or not isinstance(model, type)
            or not issubclass(model, BaseModel)
        ):
            raise TypeError(
                f"{self.path}: not a (body model, require_role caller, request) route "
                "with no dependency but strict_query"
            )
        return model, roles, (body[0].name, str(callers[0].name), request_name)


async def _plain_inputs(
    request: BoundedRequest, body_model: type[BaseModel], roles: tuple[str, ...]
) -> tuple[BaseModel, Any] | None:
    """The body and the caller of a plain request, or None for FastAPI's handler.

    In FastAPI's order, so that a request refused for two reasons is refused for the same
    one: the body read and parsed, then the caller (whose check may refuse it: an expired
    key, a suspended member), then the body validated."""
    scope = request.scope
    if (
        scope.get("query_string")
        or request.headers.get("content-type") != _JSON
        or request.app.dependency_overrides
        or get_telemetry_data() is not None
    ):
        return None
    try:
        raw = await request.body()
    except HTTPException:
        raise  # a body over its limit or too slow (middleware.BodyLimit), as FastAPI does
    except Exception as exc:
        # FastAPI's answer to a body that could not be read (a client gone mid-body): its
        # handler could not read it again. This app leaves body limits to
        # middleware.BodyLimit, not to FastAPI's own.
        raise HTTPException(400, "There was an error parsing the body") from exc
    if not raw:
        return None
    try:
        value = loads_bounded(raw)  # TooDeep and every parse error are ValueErrors
    except ValueError:
        return None
    # `Request.json`'s own cache: FastAPI's handler, if the request goes to it after all
    # (a key to look up, another role, a body that does not validate), parses it no more.
    request._json = value
    credentials = await bearer(request)
    caller = remembered_member(request, credentials)
    if caller is None or caller.role not in roles:
        return None
    try:
        body = body_model.model_validate(value)
    except ValidationError:
        return None
    return body, caller
