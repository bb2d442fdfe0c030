"""Live views: ``health --watch`` and ``top``, redrawn in place with Rich's ``Live``.

Each polls one SDK call every ``interval`` seconds. On a terminal the table is redrawn in
place; with ``--output json`` (or when stdout is not a terminal) ``health --watch`` prints
one JSON line each time the states change and ``top`` one per poll, so a script can follow
them too. Ctrl-C ends both (exit 130, like every command).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .render import STATE_STYLES, health_view, to_json

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..activity import InstancesActivity
    from ..sdk.sync_client import Client

__all__ = ["DEFAULT_INTERVAL", "top_view", "watch", "watch_health", "watch_top"]

DEFAULT_INTERVAL = 1.0
"""Seconds between polls of ``health --watch`` and ``top``."""

Sleep = Callable[[float], None]


def watch(
    poll: Callable[[], Any],
    view: Callable[[Any], RenderableType],
    *,
    interval: float,
    as_json: bool,
    only_changes: bool,
    sleep: Sleep = time.sleep,
) -> None:
    """Call ``poll`` every ``interval`` until Ctrl-C: redraw ``view`` of it in place, or
    print it as a JSON line (``only_changes``: when it differs from the last one printed)."""
    if as_json:
        last: str | None = None
        while True:
            line = _json_line(poll())
            if line != last or not only_changes:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
                last = line
            sleep(interval)
    from rich.console import Console
    from rich.live import Live

    with Live(view(poll()), console=Console(), auto_refresh=False) as live:
        while True:
            sleep(interval)
            live.update(view(poll()), refresh=True)


def _json_line(value: Any) -> str:
    """``value`` as the CLI's JSON (:func:`.render.to_json`), on one line (NDJSON)."""
    import orjson

    return orjson.dumps(orjson.loads(to_json(value))).decode()


def watch_health(
    client: Client, targets: Any, *, detail: bool, interval: float, as_json: bool
) -> None:
    """``health --watch``: the health table, redrawn as states change."""

    def poll() -> Any:
        return client.health_detail(targets) if detail else client.health(targets)

    watch(poll, health_view, interval=interval, as_json=as_json, only_changes=True)


def watch_top(client: Client, *, interval: float, as_json: bool) -> None:
    """``top``: in-flight work per instance, live."""
    watch(
        client.instances_activity, top_view, interval=interval, as_json=as_json, only_changes=False
    )


def top_view(snapshot: InstancesActivity) -> RenderableType:
    """Instances by in-flight calls (most first): state, latency, failures in a row, when a
    down one is next probed, and why it is in its state."""
    from rich.table import Table
    from rich.text import Text

    busy = sorted(snapshot.instances, key=lambda i: (-i.in_flight, i.name))
    total = sum(i.in_flight for i in snapshot.instances)
    title = f"{total} in flight over {len(busy)} instances at {snapshot.at:%H:%M:%S}"
    table = Table(title=title, title_justify="left")
    for column in ("instance", "in flight", "state", "latency", "failures", "ejected until"):
        table.add_column(column, justify="right" if column in ("in flight", "latency") else "left")
    table.add_column("reason", overflow="fold")
    for inst in busy:
        table.add_row(
            inst.name,
            str(inst.in_flight),
            Text(inst.state, style=STATE_STYLES.get(inst.state, "")),
            "-" if inst.latency_ms is None else f"{inst.latency_ms:.1f} ms",
            str(inst.consecutive_failures),
            f"{inst.ejected_until:%H:%M:%S}" if inst.ejected_until else "",
            inst.reason or "",
        )
    return table
