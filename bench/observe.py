"""Scenario 8, the cost of observation (issue 14): route throughput at c64 with metrics on
and tracing off (the default) against metrics off, and, for the record, tracing on (spans
made, exported nowhere).

Each variant is its own orchestrator process in front of the same reference instance; the
variants' rounds alternate (on, off, tracing, on, off, ...), so a busy minute on the shared
machine falls on all of them. Each variant's row is its best round by req/s (what the code
can do; the slower rounds measured the neighbours), with the least orchestrator CPU per
request of its rounds (``cpu_us_per_req``) and every round's numbers in ``extra``.

The target is read from the CPU per request: the orchestrator is CPU-bound at c64, so its
route throughput is the inverse of its CPU per request, and process CPU time is what a
machine busy with other jobs disturbs least. Even so one variant's rounds spread by up to
30 % on this shared machine (docs/performance.md), more than the few percent measured, so
the least CPU of each variant's rounds compared two lucky minutes and the verdict swung
from 5 to 15 % between runs of the same code. The metrics-on row's ``paired_cost_pct`` is
what the target reads instead: per round, the metrics-on and metrics-off measurements
taken back to back (the same minute of the machine) give one cost, and the median of the
rounds' costs discards the rounds a burst of other work fell on.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import orjson

from .load import LoadResult
from .procs import Proc, start_instance, start_orchestrator, stopping
from .scenarios import AUTH, PAYLOAD, QUIET_HEALTH, Row, Sizes, _measured, _row_from_load, run_load

__all__ = ["VARIANTS", "observation_cost"]

CONCURRENCY = 64
VARIANTS: dict[str, dict[str, object]] = {
    "metrics-on": {},  # the defaults: metrics on, tracing off
    "metrics-off": {"metrics": {"enabled": False}},
    "tracing-on": {"tracing": {"enabled": True}},
}


async def observation_cost(workdir: Path, sizes: Sizes) -> list[Row]:
    """The rows ``observe/<variant>`` at c64 (module docstring)."""
    rounds, count = (2, 1500) if sizes.quick else (8, 2500)
    procs: list[Proc] = []
    with stopping(procs):
        instance = await start_instance("A", workdir)
        procs.append(instance)
        orchestrators: dict[str, Proc] = {}
        for name, extra in VARIANTS.items():
            data_dir = str(workdir / f"data-{name}")  # one SQLite file per process
            settings = {"health": QUIET_HEALTH, "data_dir": data_dir, **extra}
            orchestrators[name] = await start_orchestrator(
                workdir, {"A": instance.url}, label=f"orchestrator-{name}", settings=settings
            )
            procs.append(orchestrators[name])
        body = orjson.dumps({"instances": ["A"], "payload": PAYLOAD})
        best: dict[str, tuple[LoadResult, float | None]] = {}
        seen: dict[str, list[tuple[float, float]]] = {name: [] for name in orchestrators}
        for _ in range(rounds):
            for name, proc in orchestrators.items():
                url = proc.url + "/api/orchestrator/route"
                measured = await _measured(
                    proc,
                    lambda url=url: run_load(  # type: ignore[misc]
                        [(url, body)],
                        headers=AUTH,
                        concurrency=CONCURRENCY,
                        requests=count,
                        warmup=max(200, count // 10),
                    ),
                )
                result, cpu = measured
                per_request = (cpu or 0.0) / max(1, len(result.latencies)) * 1e6
                seen[name].append((round(result.req_s, 1), round(per_request, 1)))
                if name not in best or result.req_s > best[name][0].req_s:
                    best[name] = measured
        rows = []
        for name, (result, cpu) in best.items():
            row = _row_from_load("observe", name, CONCURRENCY, result, orchestrators[name], cpu)
            row.cpu_us_per_req = min(c for _, c in seen[name])
            row.extra = {"rounds_req_s": [r for r, _ in seen[name]]}
            row.extra["rounds_cpu_us_per_req"] = [c for _, c in seen[name]]
            rows.append(row)
        paired = paired_cost_pct(seen["metrics-on"], seen["metrics-off"])
        if paired is not None:
            (on_row,) = [row for row in rows if row.variant == "metrics-on"]
            on_row.extra["paired_cost_pct"] = round(paired, 2)
        off_cpu = [c for _, c in seen["metrics-off"] if c > 0]
        if off_cpu:
            rows.append(await in_process_hooks(statistics.median_high(off_cpu), sizes.quick))
        return rows


async def in_process_hooks(route_cpu_us: float, quick: bool) -> Row:
    """What metrics add to one routed request, timed in this process where no other
    process's luck enters: the request middleware around a trivial app against the app
    alone, plus one attempt counted (best of five batches each); and that as a share of
    the median metrics-off round's orchestrator CPU per route (``route_cpu_us``)."""
    from openclaw_orchestrator.server.observability.http import ObservationMiddleware
    from openclaw_orchestrator.server.observability.metrics import Metrics
    from openclaw_orchestrator.server.observability.observer import ENDPOINT_KEY, Observer

    async def app(scope: object, receive: object, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message: object) -> None:
        return None

    async def receive() -> dict[str, object]:
        return {}

    observer = Observer(metrics=Metrics("bench"), tracing=None)
    observed = ObservationMiddleware(app, observer=observer)
    calls = 20_000 if quick else 100_000
    route = "/api/orchestrator/route"

    async def best_us(target: Any) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(calls):
                scope = {"type": "http", "method": "POST", "path": route, ENDPOINT_KEY: route}
                await target(scope, receive, send)
            best = min(best, (time.perf_counter() - started) / calls * 1e6)
        return best

    middleware = await best_us(observed) - await best_us(app)
    started = time.perf_counter()
    for _ in range(calls):
        observer.attempt("A", "ok", 0.001)
    attempt = (time.perf_counter() - started) / calls * 1e6
    cost = middleware + attempt
    share = cost / route_cpu_us * 100
    return Row(
        scenario="observe",
        variant="in_process_hooks",
        concurrency=1,
        requests=calls,
        p50_ms=0.0,
        p99_ms=0.0,
        req_s=0.0,
        cpu_us_per_req=round(cost, 2),
        cpu_of="bench process",
        extra={
            "middleware_us": round(middleware, 2),
            "attempt_count_us": round(attempt, 2),
            "route_cpu_us_metrics_off_median": route_cpu_us,
            "share_of_route_cpu_pct": round(share, 2),
        },
    )


def paired_cost_pct(on: list[tuple[float, float]], off: list[tuple[float, float]]) -> float | None:
    """The median over rounds of the route throughput metrics cost in that round (from
    CPU per request: ``1 - off/on``), in percent; None without a pair of measurements."""
    costs = [
        (1 - off_cpu / on_cpu) * 100
        for (_, on_cpu), (_, off_cpu) in zip(on, off, strict=True)
        if on_cpu > 0 and off_cpu > 0
    ]
    return statistics.median(costs) if costs else None
