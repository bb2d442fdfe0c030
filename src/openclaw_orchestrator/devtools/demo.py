"""The main job, as ``make run`` shows it: a route, a distributed search fanout, the health
table, and a failover with one instance stopped.

It uses only the public SDK against the running cluster, so every step is something a user
can do themselves; the commands that do the same from a shell are printed beside each step.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.rule import Rule

from ..cli.render import fanout_view, health_view, history_view, route_view, send_view
from ..sdk.async_client import AsyncClient

if TYPE_CHECKING:
    from .cluster import LocalInstance

__all__ = ["run_demo"]

FAILOVER_VICTIM = 2  # the third instance ("C" in A-H) is the one stopped
POLL_INTERVAL = 0.1
POLLS = 100  # ten seconds at most
QUERY = "distributed consensus leader election"


async def run_demo(url: str, api_key: str, instances: Sequence[LocalInstance]) -> None:
    """Run the four steps against the cluster at ``url``, printing each."""
    console = Console()
    names = [i.name for i in instances]
    span = f"{names[0]}-{names[-1]}" if len(names) > 1 else names[0]
    async with AsyncClient(url, api_key) as client:
        await _wait_all_probed(client, span)

        pair = names[:2]
        _step(
            console,
            f"1. route: one task to one of {' and '.join(pair)}",
            _cmd(f"route --instances {' '.join(pair)} --payload {_quoted({'data': 'task'})}"),
        )
        console.print(route_view(await client.route({"data": "task"}, instances=pair)))

        query = {"query": QUERY, "k": 3}
        _step(
            console,
            f"2. fanout: distributed search over {span}, best 5 of every shard's top 3",
            _cmd(f"fanout --targets {span} --aggregate topk --top-k 5 --payload {_quoted(query)}"),
        )
        found = await client.fanout(query, targets=span, aggregate="topk", top_k=5, timeout=10)
        console.print(fanout_view(found))

        _step(console, "3. health", _cmd(f"health --instances {span}"))
        console.print(health_view(await client.health(span)))

        if len(instances) >= 3:
            await _failover(console, client, instances, span)

        await _session(console, client)


async def _failover(
    console: Console, client: AsyncClient, instances: Sequence[LocalInstance], span: str
) -> None:
    victim = instances[FAILOVER_VICTIM]
    backup = instances[FAILOVER_VICTIM + 1] if len(instances) > 3 else instances[0]
    _step(
        console,
        f"4. failover: instance {victim.name} stopped (pid {victim.process.pid}); "
        f"a task for {victim.name} or {backup.name} is still served",
        _cmd(
            f"route --instances {victim.name} {backup.name} "
            f"--payload {_quoted({'data': 'after failure'})}"
        ),
    )
    victim.stop()
    # Round-robin may start with either; route until the dead one has been tried once, so
    # the failover is visible in the attempts.
    for _ in range(4):
        result = await client.route(
            {"data": "after failure"}, instances=[victim.name, backup.name], policy="round_robin"
        )
        if any(a.instance == victim.name for a in result.attempts) or result.skipped:
            break
    console.print(route_view(result))
    await _wait_down(client, victim.name)
    console.print(health_view(await client.health(span)))
    console.print(f"[dim]{victim.name} stays down until the next run.[/dim]")


async def _session(console: Console, client: AsyncClient) -> None:
    _step(
        console,
        "5. session: a conversation pinned to one instance, durable, in order",
        _cmd("sessions_spawn --id <id>") + "; " + _cmd("sessions_send --id <id> --data JSON"),
    )
    async with await client.sessions.spawn(metadata={"demo": True}) as session:
        for text in ("hello", "how many messages have you seen?"):
            console.print(send_view(await session.send({"text": text})))
        console.print(history_view(await session.history()))


async def _wait_all_probed(client: AsyncClient, span: str) -> None:
    for _ in range(POLLS):
        if "unknown" not in (await client.health(span)).values():
            return
        await asyncio.sleep(POLL_INTERVAL)


async def _wait_down(client: AsyncClient, name: str) -> None:
    for _ in range(POLLS):
        if (await client.health(name)).get(name) == "down":
            return
        await asyncio.sleep(POLL_INTERVAL)


def _quoted(payload: dict[str, Any]) -> str:
    return shlex.quote(json.dumps(payload))


def _cmd(args: str) -> str:
    return f"openclaw orchestrator {args}"


def _step(console: Console, title: str, command: str) -> None:
    console.print()
    console.print(Rule(f"[bold]{title}"))
    console.print(f"[dim]$ {command}[/dim]")
