"""Raw ASGI helpers shared by the two fast paths (the orchestrator's hot endpoints and the
reference instance's task): where a fast path sits in an app's stack
(:class:`FastPathApp`), reading a request body under a size limit, and handing what was
read on to the full application as if it had never been read."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive

__all__ = ["FastPathApp", "read_body", "replay"]


class FastPathApp(Starlette):
    """A Starlette app whose middleware stack may hold a *fast path*: an ASGI layer that
    serves a hot request itself and passes everything else on.

    :meth:`use_fast_path` gives the layer and marks its place: the fast path wraps the
    framework's layers and the middleware added so far (whose work it does itself: request
    id, body limit, error envelope), and every middleware added after it wraps the fast path,
    so tracing, CORS or metrics added later see every request, the hot ones too. Those are
    outside the framework's ``ServerErrorMiddleware``, as the fast path is, so a middleware
    added later must not raise (a second ``ServerErrorMiddleware`` around them cost every
    request 1.6 µs, as much again as the metrics middleware itself). Without the call the
    stack is the framework's own.
    """

    _middleware_under_fast_path: int | None = None
    _fast_path: Callable[[ASGIApp], ASGIApp] | None = None

    def use_fast_path(self, layer: Callable[[ASGIApp], ASGIApp]) -> None:
        """Put ``layer`` (given the rest of the stack, it returns the fast path in front of
        it) over the stack built so far (see the class docstring)."""
        self._fast_path = layer
        self._middleware_under_fast_path = len(self.user_middleware)

    @property
    def has_fast_path(self) -> bool:
        """Whether :meth:`use_fast_path` put a fast path in the stack."""
        return self._fast_path is not None

    def build_middleware_stack(self) -> ASGIApp:
        """The framework's stack, with the fast path where :meth:`use_fast_path` put it
        (``add_middleware`` puts the newest middleware first)."""
        if self._fast_path is None or self._middleware_under_fast_path is None:
            return super().build_middleware_stack()
        added_later = len(self.user_middleware) - self._middleware_under_fast_path
        later, under = self.user_middleware[:added_later], self.user_middleware[added_later:]
        self.user_middleware = under
        try:
            stack = super().build_middleware_stack()
        finally:
            self.user_middleware = later + under
        app = self._fast_path(stack)
        for cls, args, kwargs in reversed(later):
            app = cls(app, *args, **kwargs)
        return app


async def read_body(receive: Receive, limit: int) -> tuple[bytes, bool] | None:
    """``(body, more)``: the whole body (``more`` False), or what was read once it passed
    ``limit`` bytes while the client was still sending (``more`` True); None when the
    client left. A body longer than ``limit`` is the full app's to refuse (413): check
    ``more or len(body) > limit`` — one message may bring more than the limit at once."""
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        seen += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False
        if seen > limit:
            return b"".join(chunks), True


def replay(body: bytes, receive: Receive, *, more: bool = False) -> Receive:
    """A ``receive`` that hands ``body`` out once (``more``: the rest is still to come),
    then defers to the real one."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": more}

    return replayed
