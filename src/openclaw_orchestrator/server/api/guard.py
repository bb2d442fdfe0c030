"""What every API route does before FastAPI reads its body: authenticate, then decode the
body as strict JSON.

FastAPI reads and parses a request's body before it runs any dependency, so an
authentication dependency comes too late: a stranger's malformed body would get a 400
describing it, where it must get a 401 that says nothing. And FastAPI parses with Python's
``json``, which accepts ``NaN`` and ``Infinity``. :func:`guarded_route` makes a route class
whose handler first runs the router's check (the API key, or a session's token), then
decodes a JSON body with :func:`~.strict_json.decode_json` (a 400 naming the field), and only
then hands the request to FastAPI, which finds the body already decoded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from .strict_json import decode_json

__all__ = ["Check", "guarded_route"]

Check = Callable[[Request], Awaitable[None]]
"""Raises (an ``OrchestratorError``) unless the request may use the route."""

_UNDECODED = object()


class StrictJSONRequest(Request):
    """A request whose ``json()`` is :func:`decode_json`, decoded once."""

    _decoded: Any = _UNDECODED

    async def json(self) -> Any:
        if self._decoded is _UNDECODED:
            self._decoded = decode_json(await self.body())
        return self._decoded


def is_json(request: Request) -> bool:
    """Whether FastAPI would parse this request's body as JSON (``application/json`` or
    ``application/*+json``; no content type is not JSON)."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    main, _, sub = kind.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def guarded_route(check: Check | None) -> type[APIRoute]:
    """A route class running ``check`` (None: none) and the strict JSON decode before
    FastAPI's own handling of the request."""

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handle = super().get_route_handler()
            takes_body = self.body_field is not None

            async def guarded(request: Request) -> Response:
                request = StrictJSONRequest(request.scope, request.receive)
                if check is not None:
                    await check(request)
                if takes_body and is_json(request) and await request.body():
                    await request.json()  # refused here, naming the field
                return await handle(request)

            return guarded

    return GuardedRoute
