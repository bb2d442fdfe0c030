"""The table, ``latest.json`` and one PNG per scenario; the issue's targets, checked."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from .scenarios import Row

__all__ = ["check_targets", "plot", "table", "write_json"]

SCHEMA_VERSION = 1


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(rows: Iterable[Row]) -> str:
    """One plain-text table of every row."""
    head = ("scenario", "variant", "conc", "n", "p50 ms", "p99 ms", "req/s", "cpu µs", "rss MB")
    lines = [head]
    for r in rows:
        lines.append(
            (
                r.scenario,
                r.variant,
                str(r.concurrency),
                str(r.requests),
                _num(r.p50_ms, 3),
                _num(r.p99_ms, 3),
                _num(r.req_s, 0),
                _num(r.cpu_us_per_req, 1),
                _num(r.peak_rss_mb, 1),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _find(
    rows: list[Row], scenario: str, variant: str, concurrency: int | None = None
) -> Row | None:
    for r in rows:
        if r.scenario == scenario and r.variant == variant:
            if concurrency is None or r.concurrency == concurrency:
                return r
    return None


def check_targets(rows: list[Row]) -> list[dict[str, Any]]:
    """Each target of the issue that the rows can decide: the measured value and met/not."""
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float, limit: float, *, at_most: bool = True) -> None:
        met = value <= limit if at_most else value >= limit
        checks.append({"target": name, "value": round(value, 3), "limit": limit, "met": met})

    direct1, orch1 = _find(rows, "route", "direct", 1), _find(rows, "route", "orchestrator", 1)
    if direct1 and orch1:
        add("route: added p50 at c1 (ms) <= 0.3", orch1.p50_ms - direct1.p50_ms, 0.3)
    direct64, orch64 = _find(rows, "route", "direct", 64), _find(rows, "route", "orchestrator", 64)
    if direct64 and orch64:
        add(
            "route: share of direct req/s at c64 >= 0.40",
            orch64.req_s / direct64.req_s,
            0.40,
            at_most=False,
        )
        add("route: p99 at c64 / direct's <= 3", orch64.p99_ms / direct64.p99_ms, 3.0)
    for r in rows:
        if r.scenario == "fanout" and r.variant == "orchestrator":
            ideal = r.extra["ideal_ms"]
            if r.concurrency == 8:
                add("fanout 8: p50 wall (ms) <= ideal + 5", r.p50_ms, ideal + 5)
            if r.concurrency == 1000:
                add("fanout 1000: p50 wall (ms) <= ideal + 50", r.p50_ms, ideal + 50)
            gather = _find(rows, "fanout", "gather-aiohttp", r.concurrency)
            if gather:
                add(
                    f"fanout {r.concurrency}: wall / hand-written gather <= 1.2",
                    r.p50_ms / gather.p50_ms,
                    1.2,
                )
    down = _find(rows, "failover", "marked_down")
    healthy = _find(rows, "failover", "healthy")
    if down and healthy:
        add(
            "failover: marked-down p50 - healthy p50 (ms) <= 0.1", down.p50_ms - healthy.p50_ms, 0.1
        )
    refused = _find(rows, "failover", "refused_connection")
    if refused and refused.extra.get("refused_cost_ms_p50") is not None:
        cost = refused.extra["refused_cost_ms_p50"]
        add("failover: refused connection cost p50 (ms) <= 1", cost, 1.0)
    on, off = _find(rows, "observe", "metrics-on"), _find(rows, "observe", "metrics-off")
    if on and off:
        paired = on.extra.get("paired_cost_pct")
        if paired is not None:  # CPU-bound: req/s = 1 / CPU per req (bench/observe.py)
            target = "observe: route req/s lost to metrics at c64, median of paired rounds (%) <= 5"
            add(target, paired, 5.0)
    hooks = _find(rows, "observe", "in_process_hooks")
    if hooks and hooks.extra.get("share_of_route_cpu_pct") is not None:
        share = hooks.extra["share_of_route_cpu_pct"]
        add("observe: metrics hooks timed in process, share of route CPU (%) <= 5", share, 5.0)
    sends = _find(rows, "sessions", "sqlite:100_sessions")
    if sends:
        add("sessions: sqlite sends/s over 100 sessions >= 2000", sends.req_s, 2000, at_most=False)
    pg_sends = _find(rows, "sessions", "postgres:100_sessions")
    if pg_sends:
        add(
            "sessions: postgres sends/s over 100 sessions >= 2000",
            pg_sends.req_s,
            2000,
            at_most=False,
        )
        three = _find(rows, "sessions", "postgres:100_sessions_3_replicas")
        if three:
            add(
                "sessions: postgres 3 replicas / 1 replica sends/s >= 1",
                three.req_s / pg_sends.req_s,
                1.0,
                at_most=False,
            )
    for store in ("sqlite", "postgres"):
        submit = _find(rows, "runs", f"{store}:submit")
        if submit:
            add(f"runs: {store} submissions/s >= 1000", submit.req_s, 1000, at_most=False)
    for r in rows:
        if r.scenario == "runs" and r.variant.endswith("_in_flight"):
            n = r.concurrency
            add(f"runs: share of {n} runs running at once >= 1", r.extra["running_at_once"] / n, 1)
            add(f"runs: {n} in flight, runs that did not succeed <= 0", r.errors, 0)
            add(f"runs: RSS per run in flight at {n} (KiB) <= 64", r.extra["kb_per_run"], 64)
    relayed = _find(rows, "stream", "orchestrator")
    if relayed and "added_p99_ms" in relayed.extra:
        streams = relayed.concurrency
        add(
            f"stream: added p99 per chunk at {streams} streams (ms) <= 1",
            relayed.extra["added_p99_ms"],
            1.0,
        )
    cli = _find(rows, "startup", "cli_health")
    if cli:
        add("cli: health end to end (ms) <= 300", cli.p50_ms, 300)
    return checks


def write_json(path: Path, rows: list[Row], checks: list[dict[str, Any]], *, quick: bool) -> None:
    """``latest.json``: meta, rows, target checks (schema in docs/performance.md)."""
    doc = {
        "schema": SCHEMA_VERSION,
        "meta": {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "quick": quick,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_generator": "aiohttp ClientSession, closed-loop asyncio workers on uvloop",
        },
        "results": [r.to_dict() for r in rows],
        "targets": checks,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")


def plot(folder: Path, rows: list[Row]) -> list[Path]:
    """One PNG per scenario (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for scenario in dict.fromkeys(r.scenario for r in rows):
        mine = [r for r in rows if r.scenario == scenario]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        if scenario == "fanout":
            for variant in dict.fromkeys(r.variant for r in mine):
                pts = [r for r in mine if r.variant == variant]
                xs = [r.concurrency for r in pts]
                axes[0].plot(xs, [r.p50_ms for r in pts], marker="o", label=variant)
                axes[1].plot(xs, [r.cpu_us_per_req or 0 for r in pts], marker="o", label=variant)
            axes[0].axhline(mine[0].extra["ideal_ms"], color="grey", linestyle=":", label="ideal")
            # log scales both ways: httpx is two orders of magnitude above the others
            axes[0].set(xscale="log", xlabel="targets", ylabel="p50 wall ms", title="fanout wall")
            axes[1].set(xscale="log", xlabel="targets", ylabel="CPU µs / target", title="CPU")
            axes[0].set_yscale("log")
            axes[1].set_yscale("log")
            axes[0].legend()
            axes[1].legend()
        else:
            labels = [f"{r.variant}\nc{r.concurrency}" for r in mine]
            xs = list(range(len(mine)))
            axes[0].bar([x - 0.2 for x in xs], [r.p50_ms for r in mine], 0.4, label="p50")
            axes[0].bar([x + 0.2 for x in xs], [r.p99_ms for r in mine], 0.4, label="p99")
            axes[0].set(ylabel="ms", title=f"{scenario}: latency")
            axes[0].set_yscale("log")
            axes[0].legend()
            axes[1].bar(list(xs), [r.req_s for r in mine])
            axes[1].set(ylabel="req/s", title=f"{scenario}: throughput")
            for ax in axes:
                ax.set_xticks(list(xs), labels, fontsize=7, rotation=30)
        fig.tight_layout()
        path = folder / f"{scenario}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
