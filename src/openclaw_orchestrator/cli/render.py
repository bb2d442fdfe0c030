"""Pure rendering: SDK results -> JSON text or Rich renderables; nothing here prints.

JSON mode is what scripts read: each model's ``model_dump(mode="json")`` through orjson with
a two-space indent (streams: one compact line per event, like the API's NDJSON). Table mode is
for people. Rich is imported inside the table functions only, so JSON output never pays for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel

from ..errors import OrchestratorError, error_from_body
from ..models import FanoutEntry, HealthDetail

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

    from ..models import (  # in annotations only
        FanoutResult,
        HistoryPage,
        InstanceInfo,
        RouteResult,
        RunInfo,
        RunList,
        SendResult,
        SessionInfo,
    )
    from ..sdk.events import RunEvent

__all__ = [
    "RUN_STATE_STYLES",
    "SESSION_STATE_STYLES",
    "STATE_STYLES",
    "STATUS_STYLES",
    "TOKEN_NOTICE",
    "entry_line",
    "error_text",
    "fanout_summary",
    "fanout_value_json",
    "fanout_view",
    "health_view",
    "history_view",
    "instances_view",
    "output_line",
    "output_summary",
    "progress_text",
    "removed_view",
    "route_view",
    "run_event_json",
    "run_event_line",
    "run_view",
    "runs_view",
    "send_view",
    "session_view",
    "sessions_view",
    "stream_line",
    "summary_view",
    "to_json",
]

STATE_STYLES = {"healthy": "green", "degraded": "yellow", "down": "bold red", "unknown": "dim"}
"""Colors of instance health states; anything else shows unstyled."""
STATUS_STYLES = {"ok": "green", "error": "red", "timeout": "yellow", "cancelled": "dim"}
"""Colors of fanout entry statuses and route attempt outcomes."""
SESSION_STATE_STYLES = {"open": "green", "closed": "dim", "expired": "yellow"}
"""Colors of session states."""
RUN_STATE_STYLES = {
    "queued": "dim",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "timed_out": "yellow",
    "cancelled": "dim",
}
"""Colors of durable run states."""
TOKEN_NOTICE = "(keep it: it is shown once)"  # noqa: S105  # a notice, not a secret
"""Follows the token of a freshly spawned session in table mode."""
_OUTCOME_STYLES = {**STATUS_STYLES, "down": "bold red"}
_SUMMARY_WIDTH = 60


def _plain(value: Any) -> Any:
    """JSON-ready data: models dumped in JSON mode, containers walked."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def to_json(value: Any) -> str:
    """``value`` (a model, a mapping or list of models, or plain data) as indented JSON."""
    return orjson.dumps(_plain(value), option=orjson.OPT_INDENT_2).decode()


def stream_line(item: FanoutEntry | FanoutResult) -> str:
    """One compact NDJSON line of a streaming fanout, shaped like the API's own lines."""
    if isinstance(item, FanoutEntry):
        return orjson.dumps({"type": "entry", "entry": _plain(item)}).decode()
    return orjson.dumps({"type": "result", "result": _plain(item)}).decode()


def output_line(item: Any) -> str:
    """One compact JSON line of a streamed route or send: ``{"type": "delta", "instance",
    "delta"}`` per piece, then ``{"type": "result", "result": ...}``."""
    from ..sdk.events import Delta

    if isinstance(item, Delta):
        return orjson.dumps(
            {"type": "delta", "instance": item.instance, "delta": item.delta}
        ).decode()
    return orjson.dumps({"type": "result", "result": _plain(item)}).decode()


def output_summary(result: RouteResult | SendResult) -> str:
    """The line after a streamed reply's text: who answered, and how long it took."""
    from ..models import RouteResult

    if isinstance(result, RouteResult):
        tries = len(result.attempts)
        return (
            f"[{result.instance} · {tries} attempt{'s' if tries != 1 else ''} · "
            f"{_ms(result.total_ms)}]"
        )
    return f"[{result.instance} · message {result.seq} · {_ms(result.latency_ms)}]"


