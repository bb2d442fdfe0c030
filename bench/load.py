"""The load generator: N closed-loop workers over one pooled aiohttp session (uvloop).

Bodies and headers are encoded once; each worker sends its next request as soon as the
previous reply is read, so ``concurrency`` is the number of requests in flight. Latencies
are measured per request with ``perf_counter`` and reported as p50/p99.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

__all__ = ["LoadResult", "percentile", "run_load"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load run saw (latencies in seconds)."""

    latencies: list[float]
    errors: int
    wall_s: float

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 0.50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 0.99) * 1000

    @property
    def req_s(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s else 0.0


async def run_load(
    targets: Sequence[tuple[str, bytes]],
    *,
    headers: dict[str, str],
    concurrency: int,
    requests: int,
    warmup: int = 0,
) -> LoadResult:
    """POST ``requests`` requests (after ``warmup`` unmeasured ones) with ``concurrency``
    workers; request ``i`` is ``targets[i % len(targets)]`` (URL, body). Non-2xx replies
    count as errors (their latencies are kept: a failover's cost is in the tail)."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)
    ) as http:
        if warmup:
            await _drive(http, targets, headers, concurrency, warmup)
        started = time.perf_counter()
        latencies, errors = await _drive(http, targets, headers, concurrency, requests)
        wall = time.perf_counter() - started
    return LoadResult(latencies, errors, wall)


async def _drive(
    http: aiohttp.ClientSession,
    targets: Sequence[tuple[str, bytes]],
    headers: dict[str, str],
    concurrency: int,
    requests: int,
) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    clock = time.perf_counter

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            url, body = targets[i % len(targets)]
            started = clock()
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
            latencies.append(clock() - started)
            errors += not ok

    await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))
    return latencies, errors
