"""The OpenClaw steps of ``openclaw orchestrator up --openclaw N --demo``, after the main job.

Like the main job (:mod:`openclaw_orchestrator.devtools.demo`) it uses only the public SDK against
the running cluster and prints the shell command beside each step: an agent turn on a real
gateway, a tool call, a fanout mixing reference instances and gateways, and a session whose
conversation the gateway keeps.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.rule import Rule

from ...cli.render import fanout_view, history_view, route_view, send_view
from ...sdk.async_client import AsyncClient

__all__ = ["run_openclaw_demo"]

POLL_INTERVAL = 0.1
POLLS = 200  # twenty seconds at most


async def run_openclaw_demo(
    url: str, api_key: str, gateways: Sequence[str], references: Sequence[str]
) -> None:
    """Run the OpenClaw steps against the cluster at ``url``, printing each."""
    console = Console()
    async with AsyncClient(url, api_key) as client:
        await _wait_probed(client, gateways)
        turn = {"message": "summarize what an orchestrator does"}
        names = " ".join(gateways)
        _step(console, f"OpenClaw 1. route: an agent turn on one of {', '.join(gateways)}")
        console.print(f"[dim]$ {_cmd(f'route --instances {names} --payload', turn)}")
        console.print(route_view(await client.route(turn, instances=list(gateways))))

        tool = {"tool": "sessions_list", "args": {}}
        _step(console, f"OpenClaw 2. route: the tool sessions_list on {gateways[0]}")
        console.print(f"[dim]$ {_cmd(f'route --instances {gateways[0]} --payload', tool)}")
        console.print(route_view(await client.route(tool, instances=[gateways[0]])))

        mixed = [*references[:2], *gateways]
        _step(console, f"OpenClaw 3. fanout over reference instances and gateways: {mixed}")
        targets = " ".join(mixed)
        console.print(f"[dim]$ {_cmd(f'fanout --targets {targets} --payload', turn)}")
        console.print(fanout_view(await client.fanout(turn, targets=mixed, aggregate="array")))

        await _session(console, client, gateways[-1])


async def _session(console: Console, client: AsyncClient, gateway: str) -> None:
    _step(console, f"OpenClaw 4. session on {gateway}: gateway session orch-<id>")
    console.print(f"[dim]$ {_cmd(f'sessions_spawn --instance {gateway}')}")
    async with await client.sessions.spawn(instance=gateway) as session:
        for text in ("my name is Ada", "what is my name?"):
            console.print(send_view(await session.send({"message": text})))
        console.print(history_view(await session.history()))


async def _wait_probed(client: AsyncClient, gateways: Sequence[str]) -> None:
    for _ in range(POLLS):
        if "unknown" not in (await client.health(list(gateways))).values():
            return
        await asyncio.sleep(POLL_INTERVAL)


def _cmd(args: str, payload: Any = None) -> str:
    tail = "" if payload is None else " " + shlex.quote(json.dumps(payload))
    return f"openclaw orchestrator {args}{tail}"


def _step(console: Console, title: str) -> None:
    console.print()
    console.print(Rule(f"[bold]{title}"))
