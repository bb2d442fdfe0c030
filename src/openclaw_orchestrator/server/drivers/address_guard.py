"""``instances.allow``/``instances.deny`` on every connect the shared aiohttp session makes.

Two public aiohttp hooks, both deciding with
:class:`~openclaw_orchestrator.domain.addresses.AddressPolicy`:

- :class:`GuardedResolver` wraps the resolver: a name's addresses are judged after DNS and
  only admitted ones reach the connector (and its DNS cache), so a name that resolves into a
  denied range, now or after a rebinding, is never connected to.
- :func:`guard_trace_config` checks the host of each request as it starts: aiohttp does not
  call a resolver for a literal address, so this is where one is judged (cheaply: no DNS).

A refusal raises :class:`~openclaw_orchestrator.domain.addresses.AddressRefused`, which
:func:`~.base.map_client_errors` turns into ``address_not_allowed`` for the instance.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from ...domain.addresses import AddressPolicy

__all__ = ["GuardedResolver", "guard_trace_config"]


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner``, then keeps the addresses ``policy`` admits; AddressRefused
    when it admits none. The default ``inner`` is the system resolver (``getaddrinfo``, as
    the lean client uses), which needs no closing: the connector never closes a resolver it
    was given."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner if inner is not None else aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The admitted addresses of ``host``, in the resolver's order."""
        results = await self._inner.resolve(host, port, family)
        admitted = set(self._policy.admit(host, [r["host"] for r in results]))
        return [r for r in results if r["host"] in admitted]

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._inner.close()


def guard_trace_config(policy: AddressPolicy) -> aiohttp.TraceConfig:
    """A trace config refusing a request whose host ``policy`` refuses outright (a denied
    name, a literal address that is denied or not allowed), before any connect."""

    async def on_request_start(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        policy.check_host(params.url.raw_host or "")

    config = aiohttp.TraceConfig()
    config.on_request_start.append(on_request_start)
    return config
