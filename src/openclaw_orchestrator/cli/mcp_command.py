"""``openclaw orchestrator mcp``: the orchestrator's tools as an MCP server on stdio.

An agent (an OpenClaw gateway's ``mcp.servers.<name>``: ``command``/``args``) launches it and
speaks MCP on its stdin/stdout; each tool call goes to the orchestrator's HTTP API with
``ORCHESTRATOR_URL`` / ``ORCHESTRATOR_API_KEY`` (a session token there grants that session's
tools only). Registered in :mod:`.main`; also ``python -m openclaw_orchestrator.cli.mcp_command``.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated

import typer

from .exits import ExitCode

__all__ = ["MCP_INSTALL_HINT", "mcp"]

MCP_INSTALL_HINT = (
    "error: the MCP SDK is not installed: pip install 'openclaw-orchestrator[server]'"
)


def mcp(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Orchestrator base URL (env ORCHESTRATOR_URL; default http://127.0.0.1:18790).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Config file with url and api_key.", dir_okay=False),
    ] = None,
) -> None:
    """Serve the orchestrator's tools (route, fanout, sessions_*, health, instances, runs_*)
    over MCP on stdin/stdout, for agents that launch tools as processes (docs/mcp.md)."""
    if find_spec("mcp") is None:
        sys.stderr.write(MCP_INSTALL_HINT + "\n")
        raise SystemExit(ExitCode.USAGE)
    import asyncio

    from ..mcp_server.stdio import serve_stdio
    from ..sdk.env import resolve_client

    resolved, credential = resolve_client(config, url, None)
    asyncio.run(serve_stdio(resolved, credential))


if __name__ == "__main__":
    typer.run(mcp)