def _summary(value: Any) -> str:
    """A one-line, truncated JSON preview of a result for table cells."""
    text = orjson.dumps(value).decode() if not isinstance(value, str) else value
    return text if len(text) <= _SUMMARY_WIDTH else text[: _SUMMARY_WIDTH - 1] + "…"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _when(value: datetime | None) -> str:
    """A timestamp as the server sent it (UTC), to the second; ``-`` when unset."""
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _styled(text: str, styles: Mapping[str, str]) -> Text:
    from rich.text import Text

    return Text(text, style=styles.get(text, ""))


def _error_summary(error: Mapping[str, Any] | None) -> str:
    if not error:
        return ""
    return f"{error.get('code', 'error')}: {error.get('message', '')}".strip()


def _table(*columns: str, title: str | None = None) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        table.add_column(column)
    return table


def route_view(result: RouteResult) -> RenderableType:
    """Who served the task, its result, every attempt and skipped candidate, total time."""
    from rich.console import Group
    from rich.json import JSON
    from rich.text import Text

    header = Text.assemble(
        ("served by ", "bold"), (result.instance, "bold cyan"), f" in {_ms(result.total_ms)}"
    )
    parts: list[RenderableType] = [header, JSON.from_data(result.result)]
    attempts = _table("#", "instance", "outcome", "latency", "error", title="attempts")
    for number, attempt in enumerate(result.attempts, start=1):
        attempts.add_row(
            str(number),
            attempt.instance,
            _styled(attempt.outcome, _OUTCOME_STYLES),
            _ms(attempt.latency_ms),
            _error_summary(attempt.error),
        )
    parts.append(attempts)
    if result.skipped:
        skipped = ", ".join(f"{skip.instance} ({skip.reason})" for skip in result.skipped)
        parts.append(Text(f"skipped: {skipped}", style="dim"))
    parts.append(Text(f"request {result.request_id}", style="dim"))
    return Group(*parts)


def _entries_table(entries: Sequence[FanoutEntry], title: str | None = None) -> Table:
    table = _table("instance", "status", "latency", "result / error", title=title)
    for entry in entries:
        detail = _error_summary(entry.error) if entry.error else _summary(entry.result)
        table.add_row(
            entry.instance, _styled(entry.status, STATUS_STYLES), _ms(entry.latency_ms), detail
        )
    return table


def fanout_view(result: FanoutResult) -> RenderableType:
    """The per-target table, then the aggregate (or why it failed) and the counts."""
    from rich.console import Group

    return Group(_entries_table(result.results), *_aggregate_parts(result))


def _aggregate_parts(result: FanoutResult) -> list[RenderableType]:
    """The aggregate (or why it failed), the counts and the request id."""
    from rich.json import JSON
    from rich.text import Text

    parts: list[RenderableType] = []
    if result.error:
        parts.append(Text(f"aggregate failed: {_error_summary(result.error)}", style="red"))
    elif result.aggregate is not None:
        parts.append(Text(f"aggregate ({result.aggregate}):", style="bold"))
        parts.append(JSON.from_data(result.value))
    counts = (
        f"{result.succeeded} ok, {result.failed} failed, {result.timed_out} timed out "
        f"in {_ms(result.total_ms)}"
    )
    parts.append(Text(counts, style="dim"))
    parts.append(Text(f"request {result.request_id}", style="dim"))
    return parts


def fanout_summary(result: FanoutResult) -> dict[str, Any]:
    """``fanout --summary``: the result without its per-target entries, only the names of
    the targets that did not succeed (``failed_instances``)."""
    summary = result.model_dump(mode="json", exclude={"results"})
    summary["failed_instances"] = [e.instance for e in result.results if e.status != "ok"]
    return summary


def summary_view(result: FanoutResult) -> RenderableType:
    """``fanout --summary`` for people: the aggregate, the counts and who was not ok."""
    from rich.console import Group
    from rich.text import Text

    parts = _aggregate_parts(result)
    failed = fanout_summary(result)["failed_instances"]
    if failed:
        parts.insert(-1, Text(f"not ok: {', '.join(failed)}", style="red"))
    return Group(*parts)


def fanout_value_json(result: FanoutResult) -> str:
    """``fanout --value-only``: exactly the aggregated value as JSON (for ``--aggregate true``
    the array of results). Raises the aggregate's error when it could not be computed, rather
    than print a ``null`` that looks like an answer."""
    if result.error:
        raise error_from_body({"error": result.error}, status=200)
    return to_json(result.value)


