"""The five scenarios of issue 5, durable runs and the streaming relay (issue 12); each
returns result rows (see ``docs/performance.md``)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .load import LoadResult, percentile, run_load
from .procs import (
    API_KEY,
    PYTHON,
    FaultProxy,
    Proc,
    free_port,
    start_instance,
    start_nginx,
    start_orchestrator,
    stopping,
    wait_http,
)

__all__ = ["SCENARIOS", "Row", "Sizes"]

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
JSON = {"Content-Type": "application/json"}
PAYLOAD = {"data": "task", "n": 1}
LATENCY_MS = 20
QUIET_HEALTH = {"interval": 300, "probe_timeout": 2}


@dataclass
class Row:
    """One measured line of the table (and of ``latest.json``)."""

    scenario: str
    variant: str
    concurrency: int
    requests: int
    p50_ms: float
    p99_ms: float
    req_s: float
    cpu_us_per_req: float | None = None
    cpu_of: str | None = None
    peak_rss_mb: float | None = None
    errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("p50_ms", "p99_ms", "req_s", "cpu_us_per_req", "peak_rss_mb"):
            if isinstance(data[key], float):
                data[key] = round(data[key], 3)
        return data


@dataclass(frozen=True)
class Sizes:
    """How much to run: full, or ``--quick`` (CI keeps the runner working in < 1 min)."""

    quick: bool

    @property
    def route_requests(self) -> dict[int, int]:
        return {1: 300, 64: 2000} if self.quick else {1: 3000, 64: 12000}

    @property
    def fanout_sizes(self) -> tuple[int, ...]:
        return (8, 64) if self.quick else (8, 64, 256, 1000)

    @property
    def fanout_reps(self) -> int:
        return 3 if self.quick else 20

    @property
    def fanout_processes(self) -> int:
        """Reference-instance processes hosting the fanout's targets: one per core. More
        only adds context switches on the same cores (measured in docs/performance.md:
        4 processes on this 2-core machine cost the 1,000-target fanout ~10 ms)."""
        return max(2, os.cpu_count() or 2)

    @property
    def send_requests(self) -> int:
        return 300 if self.quick else 3000

    @property
    def startup_reps(self) -> int:
        return 1 if self.quick else 5

    @property
    def run_requests(self) -> int:
        """Durable-run submissions measured (and the synchronous routes beside them)."""
        return 500 if self.quick else 5000

    @property
    def in_flight(self) -> int:
        """Durable runs in flight at once in one orchestrator (issue 12: 10,000)."""
        return 1000 if self.quick else 10_000

    @property
    def in_flight_latency(self) -> float:
        """Seconds the slow instances take per task, at least: longer than submitting them
        all (raised to twice the time the warm-up's rate says that takes)."""
        return 4.0 if self.quick else 30.0

    @property
    def in_flight_latency_max(self) -> float:
        """The most that raise may make it (a quick run stays short)."""
        return 10.0 if self.quick else 150.0


def _row_from_load(
    scenario: str,
    variant: str,
    concurrency: int,
    result: LoadResult,
    proc: Proc | None,
    cpu: float | None,
    **extra: Any,
) -> Row:
    n = len(result.latencies)
    return Row(
        scenario=scenario,
        variant=variant,
        concurrency=concurrency,
        requests=n,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        req_s=result.req_s,
        cpu_us_per_req=None if cpu is None or not n else cpu / n * 1e6,
        cpu_of=None if proc is None else proc.name,
        peak_rss_mb=None if proc is None else proc.peak_rss_mb(),
        errors=result.errors,
        extra=extra,
    )


async def _measured(
    proc: Proc | None, run: Callable[[], Awaitable[LoadResult]]
) -> tuple[LoadResult, float | None]:
    before = proc.cpu() if proc else None
    result = await run()
    return result, None if proc is None or before is None else proc.cpu() - before


# -- 1. route overhead ---------------------------------------------------------------------


async def route_overhead(workdir: Path, sizes: Sizes) -> list[Row]:
    """Direct vs nginx vs the orchestrator's route (1 and 2 workers), at c1 and c64."""
    procs: list[Proc] = []
    async with contextlib.AsyncExitStack() as stack:
        pg_url = await stack.enter_async_context(fresh_pg_database())
        stack.enter_context(stopping(procs))  # stopped before their database is dropped
        instance = await start_instance("A", workdir)
        procs.append(instance)
        instances = {"A": instance.url}
        orch = await start_orchestrator(workdir, instances, settings={"health": QUIET_HEALTH})
        procs.append(orch)
        # Two workers are two processes: they share PostgreSQL, never one SQLite file (which
        # refuses a second process). Without PostgreSQL that variant is left out.
        orch2 = None
        if pg_url is not None:
            orch2 = await start_orchestrator(
                workdir,
                instances,
                label="orchestrator-2w",
                workers=2,
                settings={"health": QUIET_HEALTH, "database_url": pg_url},
            )
            procs.append(orch2)
        nginx = await start_nginx(workdir, instance.url) if shutil.which("nginx") else None
        if nginx is not None:  # apt-get install nginx; without it that variant is left out
            procs.append(nginx)
        task = orjson.dumps({"payload": PAYLOAD})
        routed = orjson.dumps({"instances": ["A"], "payload": PAYLOAD})
        variants: list[tuple[str, str, bytes, dict[str, str], Proc]] = [
            ("direct", instance.url + "/api/instance/task", task, JSON, instance),
            ("orchestrator", orch.url + "/api/orchestrator/route", routed, AUTH, orch),
        ]
        if orch2 is not None:
            variants.append(
                ("orchestrator-2w", orch2.url + "/api/orchestrator/route", routed, AUTH, orch2)
            )
        if nginx is not None:
            variants.insert(1, ("nginx", nginx.url + "/api/instance/task", task, JSON, nginx))
        rows = []
        for concurrency, count in sizes.route_requests.items():
            for name, url, body, headers, proc in variants:
                result, cpu = await _measured(
                    proc,
                    lambda url=url, body=body, headers=headers, c=concurrency, n=count: run_load(  # type: ignore[misc]
                        [(url, body)],
                        headers=headers,
                        concurrency=c,
                        requests=n,
                        warmup=max(200, n // 10),
                    ),
                )
                rows.append(_row_from_load("route", name, concurrency, result, proc, cpu))
    return rows


# -- 2. fanout scaling ---------------------------------------------------------------------


def _names(n: int) -> list[str]:
    return [f"w{i}" for i in range(1, n + 1)]


async def _timed_gathers(
    one: Callable[[str], Awaitable[Any]], urls: list[str], reps: int
) -> tuple[list[float], float, int]:
    """``reps`` gathers of ``one`` over ``urls`` after a warm-up: walls, CPU s, errors."""
    await asyncio.gather(*(one(u) for u in urls), return_exceptions=True)  # warm the pool
    walls, errors = [], 0
    cpu = time.process_time()
    for _ in range(reps):
        started = time.perf_counter()
        results = await asyncio.gather(*(one(u) for u in urls), return_exceptions=True)
        walls.append(time.perf_counter() - started)
        errors += sum(isinstance(r, BaseException) for r in results)
    return walls, time.process_time() - cpu, errors


async def _gather_aiohttp(
    urls: list[str], body: bytes, reps: int
) -> tuple[list[float], float, int]:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(url: str) -> Any:
            async with http.post(url, data=body, headers=JSON) as resp:
                return orjson.loads(await resp.read())

        return await _timed_gathers(one, urls, reps)


async def _gather_httpx(urls: list[str], body: bytes, reps: int) -> tuple[list[float], float, int]:
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:

        async def one(url: str) -> Any:
            resp = await http.post(url, content=body, headers=JSON)
            return orjson.loads(resp.content)

        return await _timed_gathers(one, urls, reps)


async def _fanout_once(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, Any]:
    started = time.perf_counter()
    async with http.post(url, data=body, headers=AUTH) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"fanout answered {resp.status}: {raw[:300]!r}")
    return time.perf_counter() - started, orjson.loads(raw)


def _fanout_row(
    variant: str,
    n: int,
    walls: list[float],
    cpu: float,
    rss: float | None,
    errors: int = 0,
    **extra: Any,
) -> Row:
    return Row(
        errors=errors,
        scenario="fanout",
        variant=variant,
        concurrency=n,
        requests=len(walls),
        p50_ms=percentile(walls, 0.5) * 1000,
        p99_ms=percentile(walls, 0.99) * 1000,
        req_s=len(walls) / sum(walls) if walls else 0.0,
        cpu_us_per_req=cpu / (len(walls) * n) * 1e6 if walls else None,
        cpu_of=variant,
        peak_rss_mb=rss,
        extra={"ideal_ms": LATENCY_MS, "cpu_per": "target", **extra},
    )


async def fanout_scaling(workdir: Path, sizes: Sizes) -> list[Row]:
    """Fanout to 8..1000 names over a few 20 ms instances, vs hand-written gathers."""
    procs: list[Proc] = []
    rows = []
    with stopping(procs):
        backends = []
        for k in range(sizes.fanout_processes):
            backends.append(await start_instance(f"k{k}", workdir, latency_ms=LATENCY_MS))
        procs.extend(backends)
        biggest = max(sizes.fanout_sizes)
        names = _names(biggest)
        instances = {n: backends[i % len(backends)].url for i, n in enumerate(names)}
        orch = await start_orchestrator(workdir, instances, settings={"health": QUIET_HEALTH})
        procs.append(orch)
        task = orjson.dumps({"payload": PAYLOAD})
        url = orch.url + "/api/orchestrator/fanout"
        async with aiohttp.ClientSession() as http:
            for n in sizes.fanout_sizes:
                body = orjson.dumps({"targets": f"w1-w{n}", "payload": PAYLOAD, "timeout": 10})
                await _fanout_once(http, url, body)  # warm the pools
                rss_before = orch.rss_mb()
                cpu = orch.cpu()
                walls, server = [], []
                for _ in range(sizes.fanout_reps):
                    wall, reply = await _fanout_once(http, url, body)
                    if reply["succeeded"] != n:
                        raise RuntimeError(f"fanout to {n}: only {reply['succeeded']} succeeded")
                    walls.append(wall)
                    server.append(reply["total_ms"])
                cpu = orch.cpu() - cpu
                peak = orch.peak_rss_mb()
                per_target_kb = max(0.0, (peak - rss_before) * 1024 / n)
                rows.append(
                    _fanout_row(
                        "orchestrator",
                        n,
                        walls,
                        cpu,
                        peak,
                        server_total_ms_p50=statistics.median(server),
                        rss_kb_per_target=round(per_target_kb, 2),
                    )
                )
                urls = [instances[name] + "/api/instance/task" for name in _names(n)]
                walls, cpu, errors = await _gather_aiohttp(urls, task, sizes.fanout_reps)
                rows.append(_fanout_row("gather-aiohttp", n, walls, cpu, None, errors=errors))
                if importlib.util.find_spec("httpx") is None:  # only in the bench extra
                    continue
                reps = sizes.fanout_reps if n <= 64 else 3  # httpx is slow: seconds at 1,000
                walls, cpu, errors = await _gather_httpx(urls, task, reps)
                rows.append(_fanout_row("gather-httpx", n, walls, cpu, None, errors=errors))
    return rows


# -- 3. failover cost ----------------------------------------------------------------------


async def _routes(
    http: aiohttp.ClientSession, url: str, count: int, body: bytes
) -> list[tuple[float, int, Any]]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        async with http.post(url, data=body, headers=AUTH) as resp:
            raw = await resp.read()
        out.append((time.perf_counter() - started, resp.status, orjson.loads(raw)))
    return out


def _failover_row(variant: str, samples: list[tuple[float, int, Any]], **extra: Any) -> Row:
    lat = [s[0] for s in samples]
    refused = [
        s[0] * 1000 - sum(a["latency_ms"] for a in s[2]["attempts"] if a["outcome"] == "ok")
        for s in samples
        if s[1] == 200
        and any(a["outcome"] == "down" for a in s[2]["attempts"])
        and not any(a["outcome"] == "timeout" for a in s[2]["attempts"])
    ]
    hung = [
        a["latency_ms"]
        for s in samples
        if s[1] == 200
        for a in s[2]["attempts"]
        if a["outcome"] == "timeout"
    ]
    return Row(
        scenario="failover",
        variant=variant,
        concurrency=1,
        requests=len(samples),
        p50_ms=percentile(lat, 0.5) * 1000,
        p99_ms=percentile(lat, 0.99) * 1000,
        req_s=len(lat) / sum(lat) if lat else 0.0,
        errors=sum(1 for s in samples if s[1] != 200),
        extra={
            "refused_attempts": len(refused),
            "refused_cost_ms_p50": round(statistics.median(refused), 3) if refused else None,
            "refused_cost_ms_max": round(max(refused), 3) if refused else None,
            "hung_attempts": len(hung),
            "hung_attempt_ms_max": round(max(hung), 3) if hung else None,
            **extra,
        },
    )


async def _states(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    async with http.get(url + "/api/orchestrator/health", headers=AUTH) as resp:
        states: dict[str, str] = await resp.json()
        return states


async def failover_cost(workdir: Path, sizes: Sizes) -> list[Row]:
    """Eight candidates A-H behind fault proxies; B refuses (crash), C hangs (stuck)."""
    procs: list[Proc] = []
    proxies: dict[str, FaultProxy] = {}
    rows = []
    with stopping(procs):
        for name in "ABCDEFGH":
            procs.append(await start_instance(name, workdir))
        urls = {p.name: p.url for p in procs}
        for name in "BC":
            proxies[name] = FaultProxy(urls[name])
            urls[name] = await proxies[name].start()
        health = {"interval": 1.0, "probe_timeout": 0.5, "down_backoff": 0.5}
        orch = await start_orchestrator(workdir, urls, settings={"health": health})
        procs.append(orch)
        count = 50 if sizes.quick else 400
        route = orch.url + "/api/orchestrator/route"
        fanout = orch.url + "/api/orchestrator/fanout"
        # A hang can only be given up by a clock: each attempt gets at most 100 ms, so a
        # route that meets the stuck C fails over within its 1 s deadline.
        limits = {"timeout": 1, "attempt_timeout": 0.1}
        body = orjson.dumps({"instances": "A-H", "payload": PAYLOAD, **limits})
        fan = orjson.dumps({"targets": "A-H", "payload": PAYLOAD, **limits})
        try:
            async with aiohttp.ClientSession() as http:
                await _wait_states(http, orch.url, lambda s: set(s.values()) == {"healthy"})
                rows.append(_failover_row("healthy", await _routes(http, route, count, body)))
                rows.append(await _refusals(http, orch.url, proxies["B"], 2 if sizes.quick else 12))
                await proxies["B"].refuse()  # B crashes for good
                proxies["C"].hang()  # C is stuck for good
                first = await _routes(http, route, 16, body)  # the first to meet B and C pay
                fan_wall, _ = await _fanout_once(http, fanout, fan)
                rows.append(
                    _failover_row(
                        "right_after_failure", first, fanout_wall_ms=round(fan_wall * 1000, 1)
                    )
                )
                waited = await _wait_states(
                    http, orch.url, lambda s: s["B"] == "down" and s["C"] == "down"
                )
                fan_wall, _ = await _fanout_once(http, fanout, fan)
                rows.append(
                    _failover_row(
                        "marked_down",
                        await _routes(http, route, count, body),
                        fanout_wall_ms=round(fan_wall * 1000, 1),
                        waited_for_down_s=round(waited, 2),
                    )
                )
        finally:
            for proxy in proxies.values():
                await proxy.aclose()
    return rows


async def _refusals(http: aiohttp.ClientSession, url: str, proxy: FaultProxy, cycles: int) -> Row:
    """``cycles`` times: 20 healthy routes to [A, B], then B starts refusing and routes go
    on until one meets the refusal (it also marks B down); B heals and is probed back.

    The cost of a refusal is that request's server-side ``total_ms`` minus the median
    ``total_ms`` of the healthy routes of the same cycle."""
    body = orjson.dumps({"instances": ["A", "B"], "payload": PAYLOAD, "timeout": 1})
    route = url + "/api/orchestrator/route"
    met: list[tuple[float, int, Any]] = []
    costs: list[float] = []
    for _ in range(cycles):
        healthy = statistics.median(s[2]["total_ms"] for s in await _routes(http, route, 20, body))
        await proxy.refuse()
        for _ in range(4):
            (sample,) = await _routes(http, route, 1, body)
            if any(a["outcome"] == "down" for a in sample[2].get("attempts", [])):
                met.append(sample)
                costs.append(sample[2]["total_ms"] - healthy)
                break
        await proxy.heal()
        await _wait_states(http, url, lambda s: s["B"] == "healthy")
    row = _failover_row("refused_connection", met)
    row.extra["refused_cost_ms_p50"] = round(statistics.median(costs), 3) if costs else None
    row.extra["refused_cost_ms_max"] = round(max(costs), 3) if costs else None
    return row


async def _wait_states(
    http: aiohttp.ClientSession, url: str, done: Callable[[dict[str, str]], bool]
) -> float:
    """Poll the health until ``done(states)``; returns the seconds waited (at most 20)."""
    started = time.perf_counter()
    for _ in range(400):
        if done(await _states(http, url)):
            break
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


# -- 4. sessions ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str | None]:
    """A new, empty database on the PostgreSQL server of ``BENCH_PG_URL`` (the machine's
    local one by default), dropped on exit; None when no server answers. Each run migrates
    its own schema from nothing, as a first replica does."""
    try:
        import asyncpg
    except ImportError:
        yield None
        return
    base = os.environ.get("BENCH_PG_URL", PG_URL)
    admin_dsn = base.replace("postgresql+asyncpg://", "postgresql://")
    name = f"orchestrator_bench_{os.getpid()}_{time.monotonic_ns()}"
    try:
        admin = await asyncpg.connect(admin_dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        yield None
        return
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield base.rsplit("/", 1)[0] + "/" + name
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


async def sessions_sends(workdir: Path, sizes: Sizes) -> list[Row]:
    """Sends/s to one session and spread over 100, on SQLite and (when reachable) PostgreSQL."""
    rows = []
    for store in ("sqlite", "postgres"):
        procs: list[Proc] = []
        async with contextlib.AsyncExitStack() as stack:
            db_url = None
            if store == "postgres":
                db_url = await stack.enter_async_context(fresh_pg_database())
                if db_url is None:
                    continue  # no PostgreSQL here: that row is left out
            stack.enter_context(stopping(procs))
            for name in "AB":
                procs.append(await start_instance(name, workdir))
            settings: dict[str, Any] = {"health": QUIET_HEALTH}
            if db_url:
                settings["database_url"] = db_url
            else:
                settings["data_dir"] = str(workdir / f"sessions-{time.monotonic_ns()}")
            urls = {p.name: p.url for p in procs}
            orch = await start_orchestrator(
                workdir, urls, label=f"orchestrator-{store}", settings=settings
            )
            procs.append(orch)
            ids = await _spawn(orch.url, 100)
            body = orjson.dumps({"data": PAYLOAD})
            for variant, targets, concurrency in (
                ("1_session", ids[:1], 16),
                ("100_sessions", ids, 64),
            ):
                send = [(f"{orch.url}/api/orchestrator/sessions/{i}/send", body) for i in targets]
                result, cpu = await _measured(
                    orch,
                    lambda send=send, c=concurrency: run_load(  # type: ignore[misc]
                        send, headers=AUTH, concurrency=c, requests=sizes.send_requests, warmup=100
                    ),
                )
                rows.append(
                    _row_from_load("sessions", f"{store}:{variant}", concurrency, result, orch, cpu)
                )
            if db_url:
                rows.append(await _replicas_row(workdir, urls, settings, orch, ids, sizes))
    return rows


async def _replicas_row(
    workdir: Path,
    instances: dict[str, str],
    settings: dict[str, Any],
    first: Proc,
    ids: list[str],
    sizes: Sizes,
) -> Row:
    """The same 100 sessions through three replicas on the one database (the first one and
    two more), each send going to the next replica in turn: any replica takes any session's
    send, under the session's lease. CPU is the three replicas' together."""
    extra: list[Proc] = []
    try:
        for n in (2, 3):
            extra.append(
                await start_orchestrator(
                    workdir, instances, label=f"orchestrator-replica-{n}", settings=settings
                )
            )
        replicas = [first, *extra]
        body = orjson.dumps({"data": PAYLOAD})
        send = [
            (f"{replicas[k % 3].url}/api/orchestrator/sessions/{i}/send", body)
            for k, i in enumerate(ids * 3)
        ]
        before = [p.cpu() for p in replicas]
        result = await run_load(
            send, headers=AUTH, concurrency=64, requests=sizes.send_requests, warmup=100
        )
        spent = sum(p.cpu() - b for p, b in zip(replicas, before, strict=True))
        row = _row_from_load("sessions", "postgres:100_sessions_3_replicas", 64, result, None, None)
        row.cpu_us_per_req = spent / len(result.latencies) * 1e6 if result.latencies else None
        row.cpu_of = "3 replicas"
        return row
    finally:
        for proc in extra:
            proc.stop()


async def _spawn(url: str, n: int) -> list[str]:
    ids = []
    async with aiohttp.ClientSession() as http:
        for i in range(n):
            body = {"session_id": f"bench-{i}"}
            async with http.post(
                url + "/api/orchestrator/sessions/spawn", json=body, headers=AUTH
            ) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"spawn: {resp.status} {await resp.text()}")
                ids.append((await resp.json())["session_id"])
    return ids


# -- 5. start-up and CLI -------------------------------------------------------------------

BIN = Path(PYTHON).parent


async def startup_cli(workdir: Path, sizes: Sizes) -> list[Row]:
    """``serve`` to the first 200 on /api/health/check; ``openclaw orchestrator health``."""
    instances = {n: f"http://127.0.0.1:{free_port()}" for n in "ABCDEFGH"}  # nobody there
    boots = []
    for i in range(sizes.startup_reps):
        port = free_port()
        config = workdir / f"startup-{i}.json"
        config.write_text(
            orjson.dumps(
                {
                    "instances": [{"name": n, "url": u} for n, u in instances.items()],
                    "data_dir": str(workdir / "startup-data"),
                    "port": port,
                }
            ).decode()
        )
        started = time.perf_counter()
        popen = subprocess.Popen(  # noqa: ASYNC220  # returns at once; the wait is async
            [str(BIN / "openclaw"), "orchestrator", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "ORCHESTRATOR_API_KEY": API_KEY},
        )
        proc = Proc("serve", popen, f"http://127.0.0.1:{port}")
        try:
            await wait_http(proc, "/api/health/check")
            boots.append(time.perf_counter() - started)
        finally:
            proc.stop()
    rows = [_timing_row("serve_to_first_200", boots)]
    procs: list[Proc] = []
    with stopping(procs):
        orch = await start_orchestrator(workdir, instances, settings={"health": QUIET_HEALTH})
        procs.append(orch)
        env = {**os.environ, "ORCHESTRATOR_URL": orch.url, "ORCHESTRATOR_API_KEY": API_KEY}
        argv = [str(BIN / "openclaw"), "orchestrator", "health", "--instances", "A-H"]
        argv += ["--output", "json"]
        runs = []
        for _ in range(max(3, sizes.startup_reps * 2)):
            started = time.perf_counter()
            done = await asyncio.to_thread(
                subprocess.run, argv, env=env, capture_output=True, check=False
            )
            runs.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise RuntimeError(f"health failed: {done.stderr.decode()[-500:]}")
        imports = await asyncio.to_thread(_import_profile, argv, env)
        rows.append(_timing_row("cli_health", runs, top_imports=imports))
    return rows


def _timing_row(variant: str, samples: list[float], **extra: Any) -> Row:
    return Row(
        scenario="startup",
        variant=variant,
        concurrency=1,
        requests=len(samples),
        p50_ms=statistics.median(samples) * 1000,
        p99_ms=max(samples) * 1000,
        req_s=0.0,
        extra=extra,
    )


_IMPORT_LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def _import_profile(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """Top-level imports of the CLI by cumulative milliseconds (``python -X importtime``)."""
    cmd = [PYTHON, "-X", "importtime", "-m", "openclaw_orchestrator", *argv[2:]]
    done = subprocess.run(cmd, env=env, capture_output=True, check=False)
    totals: dict[str, float] = {}
    for line in done.stderr.decode().splitlines():
        match = _IMPORT_LINE.match(line)
        if match and len(match.group(3)) == 1:  # top level only
            totals[match.group(4)] = int(match.group(2)) / 1000
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:10]
    return {name: round(ms, 1) for name, ms in top}


async def durable_runs(workdir: Path, sizes: Sizes) -> list[Row]:
    """Durable runs (issue 12), in :mod:`bench.runs` (which imports this module)."""
    from .runs import durable_runs as run

    return await run(workdir, sizes)


async def observation_cost(workdir: Path, sizes: Sizes) -> list[Row]:
    """The cost of metrics and tracing (issue 14), in :mod:`bench.observe` (which imports
    this module)."""
    from .observe import observation_cost as run

    return await run(workdir, sizes)


async def streaming_relay(workdir: Path, sizes: Sizes) -> list[Row]:
    """The streaming relay (issue 12), in :mod:`bench.stream` (which imports this module)."""
    from .stream import streaming_relay as run

    return await run(workdir, sizes)


SCENARIOS: dict[str, Callable[[Path, Sizes], Awaitable[list[Row]]]] = {
    "route": route_overhead,
    "fanout": fanout_scaling,
    "failover": failover_cost,
    "sessions": sessions_sends,
    "startup": startup_cli,
    "runs": durable_runs,
    "stream": streaming_relay,
    "observe": observation_cost,
}
