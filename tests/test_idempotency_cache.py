"""``IdempotencyCache`` is bounded in the bytes of the results it keeps, not only in keys: the
oldest finished results go first, work in flight stays, and an oversized result is simply not
kept."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from openclaw_orchestrator.server.core.idempotency import IdempotencyCache, json_size


def cache(max_bytes: int) -> IdempotencyCache[str]:
    """A cache weighing a string result by its length, with a clock that never moves."""
    return IdempotencyCache(ttl=60.0, clock=lambda: 0.0, max_bytes=max_bytes, size_of=len)


def counting(result: str, runs: list[str]) -> Callable[[], Awaitable[str]]:
    """Work returning ``result`` that notes each run in ``runs``."""

    async def work() -> str:
        runs.append(result)
        return result

    return work


async def test_the_oldest_results_go_once_over_the_byte_budget() -> None:
    """Five 40-byte results in a 100-byte budget: the last two are kept, the first key runs
    again, the last one replays."""
    remembered = cache(max_bytes=100)
    runs: list[str] = []
    for i in range(5):
        await remembered.run(f"k{i}", "d", counting(f"{i}" * 40, runs))
    assert len(remembered) == 2
    assert repr(remembered) == "<IdempotencyCache [2 keys, 80 bytes, ttl=60s]>"
    assert await remembered.run("k4", "d", counting("4" * 40, runs)) == ("4" * 40, True)
    assert await remembered.run("k0", "d", counting("0" * 40, runs)) == ("0" * 40, False)
    assert len(runs) == 6


async def test_a_result_over_the_whole_budget_is_not_kept() -> None:
    """A single result larger than the budget succeeds every time and is never remembered:
    its key runs the work again, and nothing else is evicted for it."""
    remembered = cache(max_bytes=100)
    runs: list[str] = []
    await remembered.run("small", "d", counting("s" * 10, runs))
    for _ in range(2):
        assert await remembered.run("big", "d", counting("b" * 101, runs)) == ("b" * 101, False)
    assert runs == ["s" * 10, "b" * 101, "b" * 101]
    assert len(remembered) == 1


async def test_work_in_flight_is_never_evicted_nor_blocks_eviction() -> None:
    """The oldest key still running stays (its waiters need it), and the finished results
    behind it are still evicted past the budget."""
    remembered = cache(max_bytes=100)
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "slow"

    running = asyncio.create_task(remembered.run("slow", "d", slow))
    await asyncio.sleep(0)
    runs: list[str] = []
    for i in range(5):
        await remembered.run(f"k{i}", "d", counting(f"{i}" * 40, runs))
    assert len(remembered) == 3  # slow + the last two
    release.set()
    assert await running == ("slow", False)


def test_json_size_weighs_models_as_their_json() -> None:
    """A result is weighed as the JSON it is sent as; what has no JSON form is too big."""

    class Reply(BaseModel):
        value: list[int]

    reply = Reply(value=[1, 2, 3])
    assert json_size(reply) == len(reply.model_dump_json())
    assert json_size(object()) > 2**40