def progress_text(done: int, failed: int, total: int | None) -> str:
    """The progress line of a fanout on a terminal: ``3/8 done, 1 failed``."""
    count = f"{done}/{total}" if total is not None else str(done)
    return f"{count} done, {failed} failed"


def entry_line(entry: FanoutEntry) -> Text:
    """One streamed entry as a line: instance, colored status, latency, result or error."""
    from rich.text import Text

    detail = _error_summary(entry.error) if entry.error else _summary(entry.result)
    return Text.assemble(
        (f"{entry.instance:<8}", "bold"),
        (f"{entry.status:<9}", STATUS_STYLES.get(entry.status, "")),
        f"{_ms(entry.latency_ms):>10}  ",
        detail,
    )


def health_view(states: Mapping[str, str] | Mapping[str, HealthDetail]) -> Table:
    """Instance states, colored; with details: latency, failures in a row, last check (the
    server's clock, UTC) and last error."""
    details = [(name, value) for name, value in states.items() if isinstance(value, HealthDetail)]
    if not details:
        table = _table("instance", "state")
        for name, state in states.items():
            table.add_row(name, _styled(str(state), STATE_STYLES))
        return table
    table = _table("instance", "state", "latency", "failures", "last check", "last error")
    for name, detail in details:
        table.add_row(
            name,
            _styled(detail.state, STATE_STYLES),
            _ms(detail.latency_ms),
            str(detail.consecutive_failures),
            detail.last_check.strftime("%H:%M:%S") if detail.last_check else "-",
            detail.last_error or "",
        )
    return table


def instances_view(instances: Sequence[InstanceInfo]) -> Table:
    """Registered and configured instances with their live state; never credentials."""
    table = _table("name", "url", "driver", "weight", "tags", "state", "source", "in flight")
    for info in instances:
        table.add_row(
            info.name,
            info.url,
            info.driver,
            f"{info.weight:g}",
            ", ".join(info.tags),
            _styled(info.state, STATE_STYLES),
            info.source,
            str(info.outstanding),
        )
    return table


def session_view(info: SessionInfo, token: str | None = None) -> RenderableType:
    """One session as label/value lines; after a spawn, its token and that it is shown once."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("session", Text(info.session_id, style="bold cyan")),
        ("instance", info.instance),
        ("state", _styled(info.state, SESSION_STATE_STYLES)),
        ("messages", str(info.messages)),
        ("failover", info.failover),
        ("ttl", f"{info.ttl:g} s"),
        ("created", _when(info.created_at)),
        ("last active", _when(info.last_active_at)),
        ("expires", _when(info.expires_at)),
        ("closed", _when(info.closed_at)),
        ("metadata", _summary(info.metadata) if info.metadata else "-"),
    ]
    for label, value in rows:
        grid.add_row(label, value)
    if token is None:
        return grid
    notice = Text.assemble(("token: ", "bold"), (token, "bold yellow"), f" {TOKEN_NOTICE}")
    return Group(grid, notice)


def send_view(result: SendResult) -> RenderableType:
    """A send's reply: message number, instance, latency, a migration or replay, the reply."""
    from rich.console import Group
    from rich.json import JSON
    from rich.text import Text

    header = Text.assemble(
        ("message ", "bold"),
        (f"#{result.seq}", "bold"),
        " of ",
        (result.session_id, "bold"),
        " on ",
        (result.instance, "bold cyan"),
        f" in {_ms(result.latency_ms)}",
    )
    parts: list[RenderableType] = [header]
    if result.migrated_from:
        parts.append(Text(f"migrated from {result.migrated_from}", style="yellow"))
    if result.replayed:
        parts.append(Text("replayed: the idempotency key matched an earlier send", style="dim"))
    parts.append(JSON.from_data(result.reply))
    parts.append(Text(f"request {result.request_id}", style="dim"))
    return Group(*parts)


def history_view(page: HistoryPage) -> RenderableType:
    """One row per entry (migrations in yellow), then where the page sits in the history."""
    from rich.console import Group
    from rich.text import Text

    table = _table("seq", "kind", "instance", "time", "data", "reply")
    for entry in page.messages:
        table.add_row(
            str(entry.seq),
            Text(entry.kind, style="yellow" if entry.kind == "migration" else ""),
            entry.instance,
            _when(entry.created_at),
            _summary(entry.data),
            _summary(entry.reply),
        )
    shown = f"{len(page.messages)} of {page.total} from offset {page.offset}"
    more = "end" if page.next_offset is None else f"next offset {page.next_offset}"
    return Group(table, Text(f"{shown}; {more}", style="dim"))


