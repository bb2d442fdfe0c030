"""``openclaw orchestrator skill install``: the orchestrator skill and MCP server into
OpenClaw gateways (the work is :mod:`..devtools.openclaw.skill_install`; this parses the
options, finds the gateways and prints what happened).

Targets, exactly one kind per call:

- ``--gateway NAME`` (repeatable) / ``--all``: gateways that ``up --openclaw N`` started,
  found through ``<data_dir>/openclaw-gateways/fleet.json`` (``--data-dir`` as given to
  ``up``); the orchestrator URL defaults to the one that ``up`` serves.
- ``--state-dir DIR``: any gateway's state folder (``OPENCLAW_STATE_DIR``); its config is
  ``DIR/openclaw.json`` unless ``--openclaw-config`` names it.
- ``--workspace DIR``: only the skill, into that agent workspace; no config is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ..devtools.openclaw.skill_install import InstallReport

__all__ = ["skill_app"]

skill_app = typer.Typer(
    help="The orchestrator skill for OpenClaw gateways: let their agents delegate.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _config_error(message: str) -> Exception:
    from ..devtools.openclaw.skill_install import SkillInstallError

    return SkillInstallError(message)


def _data_dir(config: Path | None, data_dir: Path | None) -> Path:
    """The data folder ``up`` would use with the same ``--config`` and ``--data-dir``."""
    from ..settings import load_settings

    return load_settings(config, data_dir=data_dir).data_dir


def _started_gateways(
    names: list[str], every: bool, data_dir: Path
) -> tuple[list[tuple[str, Path]], str | None]:
    """``(name, state_dir)`` of the gateways asked for, and the orchestrator URL ``up``
    recorded; a ConfigError naming what exists when one is not a running gateway of ours."""
    from ..devtools.openclaw.fleet import FLEET_DIR, read_fleet_record

    root = data_dir / FLEET_DIR
    try:
        record = read_fleet_record(root)
    except ValueError as exc:
        raise _config_error(str(exc)) from exc
    if record is None or not record.gateways:
        raise _config_error(
            f"no OpenClaw gateways started by `up --openclaw N` with data dir {data_dir} "
            "(is it running, with the same --data-dir? any other gateway: --state-dir DIR)"
        )
    known = sorted(record.gateways)
    wanted = known if every else names
    unknown = [name for name in wanted if name not in record.gateways]
    if unknown:
        raise _config_error(
            f"--gateway {unknown[0]}: not an OpenClaw gateway this orchestrator started; "
            f"its gateways: {', '.join(known)} (any other gateway: --state-dir DIR)"
        )
    stopped = [name for name in wanted if not record.is_running(name)]
    if stopped:
        raise _config_error(f"gateway {stopped[0]} is not running (its `up` has stopped)")
    return [(name, record.state_dir(name)) for name in wanted], record.orchestrator_url


def _print_report(label: str, report: InstallReport) -> None:
    """What changed (or would), as lines a person reads; the diff on a dry run."""
    if report.dry_run:
        typer.echo(report.diff(), nl=False)
    if not report.is_changed:
        typer.echo(f"{label}: already installed, nothing changed")
    else:
        verb = "would write" if report.dry_run else "wrote"
        typer.echo(f"{label}: {verb} " + ", ".join(str(p) for p in report.changed_paths))
    for note in report.notes:
        typer.echo(f"  {note}")


@skill_app.command("install")
def install(
    gateway: Annotated[
        list[str] | None,
        typer.Option("--gateway", metavar="NAME", help="A gateway `up --openclaw` started."),
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every gateway `up --openclaw` started.")
    ] = False,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", file_okay=False, help="A gateway's state folder."),
    ] = None,
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace", file_okay=False, help="Only the skill, into this agent workspace."
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Orchestrator base URL (default: the one `up` serves, else env "
            "ORCHESTRATOR_URL, else http://127.0.0.1:18790).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="With --state-dir: the gateway's instance name in the orchestrator "
            "(X-Orchestrator-Caller; default: the folder's name).",
            show_default=False,
        ),
    ] = None,
    openclaw_config: Annotated[
        Path | None,
        typer.Option(
            "--openclaw-config",
            dir_okay=False,
            help="With --state-dir: the gateway's config, when not DIR/openclaw.json.",
        ),
    ] = None,
    key_env: Annotated[
        str,
        typer.Option("--key-env", help="The variable the gateway holds the orchestrator key in."),
    ] = "ORCHESTRATOR_API_KEY",
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="up's data folder (as given to up).", show_default=False),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", dir_okay=False, help="up's server config file (as given to up)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the changes; write nothing.")
    ] = False,
) -> None:
    """Write the orchestrator skill into a gateway's workspace and the orchestrator's MCP
    server (streamable HTTP at URL/mcp, the key as ${ORCHESTRATOR_API_KEY}) into its config."""
    from ..devtools.openclaw.skill_install import install_skill, install_workspace_skill

    chosen = [bool(gateway), every, state_dir is not None, workspace is not None]
    if sum(chosen) != 1:
        raise _config_error("give one of --gateway NAME, --all, --state-dir DIR, --workspace DIR")
    if workspace is not None:
        _print_report(str(workspace), install_workspace_skill(workspace, dry_run=dry_run))
        return
    if state_dir is not None:
        targets, recorded = [(name or state_dir.resolve().name, state_dir)], None
    else:
        targets, recorded = _started_gateways(gateway or [], every, _data_dir(config, data_dir))
    base = url or recorded or _env_url()
    for caller, folder in targets:
        report = install_skill(
            folder,
            mcp_url=base.rstrip("/") + "/mcp",
            caller=caller,
            key_env=key_env,
            config_path=openclaw_config,
            dry_run=dry_run,
        )
        _print_report(caller, report)


def _env_url() -> str:
    """``ORCHESTRATOR_URL`` (as every client command reads it), else the default."""
    from ..sdk.env import resolve_client

    return resolve_client(None, None, None)[0]
