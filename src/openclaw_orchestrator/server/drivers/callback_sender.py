"""The edge that POSTs a run's callback: one aiohttp session of its own, every connect
judged by ``instances.allow``/``deny`` (:mod:`.address_guard`) as the instances' are.

The session is separate from the instances' so that slow or many receivers cannot take
connections instances need, and so that its rules differ where they must: no redirects
followed (a receiver answers where it was told to be), no cookies, the answer's body
ignored past :data:`MAX_ANSWER_BYTES`. Whatever happens is an :class:`Answer` (a status,
or an error text for a person), never an exception: the deliverer records it and decides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from ...domain.addresses import AddressPolicy, AddressRefused
from ...domain.callbacks import MAX_ERROR
from .address_guard import GuardedResolver, guard_trace_config

__all__ = ["MAX_ANSWER_BYTES", "Answer", "CallbackSender", "Sender"]

MAX_ANSWER_BYTES = 64 * 1024
POOL_LIMIT = 256
USER_AGENT = "openclaw-orchestrator-callback"


@dataclass(frozen=True, slots=True)
class Answer:
    """An attempt's outcome: the receiver's ``status``, or ``error`` when none came."""

    status: int | None
    error: str | None
    latency_ms: float


class Sender(Protocol):
    """POSTs ``body`` to ``url`` with ``headers`` within ``timeout`` seconds."""

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> Answer: ...

    async def aclose(self) -> None: ...


class CallbackSender:
    """:class:`Sender` over aiohttp, opened on first use, closed by :meth:`aclose`."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<CallbackSender open={self._session is not None}>"

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=POOL_LIMIT, ttl_dns_cache=60, resolver=GuardedResolver(self._policy)
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trace_configs=[guard_trace_config(self._policy)],
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
        """The receiver's status, or what went wrong (see the module docstring)."""
        started = time.perf_counter()
        try:
            status = await self._post(url, body, headers, timeout)
        except Exception as exc:  # any failure is an attempt's outcome
            return Answer(None, _describe(exc, timeout), _ms(started))
        return Answer(status, None, _ms(started))

    async def _post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        session = self._open()
        async with session.post(
            url,
            data=body,
            headers={"Content-Type": "application/json", **headers},
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as reply:
            await reply.content.read(MAX_ANSWER_BYTES)  # read a little: the connection is reused
            return reply.status

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _describe(exc: BaseException, timeout: float) -> str:
    """A person's account of a failed attempt (no secrets: the URL is not repeated)."""
    refused = exc if isinstance(exc, AddressRefused) else exc.__cause__
    if isinstance(refused, AddressRefused):
        text = f"address_not_allowed: {refused.reason}"
    elif isinstance(exc, TimeoutError):
        text = f"timeout: no answer within {timeout:g}s"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        text = f"connect failed: {exc.os_error.strerror or exc.os_error}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR]