def sessions_view(sessions: Sequence[SessionInfo]) -> Table:
    """Sessions with their instance, state, message count and activity; never tokens."""
    table = _table("session", "instance", "state", "messages", "failover", "last active", "expires")
    for info in sessions:
        table.add_row(
            info.session_id,
            info.instance,
            _styled(info.state, SESSION_STATE_STYLES),
            str(info.messages),
            info.failover,
            _when(info.last_active_at),
            _when(info.expires_at),
        )
    return table


def run_view(info: RunInfo) -> RenderableType:
    """One run as label/value lines, then its result or error once it has ended."""
    from rich.console import Group
    from rich.json import JSON
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("run", Text(info.run_id, style="bold cyan")),
        ("kind", info.kind),
        ("state", _styled(info.state, RUN_STATE_STYLES)),
        ("instance", info.instance or "-"),
        ("attempts", str(info.attempts)),
        ("created", _when(info.created_at)),
        ("started", _when(info.started_at)),
        ("finished", _when(info.finished_at)),
        ("deadline", _when(info.deadline_at)),
    ]
    if info.cancel_requested:
        rows.append(("cancel", Text("requested", style="yellow")))
    for label, value in rows:
        grid.add_row(label, value)
    parts: list[RenderableType] = [grid]
    if info.error is not None:
        error = info.error
        where = f" (instance {error.instance})" if error.instance else ""
        parts.append(Text(f"error: {error.code}: {error.message}{where}", style="red"))
    elif info.state == "succeeded":
        parts.append(JSON.from_data(info.result))
    return Group(*parts)


def runs_view(page: RunList) -> RenderableType:
    """One row per run, newest first, then the cursor of the next page when there is one."""
    from rich.console import Group
    from rich.text import Text

    table = _table("run", "kind", "state", "instance", "attempts", "created", "finished")
    for info in page.runs:
        table.add_row(
            info.run_id,
            info.kind,
            _styled(info.state, RUN_STATE_STYLES),
            info.instance or "-",
            str(info.attempts),
            _when(info.created_at),
            _when(info.finished_at),
        )
    more = "end" if page.next is None else f"next page: --cursor {page.next}"
    return Group(table, Text(more, style="dim"))


def run_event_json(event: RunEvent) -> str:
    """One compact JSON line of a run's event: ``{"id", "type", "data"}``."""
    return orjson.dumps({"id": event.id, "type": event.type, "data": event.data}).decode()


def run_event_line(event: RunEvent) -> Text:
    """One run event for people: its number, its type and a preview of its data."""
    from rich.text import Text

    state = event.data.get("state") if isinstance(event.data, dict) else None
    style = RUN_STATE_STYLES.get(state, "") if isinstance(state, str) else ""
    return Text.assemble(
        (f"#{event.id} " if event.id is not None else "", "dim"),
        (event.type, "bold"),
        " ",
        (_summary(event.data), style),
    )


def removed_view(name: str) -> Text:
    """The confirmation of ``unregister``."""
    from rich.text import Text

    return Text.assemble("removed ", (name, "bold"))


def error_text(exc: BaseException) -> Text:
    """``error: <code>: <message>`` in red, with the instance and field when set, and the
    entries that did arrive when a fanout failed (``details.results``)."""
    from rich.text import Text

    if not isinstance(exc, OrchestratorError):
        return Text(f"error: {exc}", style="red")
    text = Text(f"error: {exc.code}: {exc.message}", style="red")
    if exc.instance:
        text.append(f" (instance {exc.instance})", style="red")
    if exc.field:
        text.append(f" (field {exc.field})", style="red")
    for entry in _partial_results(exc):
        text.append("\n  ")
        text.append_text(entry_line(entry))
    return text


def _partial_results(exc: OrchestratorError) -> list[FanoutEntry]:
    """The entries a failed fanout carries in ``details.results``; unreadable ones are skipped."""
    raw = exc.details.get("results")
    if not isinstance(raw, list):
        return []
    entries: list[FanoutEntry] = []
    for item in raw:
        try:
            entries.append(FanoutEntry.model_validate(item))
        except ValueError:
            continue
    return entries
