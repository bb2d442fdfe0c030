"""Scenario 6, durable runs (issue 12): submissions/s beside the synchronous route, the time
a submitted run takes to finish, and thousands of runs in flight in one orchestrator.

Run states and times are read straight from the orchestrator's database (SQLite read-only,
PostgreSQL through asyncpg), not through its API: counting 10,000 runs by paging the API
would be load on the process being measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .load import percentile, run_load
from .procs import TICK, Proc, start_instance, start_orchestrator, stopping
from .scenarios import (
    AUTH,
    JSON,
    PAYLOAD,
    QUIET_HEALTH,
    Row,
    Sizes,
    _measured,
    _row_from_load,
    fresh_pg_database,
)

__all__ = ["durable_runs"]

CONCURRENCY = 64
FINISHED = ("succeeded", "failed", "timed_out", "cancelled")
POLL = 0.25
MAX_TIMEOUT = 300
"""A run's deadline: the orchestrator's default ``max_timeout``."""


class RunsDb:
    """Reads ``orchestrator_runs`` of one orchestrator's database, beside it."""

    def __init__(self, sqlite_file: Path | None, pg_url: str | None) -> None:
        self._file, self._pg = sqlite_file, pg_url
        self._conn: Any = None

    async def __aenter__(self) -> RunsDb:
        if self._pg is not None:
            import asyncpg

            self._conn = await asyncpg.connect(self._pg.replace("postgresql+asyncpg", "postgresql"))
        else:
            self._conn = sqlite3.connect(f"file:{self._file}?mode=ro", uri=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pg is not None:
            await self._conn.close()
        else:
            self._conn.close()

    async def _all(self, sql: str) -> list[tuple[Any, ...]]:
        if self._pg is not None:
            return [tuple(r) for r in await self._conn.fetch(sql)]
        return list(self._conn.execute(sql).fetchall())

    async def counts(self) -> dict[str, int]:
        """Runs by state."""
        rows = await self._all("SELECT state, count(*) FROM orchestrator_runs GROUP BY state")
        return {state: int(n) for state, n in rows}

    async def times(self) -> list[tuple[float, float]]:
        """(created_at, finished_at) of every finished run."""
        rows = await self._all(
            "SELECT created_at, finished_at FROM orchestrator_runs WHERE finished_at IS NOT NULL"
        )
        return [(float(c), float(f)) for c, f in rows]

    async def errors(self) -> dict[str, int]:
        """Runs that did not succeed, by state and error code."""
        rows = await self._all(
            "SELECT state, error FROM orchestrator_runs "
            "WHERE state <> 'succeeded' AND finished_at IS NOT NULL"
        )
        out: dict[str, int] = {}
        for state, error in rows:
            code = orjson.loads(error).get("code") if isinstance(error, str) else None
            out[f"{state}:{code}"] = out.get(f"{state}:{code}", 0) + 1
        return out


def postgres_cpu() -> float:
    """CPU seconds of this machine's PostgreSQL processes so far (0 without any)."""
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if stat.split(" (", 1)[1].startswith("postgres)"):
                    fields = stat.rsplit(")", 1)[1].split()
                    total += int(fields[11]) + int(fields[12])
    return total / TICK


def _sqlite_file(settings: dict[str, Any]) -> Path | None:
    data_dir = settings.get("data_dir")
    return None if data_dir is None else Path(data_dir) / "orchestrator.db"


async def _wait_counts(
    db: RunsDb, done: Any, timeout: float, on_poll: Any = None
) -> tuple[dict[str, int], float]:
    """Poll the counts until ``done(counts)``; the last counts and the seconds waited."""
    started = time.perf_counter()
    while True:
        counts = await db.counts()
        if on_poll is not None:
            on_poll(counts)
        waited = time.perf_counter() - started
        if done(counts) or waited > timeout:
            return counts, waited
        await asyncio.sleep(POLL)


def _unfinished(counts: dict[str, int]) -> int:
    return counts.get("queued", 0) + counts.get("running", 0)


@contextlib.asynccontextmanager
async def _database(store: str, workdir: Path) -> AsyncIterator[dict[str, Any] | None]:
    """The orchestrator's store settings: a fresh PostgreSQL database (None when there is no
    server), or a new SQLite data dir."""
    if store == "postgres":
        async with fresh_pg_database() as url:
            yield None if url is None else {"database_url": url}
    else:
        yield {"data_dir": str(workdir / f"runs-{time.monotonic_ns()}")}


# -- submissions/s, beside the synchronous route ---------------------------------------------


async def _submissions(workdir: Path, sizes: Sizes, store: str) -> list[Row]:
    """At c64: the synchronous route, then submissions of the same route as durable runs;
    then every run is waited for, and submit-to-finished times read from the store."""
    rows: list[Row] = []
    procs: list[Proc] = []
    async with _database(store, workdir) as db_settings:
        if db_settings is None:
            return rows  # no PostgreSQL here: those rows are left out
        with stopping(procs):
            for name in "AB":
                procs.append(await start_instance(name, workdir))
            settings: dict[str, Any] = {"health": QUIET_HEALTH, **db_settings}
            urls = {p.name: p.url for p in procs}
            orch = await start_orchestrator(
                workdir, urls, label=f"orchestrator-runs-{store}", settings=settings
            )
            procs.append(orch)
            n = sizes.run_requests
            route = orjson.dumps({"instances": ["A", "B"], "payload": PAYLOAD})
            result, cpu = await _measured(
                orch,
                lambda: run_load(
                    [(orch.url + "/api/orchestrator/route", route)],
                    headers=AUTH,
                    concurrency=CONCURRENCY,
                    requests=n,
                    warmup=200,
                ),
            )
            rows.append(
                _row_from_load("runs", f"{store}:sync_route", CONCURRENCY, result, orch, cpu)
            )
            async with RunsDb(_sqlite_file(settings), db_settings.get("database_url")) as db:
                rows += await _submit_and_finish(orch, db, store, n)
    return rows


async def _submit_and_finish(orch: Proc, db: RunsDb, store: str, n: int) -> list[Row]:
    body = orjson.dumps({"kind": "route", "instances": ["A", "B"], "payload": PAYLOAD})
    submit = [(orch.url + "/api/orchestrator/runs", body)]
    warm = await run_load(submit, headers=AUTH, concurrency=CONCURRENCY, requests=200)
    await _wait_counts(db, lambda c: _unfinished(c) == 0, 60)
    before = len(warm.latencies)
    load = os.getloadavg()[0]  # the machine is shared: rates mean little without it
    cpu, db_cpu = orch.cpu(), postgres_cpu()
    started = time.time()
    result = await run_load(submit, headers=AUTH, concurrency=CONCURRENCY, requests=n)
    submitted_at = time.time()
    counts, drain = await _wait_counts(db, lambda c: _unfinished(c) == 0, 120)
    cpu = orch.cpu() - cpu
    row = _row_from_load("runs", f"{store}:submit", CONCURRENCY, result, orch, cpu)
    row.extra = {
        "cpu_includes": "working on the runs",
        "drain_s": round(drain, 2),
        "load_1m": round(load, 2),
    }
    if store == "postgres":
        db_us = (postgres_cpu() - db_cpu) / n * 1e6
        row.extra["postgres_cpu_us_per_req"] = round(db_us, 1)
        row.extra["with_postgres_cpu_us_per_req"] = round(cpu / n * 1e6 + db_us, 1)
    times = [(c, f) for c, f in await db.times() if c >= started]
    durations = [f - c for c, f in times]
    finished = sum(counts.get(s, 0) for s in FINISHED) - before
    first = min((c for c, _ in times), default=started)
    last = max((f for _, f in times), default=submitted_at)
    done = Row(
        scenario="runs",
        variant=f"{store}:submit_to_finished",
        concurrency=CONCURRENCY,
        requests=len(durations),
        p50_ms=percentile(durations, 0.5) * 1000,
        p99_ms=percentile(durations, 0.99) * 1000,
        req_s=len(durations) / (last - first) if last > first else 0.0,
        errors=n - counts.get("succeeded", 0) + before,
        extra={
            "states": counts,
            "not_succeeded": await db.errors(),
            "finished": finished,
            "max_ms": round(max(durations, default=0.0) * 1000, 1),
            "req_s_is": "runs finished per second, first submit to last finish",
        },
    )
    return [row, done]


# -- runs in flight ------------------------------------------------------------------------


async def _set_latency(proc: Proc, seconds: float) -> None:
    async with aiohttp.ClientSession() as http:
        body = orjson.dumps({"latency": seconds})
        async with http.put(proc.url + "/api/instance/faults", data=body, headers=JSON) as resp:
            if resp.status != 200:
                raise RuntimeError(f"faults: {resp.status} {await resp.text()}")


async def _in_flight(workdir: Path, sizes: Sizes) -> list[Row]:
    """``runs.max_running`` = N, instances that answer after ``latency`` seconds: N runs
    submitted, all running at once, then all finished; RSS before and with all N running."""
    n = sizes.in_flight
    procs: list[Proc] = []
    async with _database("sqlite", workdir) as db_settings:
        assert db_settings is not None
        with stopping(procs):
            backends = [
                await start_instance(f"slow{k}", workdir, fault_api=True)
                for k in range(sizes.fanout_processes)
            ]
            procs.extend(backends)
            names = {f"S{k}": p.url for k, p in enumerate(backends)}
            settings: dict[str, Any] = {
                "health": QUIET_HEALTH,
                "runs": {"max_running": n},
                "instances": {
                    "static": [{"name": k, "url": u} for k, u in names.items()],
                    "max_connections": n,
                },
                **db_settings,
            }
            orch = await start_orchestrator(
                workdir, names, label="orchestrator-runs-inflight", settings=settings
            )
            procs.append(orch)
            async with RunsDb(_sqlite_file(settings), None) as db:
                latencies = (sizes.in_flight_latency, sizes.in_flight_latency_max)
                return [await _fill(orch, backends, db, list(names), n, latencies)]


async def _fill(
    orch: Proc,
    backends: list[Proc],
    db: RunsDb,
    names: list[str],
    n: int,
    latencies: tuple[float, float],
) -> Row:
    """Warm up, slow the instances down, submit ``n`` runs; measure until all finished."""
    # warm: the same path at full speed, so the RSS before has every code path loaded; its
    # rate sets the latency: every run must still be waiting when the last is submitted
    body = {"kind": "route", "instances": names, "payload": PAYLOAD, "timeout": 10}
    warm_load = await run_load(
        [(orch.url + "/api/orchestrator/runs", orjson.dumps(body))],
        headers=AUTH,
        concurrency=CONCURRENCY,
        requests=500,
    )
    least, most = latencies
    latency = min(most, max(least, round(2 * n / max(warm_load.req_s, 1.0) + 5)))
    body["timeout"] = MAX_TIMEOUT
    submit = [(orch.url + "/api/orchestrator/runs", orjson.dumps(body))]
    await _wait_counts(db, lambda c: _unfinished(c) == 0, 60)
    warm = sum((await db.counts()).values())
    for proc in backends:
        await _set_latency(proc, latency)
    await asyncio.sleep(1.0)
    rss_before = orch.rss_mb()
    peak = [rss_before]
    cpu = orch.cpu()
    started = time.perf_counter()
    result = await run_load(submit, headers=AUTH, concurrency=CONCURRENCY, requests=n)
    submit_cpu = orch.cpu() - cpu

    def sample(_counts: dict[str, int]) -> None:
        peak[0] = max(peak[0], orch.rss_mb())

    counts, _ = await _wait_counts(
        db, lambda c: c.get("running", 0) >= n or _unfinished(c) < n, latency * 2, sample
    )
    all_running = time.perf_counter() - started
    running = counts.get("running", 0)
    rss_running = orch.rss_mb()
    # what n runs cost while they only wait: the keeper, the timers, the idle connections
    idle_s = min(3.0, max(0.5, latency - all_running - 2))
    cpu = orch.cpu()
    await asyncio.sleep(idle_s)
    idle_cpu = (orch.cpu() - cpu) / idle_s
    rss_running = max(rss_running, orch.rss_mb())
    counts, drained = await _wait_counts(db, lambda c: _unfinished(c) == 0, latency + 240, sample)
    total = time.perf_counter() - started
    times = sorted(await db.times())[warm:]
    durations = [f - c for c, f in times]
    return Row(
        scenario="runs",
        variant=f"sqlite:{n}_in_flight",
        concurrency=n,
        requests=len(result.latencies),
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        req_s=result.req_s,
        cpu_us_per_req=submit_cpu / n * 1e6,
        cpu_of=orch.name,
        peak_rss_mb=orch.peak_rss_mb(),
        errors=result.errors + n - (counts.get("succeeded", 0) - warm),
        extra={
            "instance_latency_s": latency,
            "running_at_once": running,
            "all_running_after_s": round(all_running, 2),
            "rss_before_mb": round(rss_before, 1),
            "rss_all_running_mb": round(rss_running, 1),
            "rss_sampled_peak_mb": round(peak[0], 1),
            "kb_per_run": round((rss_running - rss_before) * 1024 / n, 2),
            "idle_cpu_share": round(idle_cpu, 3),
            "states": counts,
            "not_succeeded": await db.errors(),
            "all_finished_after_s": round(total, 2),
            "drain_s": round(drained, 2),
            "submit_to_finished_ms_p50": round(percentile(durations, 0.5) * 1000, 1),
            "submit_to_finished_ms_max": round(max(durations, default=0.0) * 1000, 1),
        },
    )


async def durable_runs(workdir: Path, sizes: Sizes) -> list[Row]:
    """Submissions on SQLite and PostgreSQL (when reachable), then runs in flight."""
    rows: list[Row] = []
    for store in ("sqlite", "postgres"):
        rows += await _submissions(workdir, sizes, store)
    rows += await _in_flight(workdir, sizes)
    return rows
