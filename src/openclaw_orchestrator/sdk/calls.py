"""The SDK's calls as data: each request built, and each reply read, with no I/O.

Both clients send an :class:`ApiCall` and hand the decoded JSON to its ``parse``; only the
sending differs — :class:`~.client.AsyncClient` over aiohttp, :class:`~.sync_client.Client`
over the stdlib :class:`~.transport.SyncTransport` — as httpx builds a ``Request`` once for
its two clients. The reply side is shared too::

    a non-2xx reply                    -> decode_error: the class named by its JSON ``code``
    a 2xx reply that is not JSON       -> decode_reply: OrchestratorError
    a reply that is not the model      -> parse_reply: OrchestratorError
    one NDJSON line of a fanout stream -> FanoutStreamReader: an entry, the result, its error

The builders' parameters and docstrings are the clients' methods' (:func:`method_like`), and
the session namespace and handle keep their state in :class:`SessionsBase` and
:class:`SessionHandleBase`, so the async and the sync client differ only where they send.

Light on purpose: the CLI's fast path imports it before pydantic is needed (a plain
``health`` map never builds a model), so the wire models load only when a reply is parsed.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeAlias, TypeVar
from urllib.parse import quote

import orjson

from ..__about__ import __version__
from ..errors import (
    InvalidRequestError,
    NotFoundError,
    OrchestratorError,
    SessionClosedError,
    UnauthorizedError,
    error_from_body,
)
from .replies import decode_json, expect_object, parse_reply

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..activity import ActivityPage, InstancesActivity
    from ..models import (
        FailoverMode,
        FanoutEntry,
        FanoutResult,
        HealthDetail,
        HistoryPage,
        InstanceInfo,
        RouteResult,
        RunInfo,
        RunList,
        SendResult,
        SessionInfo,
        SessionState,
        SpawnResult,
        TargetExpr,
    )

__all__ = [
    "DEFAULT_HISTORY_PAGE",
    "DEFAULT_RUN_PAGE",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TIMEOUT_MARGIN",
    "FANOUT_STREAM_DOC",
    "FINISHED_STATES",
    "OUTPUT_STREAM_DOC",
    "RUNS_PATH",
    "RUN_WAIT_SLICE",
    "SESSIONS_PATH",
    "USER_AGENT",
    "ApiCall",
    "FanoutStreamReader",
    "RunKind",
    "RunState",
    "RunsBase",
    "SessionHandleBase",
    "SessionsBase",
    "StreamItem",
    "activity",
    "base_headers",
    "cancel_run",
    "check_token",
    "close_session",
    "decode_error",
    "decode_reply",
    "display_url",
    "fanout",
    "get_run",
    "get_session",
    "health",
    "health_detail",
    "instances",
    "instances_activity",
    "list_runs",
    "liveness",
    "look_at_run",
    "method_like",
    "next_history_offset",
    "os_reason",
    "output_streamed",
    "poll_run",
    "public_info",
    "register",
    "route",
    "run_events",
    "run_path",
    "send_to_session",
    "session_gone_errors",
    "session_history",
    "session_list",
    "session_path",
    "spawn_session",
    "stream_cut",
    "streamed",
    "submit_run",
    "unregister",
    "wait_slices",
]

DEFAULT_TIMEOUT = 60.0
"""Seconds a call without its own ``timeout`` may take (above the server's default of 30 s)."""
DEFAULT_TIMEOUT_MARGIN = 5.0
"""Seconds the client waits beyond a request's own ``timeout`` for the server's answer."""
DEFAULT_HISTORY_PAGE = 100
"""Entries per page of a session's history (the server takes 1 to 1000)."""

DEFAULT_RUN_PAGE = 50
"""Runs per page of ``runs.list`` (the server takes 1 to 500)."""
RUN_WAIT_SLICE = 30.0
"""Seconds of one long poll of ``runs.wait`` (the server allows up to ``runs.max_wait``, 60 s
by default); a longer wait is several polls."""

USER_AGENT = f"openclaw-orchestrator-sdk/{__version__}"
SESSIONS_PATH = "/api/orchestrator/sessions"
RUNS_PATH = "/api/orchestrator/runs"
RunKind: TypeAlias = Literal["route", "fanout", "session_send"]
RunState: TypeAlias = Literal["queued", "running", "succeeded", "failed", "timed_out", "cancelled"]
FINISHED_STATES = frozenset({"succeeded", "failed", "timed_out", "cancelled"})
"""The states a run ends in; ``runs.wait`` returns once the run is in one."""
_USERINFO = re.compile(r"//[^/@]*@")

R = TypeVar("R")
M = TypeVar("M", bound="BaseModel")
F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C")
E = TypeVar("E")
StreamItem: TypeAlias = "FanoutEntry | FanoutResult"


@dataclass(frozen=True, slots=True)
class ApiCall(Generic[R]):
    """One request to the orchestrator and how to read its JSON reply into ``R``.

    ``deadline`` is the server-side one (the client waits :data:`DEFAULT_TIMEOUT_MARGIN`
    longer, so the server's 504 with its partial results arrives first); ``token`` is a
    session token sent instead of the client's API key, for this call only. An
    ``open_ended`` reply (a run's event stream) may last as long as it keeps sending: the
    client's wait bounds each read, not the whole reply.
    """

    method: str
    path: str
    parse: Callable[[Any], R]
    body: Any = None
    params: Mapping[str, str] | None = None
    deadline: float | None = None
    idempotency_key: str | None = None
    token: str | None = None
    accept: str | None = None
    open_ended: bool = False

    def headers(self) -> dict[str, str]:
        """The headers of this call on top of the client's own (see :func:`base_headers`)."""
        headers: dict[str, str] = {}
        if self.accept is not None:
            headers["Accept"] = self.accept
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.idempotency_key is not None:
            headers["Idempotency-Key"] = self.idempotency_key
        return headers

    def wait(self, default: float) -> float:
        """Seconds the client waits for the reply: the deadline plus the margin, or ``default``."""
        return default if self.deadline is None else self.deadline + DEFAULT_TIMEOUT_MARGIN

    def with_token(self, token: str | None) -> ApiCall[R]:
        """This call sending the session ``token`` (when one is given) instead of the API key."""
        return self if token is None else replace(self, token=token)


def method_like(
    method: F, build: Callable[..., Any], doc: str | None = None, *, bound: int = 0
) -> F:
    """``method`` (a client method sending what ``build`` builds) with the builder's name,
    docstring and signature plus ``self``, for ``help()`` and ``inspect``: the parameters of
    both clients are written once, on the builder. A session handle fills in the first
    ``bound`` ones (its session id) itself."""
    signature = inspect.signature(build)
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    parameters = [self_param, *list(signature.parameters.values())[bound:]]
    method.__name__ = method.__qualname__ = build.__name__
    method.__doc__ = doc or build.__doc__
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]  # read by inspect
        parameters=parameters, return_annotation=inspect.Signature.empty
    )
    return method


def base_headers(authorization: str | None) -> dict[str, str]:
    """Headers every call of one client carries; ``authorization`` is a full header value."""
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    return headers


# -- replies -------------------------------------------------------------------------------


def display_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, fit for messages and reprs."""
    return _USERINFO.sub("//", url)


def os_reason(error: OSError) -> str:
    """``Connection refused`` rather than ``Connect call failed ('127.0.0.1', 1)``."""
    if isinstance(error, socket.gaierror) or not error.errno:
        return error.strerror or str(error)
    return os.strerror(error.errno)


def decode_error(status: int, raw: bytes) -> OrchestratorError:
    """The typed error of a non-2xx reply; a body that is not JSON keeps only the status."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        snippet = raw[:200].decode("utf-8", "replace").strip()
        return OrchestratorError(
            f"HTTP {status} from the orchestrator: {snippet or '(empty body)'}",
            upstream_status=status,
        )
    return error_from_body(body, status=status)


def decode_reply(status: int, raw: bytes) -> Any:
    """The JSON of a reply; a non-2xx one raises its typed error."""
    if status >= 400:
        raise decode_error(status, raw)
    return decode_json(raw, _reply_not_json, status)


def _reply_not_json(exc: orjson.JSONDecodeError, status: int) -> OrchestratorError:
    """The error for a 2xx reply with ``status`` whose body is not JSON."""
    return OrchestratorError(
        f"the orchestrator sent a reply that is not JSON: {exc}", upstream_status=status
    )


def _line_not_json(exc: orjson.JSONDecodeError, _: None) -> OrchestratorError:
    """The error for a fanout stream line that is not JSON."""
    return OrchestratorError(f"the fanout stream sent a line that is not JSON: {exc}")


class FanoutStreamReader:
    """Reads the NDJSON body of a streaming fanout: feed it chunks as they arrive, get each
    line as a :class:`FanoutEntry` or the final :class:`FanoutResult`; an ``error`` line
    raises its typed error. Lines have no length limit (unlike ``readline``)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._finished = False

    def feed(self, chunk: bytes) -> Iterator[StreamItem]:
        """The items the lines ``chunk`` completes hold, parsed one by one as you iterate."""
        self._buffer.extend(chunk)
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end]).strip()
            del self._buffer[: end + 1]
            if line:
                yield self._item(line)

    def end(self) -> Iterator[StreamItem]:
        """The last line when the body ended without a newline; raises if no result came."""
        if line := bytes(self._buffer).strip():
            self._buffer.clear()
            yield self._item(line)
        if not self._finished:
            raise OrchestratorError("the fanout stream ended before its result")

    def _item(self, line: bytes) -> StreamItem:
        from ..models import FanoutEntry, FanoutResult

        event = decode_json(line, _line_not_json, None)
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "entry":
            return parse_reply(FanoutEntry, event.get("entry"))
        if kind == "result":
            result = parse_reply(FanoutResult, event.get("result"))
            self._finished = True
            return result
        if kind == "error":
            raise error_from_body({"error": event.get("error")}, status=200)
        raise OrchestratorError(f"the fanout stream sent an unknown line type {kind!r}")


def next_history_offset(page: HistoryPage, offset: int) -> int | None:
    """Where the next history page starts (None at the end); a page must move forward."""
    if page.next_offset is not None and page.next_offset <= offset:
        raise OrchestratorError("the orchestrator sent a history page that does not advance")
    return page.next_offset


# -- tasks ---------------------------------------------------------------------------------
# The builders' signatures and docstrings are the clients' methods' (see method_like).


def route(
    payload: Any = None,
    *,
    instances: TargetExpr | None = None,
    timeout: float | str | None = None,
    retry: int | None = None,
    policy: str | None = None,
    idempotency_key: str | None = None,
    attempt_timeout: float | str | None = None,
) -> ApiCall[RouteResult]:
    """Run ``payload`` on one healthy instance among ``instances``, failing over on errors.

    ``timeout`` is the server-side deadline; ``attempt_timeout`` caps each attempt, so that
    a candidate that hangs is given up in time to try the next one within ``timeout``."""
    from ..models import RouteResult

    deadline = _seconds(timeout, "timeout")
    body = _body(
        instances=instances,
        payload={} if payload is None else payload,
        timeout=deadline,
        attempt_timeout=_seconds(attempt_timeout, "attempt_timeout"),
        retry=retry,
        policy=policy,
    )
    return ApiCall(
        "POST",
        "/api/orchestrator/route",
        _reads(RouteResult),
        body=body,
        deadline=deadline,
        idempotency_key=idempotency_key,
    )


def fanout(
    payload: Any = None,
    *,
    targets: TargetExpr = "all",
    aggregate: bool | str = True,
    timeout: float | str | None = None,
    min_success: int | None = None,
    quorum: int | None = None,
    top_k: int | None = None,
    retry: int | None = None,
    idempotency_key: str | None = None,
    attempt_timeout: float | str | None = None,
) -> ApiCall[FanoutResult]:
    """Run ``payload`` on every target and aggregate the results (``attempt_timeout``:
    see ``route``; with ``retry`` it leaves time for a target's retry).

    Raises :class:`~.errors.TimeoutExceededError` when ``min_success`` is not met; its
    ``details["results"]`` holds the entries that did arrive.
    """
    from ..models import FanoutResult

    deadline = _seconds(timeout, "timeout")
    body = _body(
        targets=targets,
        payload={} if payload is None else payload,
        aggregate=aggregate,
        timeout=deadline,
        attempt_timeout=_seconds(attempt_timeout, "attempt_timeout"),
        min_success=min_success,
        quorum=quorum,
        top_k=top_k,
        retry=retry,
    )
    return ApiCall(
        "POST",
        "/api/orchestrator/fanout",
        _reads(FanoutResult),
        body=body,
        deadline=deadline,
        idempotency_key=idempotency_key,
    )


FANOUT_STREAM_DOC = """Like ``fanout``, but yield each :class:`FanoutEntry` as it arrives, then the
final :class:`FanoutResult`; an unmet ``min_success`` raises after the entries."""


OUTPUT_STREAM_DOC = """Like ``{name}``, but yield the instance's output as it is produced: a
:class:`~openclaw_orchestrator.sdk.events.Delta` per piece (``.text`` for text output), then
the final :class:`{result}`. A failure raises its typed error, as ``{name}`` does: before
anything streamed with failover as usual; once output has streamed, without a retry."""


def output_streamed(call: ApiCall[R]) -> ApiCall[R]:
    """``call`` (a :func:`route` or :func:`send_to_session`) asking for server-sent events:
    its reply is read with an :class:`~.events.OutputStreamReader` around ``parse``. Each
    read is bounded by the call's wait (the server's pings keep a quiet stream alive)."""
    return replace(
        call, body={**call.body, "stream": True}, accept="text/event-stream", open_ended=True
    )


def streamed(call: ApiCall[FanoutResult]) -> ApiCall[FanoutResult]:
    """``call`` (a :func:`fanout`) asking for NDJSON: its reply is read line by line with a
    :class:`FanoutStreamReader` instead of ``parse``."""
    return replace(call, body={**call.body, "stream": True})


# -- health and cluster --------------------------------------------------------------------


def health(instances: TargetExpr | None = None) -> ApiCall[dict[str, str]]:
    """Each instance's state: ``{"A": "healthy", "B": "down", ...}``."""
    return ApiCall("GET", "/api/orchestrator/health", _states, params=_health_params(instances))


def health_detail(instances: TargetExpr | None = None) -> ApiCall[dict[str, HealthDetail]]:
    """Each instance's state with latency, last check, failures in a row and last error."""
    params = {**_health_params(instances), "detail": "true"}
    return ApiCall("GET", "/api/orchestrator/health", _health_details, params=params)


def activity(*, limit: int = 50, before: int | None = None) -> ApiCall[ActivityPage]:
    """Recent routes, fanouts and health changes, newest first; pass the page's
    ``next_before`` as ``before`` for the older ones."""
    from ..activity import ActivityPage

    params = {"limit": str(limit), **({} if before is None else {"before": str(before)})}
    return ApiCall("GET", "/api/orchestrator/activity", _reads(ActivityPage), params=params)


def instances_activity() -> ApiCall[InstancesActivity]:
    """Every instance now: state and reason, probe latency, in-flight calls, when a down one
    is next probed, and its recent health changes (what ``top`` shows)."""
    from ..activity import InstancesActivity

    path = "/api/orchestrator/activity/instances"
    return ApiCall("GET", path, _reads(InstancesActivity))


def liveness() -> ApiCall[dict[str, Any]]:
    """``GET /api/health/check``: the orchestrator's own status, version and counts."""
    return ApiCall("GET", "/api/health/check", _liveness)


def register(
    name: str,
    url: str,
    *,
    driver: str = "worker",
    weight: float = 1.0,
    tags: tuple[str, ...] | list[str] = (),
    credentials: str | None = None,
    health_path: str | None = None,
    heartbeat_ttl: float | str | None = None,
) -> ApiCall[InstanceInfo]:
    """Register (or heartbeat) instance ``name`` at ``url``; ``credentials`` is the bearer
    token the orchestrator will send it, and is never echoed back."""
    from ..models import InstanceInfo

    body = _body(
        name=name,
        url=url,
        driver=driver,
        weight=weight,
        tags=list(tags),
        credentials=credentials,
        health_path=health_path,
        heartbeat_ttl=_seconds(heartbeat_ttl, "heartbeat_ttl"),
    )
    return ApiCall("POST", "/api/cluster/register", _reads(InstanceInfo), body=body)


def instances() -> ApiCall[list[InstanceInfo]]:
    """Every known instance, configured or registered, with its live state."""
    return ApiCall("GET", "/api/cluster/instances", _instance_list)


def unregister(name: str) -> ApiCall[None]:
    """Remove instance ``name``; :class:`~.errors.NotFoundError` when it is unknown."""
    return ApiCall("DELETE", f"/api/cluster/instances/{quote(name, safe='')}", _nothing)


# -- sessions (a handle adds its token: ApiCall.with_token) --------------------------------


def spawn_session(
    session_id: str | None = None,
    *,
    instance: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    ttl: float | str | None = None,
    failover: FailoverMode = "none",
    policy: str | None = None,
) -> ApiCall[SpawnResult]:
    """Create a session (id generated when None) and return its handle, holding the token
    the server shows this once; :class:`~.errors.SessionExistsError` if the id is taken."""
    from ..models import SpawnResult

    if session_id is not None:
        session_path(session_id)
    body = _body(
        sessionId=session_id,
        instance=instance,
        metadata=None if metadata is None else dict(metadata),
        ttl=_seconds(ttl, "ttl"),
        failover=failover,
        policy=policy,
    )
    return ApiCall("POST", f"{SESSIONS_PATH}/spawn", _reads(SpawnResult), body=body)


def send_to_session(
    session_id: str,
    data: Any = None,
    *,
    timeout: float | str | None = None,  # server-side deadline
    idempotency_key: str | None = None,
) -> ApiCall[SendResult]:
    """Deliver ``data`` (``None`` sends ``{}``) to the session's instance, in order; the
    reply comes back once it is durably recorded."""
    from ..models import SendResult

    deadline = _seconds(timeout, "timeout")
    return ApiCall(
        "POST",
        session_path(session_id, "send"),
        _reads(SendResult),
        body=_body(data={} if data is None else data, timeout=deadline),
        deadline=deadline,
        idempotency_key=idempotency_key,
    )


def session_history(
    session_id: str, *, offset: int = 0, limit: int = DEFAULT_HISTORY_PAGE
) -> ApiCall[HistoryPage]:
    """One page of the session's history, oldest first; ``next_offset`` is None at the end."""
    from ..models import HistoryPage

    params = {"offset": str(offset), "limit": str(limit)}
    path = session_path(session_id, "history")
    return ApiCall("GET", path, _reads(HistoryPage), params=params)


def session_list(
    *,
    instance: str | None = None,
    state: SessionState | None = None,
    active_within: float | None = None,  # minutes
) -> ApiCall[list[SessionInfo]]:
    """Sessions, filtered by instance, state and activity within the last N minutes."""
    params = _body(
        instance=instance,
        state=state,
        active_within=None if active_within is None else f"{active_within:g}",
    )
    return ApiCall("GET", SESSIONS_PATH, _session_infos, params=params)


def get_session(session_id: str) -> ApiCall[SessionInfo]:
    """One session's state; :class:`~.errors.NotFoundError` when it is unknown."""
    from ..models import SessionInfo

    return ApiCall("GET", session_path(session_id), _reads(SessionInfo))


def close_session(session_id: str) -> ApiCall[SessionInfo]:
    """Close the session (after any send in flight); closing it again is harmless."""
    from ..models import SessionInfo

    return ApiCall("POST", session_path(session_id, "close"), _reads(SessionInfo))


class SessionsBase(Generic[C]):
    """What both clients' ``client.sessions`` hold: how to send a call (``C``: the client's
    caller, sync or async) and the URL, for the repr."""

    def __init__(self, call: C, url: str) -> None:
        self._call = call
        self._url = url

    def __repr__(self) -> str:
        return f"<{type(self).__name__} url={display_url(self._url)!r}>"


class SessionHandleBase(Generic[C]):
    """What both clients' session handles hold: how to send a call, the session id, the
    session token (None for a handle that uses the API key; never in the repr), and
    ``info``, the last :class:`SessionInfo` seen, without the token."""

    def __init__(
        self,
        call: C,
        session_id: str,
        *,
        token: str | None = None,
        info: SessionInfo | None = None,
    ) -> None:
        self._call = call
        self._id = session_id
        self._token = token
        self.info = None if info is None else public_info(info)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self._id!r}>"

    @property
    def id(self) -> str:
        """The session id."""
        return self._id

    @property
    def token(self) -> str | None:
        """The session token, or None when this handle uses the client's API key."""
        return self._token

    @property
    def is_closed(self) -> bool:
        """Whether the last state seen is ``closed`` or ``expired``."""
        return self.info is not None and self.info.state != "open"

    def _gone_errors(self) -> tuple[type[OrchestratorError], ...]:
        """What closing this session on exit may raise when it is already closed or gone."""
        return session_gone_errors(self._token)


def session_path(session_id: str, *suffix: str) -> str:
    """``/api/orchestrator/sessions/<id>[/suffix]``; an id the server would refuse fails here."""
    if not isinstance(session_id, str) or not _session_id_pattern().match(session_id):
        raise InvalidRequestError(
            f"session_id: {session_id!r} is not a session id (letters, digits, '._:-', "
            "starting with a letter or digit, at most 128)",
            field="session_id",
        )
    return "/".join((SESSIONS_PATH, session_id, *suffix))


def check_token(token: str | None) -> str | None:
    """A usable bearer value or None; the message never repeats the token."""
    if token is not None and (
        not isinstance(token, str) or not token or not token.isprintable() or " " in token
    ):
        raise ValueError("a session token must be a non-empty string without spaces")
    return token


def session_gone_errors(token: str | None) -> tuple[type[OrchestratorError], ...]:
    """What closing an already closed or gone session raises (a handle's ``with`` ignores
    them); a token stops granting anything once its session is closed or expired (401)."""
    gone: tuple[type[OrchestratorError], ...] = (SessionClosedError, NotFoundError)
    return gone if token is None else (*gone, UnauthorizedError)


def public_info(info: SessionInfo) -> SessionInfo:
    """``info`` without the token a :class:`SpawnResult` carries (so its repr can be shown)."""
    from ..models import SessionInfo, SpawnResult

    if isinstance(info, SpawnResult):
        return SessionInfo.model_validate(info.model_dump(exclude={"token"}))
    return info


# -- durable runs --------------------------------------------------------------------------


def submit_run(
    kind: RunKind, *, idempotency_key: str | None = None, **fields: Any
) -> ApiCall[RunInfo]:
    """Store a ``route``, ``fanout`` or ``session_send`` to run in the background and return
    it at once (``queued``). ``fields`` are that endpoint's body (``instances=``,
    ``payload=``, ``timeout="60s"``, ...; ``session_id=`` for ``sessionId``); ``timeout`` is
    the run's whole deadline. The same ``idempotency_key`` again returns the first run."""
    from ..models import RunInfo

    if "session_id" in fields:
        fields["sessionId"] = fields.pop("session_id")
    for name in ("timeout", "attempt_timeout"):
        fields[name] = _seconds(fields.get(name), name)
    body = {"kind": kind, **_body(**fields)}
    return ApiCall("POST", RUNS_PATH, _reads(RunInfo), body=body, idempotency_key=idempotency_key)


def get_run(run_id: str) -> ApiCall[RunInfo]:
    """The run as it stands; :class:`~.errors.NotFoundError` when it is unknown."""
    from ..models import RunInfo

    return ApiCall("GET", run_path(run_id), _reads(RunInfo))


def poll_run(run_id: str, wait: float) -> ApiCall[RunInfo]:
    """One long poll: the run once it has ended or after ``wait`` seconds, as it is then."""
    from ..models import RunInfo

    params = {"wait": f"{wait:.3f}s"}
    return ApiCall("GET", run_path(run_id), _reads(RunInfo), params=params, deadline=wait)


def list_runs(
    *,
    state: RunState | None = None,
    kind: RunKind | None = None,
    limit: int = DEFAULT_RUN_PAGE,
    cursor: str | None = None,
) -> ApiCall[RunList]:
    """One page of runs, newest first; pass its ``next`` as ``cursor`` for the next page."""
    from ..models import RunList

    params = _body(state=state, kind=kind, limit=str(limit), cursor=cursor)
    return ApiCall("GET", RUNS_PATH, _reads(RunList), params=params)


def cancel_run(run_id: str) -> ApiCall[RunInfo]:
    """Stop the run (a queued one at once, a running one within about a second); a
    finished run is returned as it is."""
    from ..models import RunInfo

    return ApiCall("POST", run_path(run_id, "cancel"), _reads(RunInfo))


def run_events(run_id: str, after: int | None = None) -> ApiCall[None]:
    """The run's event stream from after event ``after`` (from the first when None); it is
    read with an :class:`~.events.SseParser`, not ``parse``."""
    params = None if after is None else {"after": str(after)}
    path = run_path(run_id, "events")
    return ApiCall(
        "GET", path, _nothing, params=params, accept="text/event-stream", open_ended=True
    )


def run_path(run_id: str, *suffix: str) -> str:
    """``/api/orchestrator/runs/<id>[/suffix]``; an id the server would refuse fails here."""
    if not isinstance(run_id, str) or not _run_id_pattern().match(run_id):
        raise InvalidRequestError(
            f"run_id: {run_id!r} is not a run id (letters, digits, '_' and '-')",
            field="run_id",
        )
    return "/".join((RUNS_PATH, run_id, *suffix))


def wait_slices(
    timeout: float | str | None, clock: Callable[[], float] = time.monotonic
) -> Iterator[float]:
    """The ``wait`` of each long poll of ``runs.wait``: :data:`RUN_WAIT_SLICE` at most, the
    last one cut to what is left of ``timeout`` (None: until the run ends). Always at least
    one poll; a slice of 0 is a plain look."""
    if isinstance(timeout, str):
        timeout = _seconds(timeout, "timeout")
    end = None if timeout is None else clock() + max(0.0, timeout)
    while True:
        left = RUN_WAIT_SLICE if end is None else min(RUN_WAIT_SLICE, max(0.0, end - clock()))
        yield left
        if end is not None and clock() >= end:
            return


def look_at_run(run_id: str, wait: float) -> ApiCall[RunInfo]:
    """A poll of ``wait`` seconds, or a plain look when none is left (the server takes no
    ``wait`` of 0)."""
    return poll_run(run_id, wait) if wait >= 0.001 else get_run(run_id)


def stream_cut(last_id: int | None) -> OrchestratorError:
    """The error for a run's event stream that ended before its ``result`` event (a dropped
    connection): resume with ``after=last_id``."""
    after = "before any event" if last_id is None else f"after event {last_id}"
    return OrchestratorError(
        f"the run's event stream ended {after}, before its result; resume with after="
        f"{last_id or 0}",
        details={"last_event_id": last_id},
    )


class RunsBase(Generic[C, E]):
    """What both clients' ``client.runs`` hold: how to send a call (``C``: the client's
    caller, sync or async), how to read a run's event stream (``E``), and the URL, for the
    repr."""

    def __init__(self, call: C, events: E, url: str) -> None:
        self._call = call
        self._events = events
        self._url = url

    def __repr__(self) -> str:
        return f"<{type(self).__name__} url={display_url(self._url)!r}>"


# -- building blocks -----------------------------------------------------------------------


def _seconds(value: float | str | None, field: str) -> float | None:
    """Parse ``10``/``"10s"``/``"500ms"`` before sending, so a typo fails without a round trip."""
    if value is None:
        return None
    from ..domain.duration import parse_duration

    return parse_duration(value, field=field)


def _body(**fields: Any) -> dict[str, Any]:
    """A request body (or query) without the fields left at ``None`` (server defaults apply)."""
    return {key: value for key, value in fields.items() if value is not None}


def _health_params(instances: TargetExpr | None) -> dict[str, str]:
    """A target expression as one query value: list tokens joined with commas."""
    if instances is None:
        return {}
    return {"instances": instances if isinstance(instances, str) else ",".join(instances)}


@functools.cache
def _session_id_pattern() -> re.Pattern[str]:
    """The server's session id rule, compiled on first use (the models load with it)."""
    from ..models import SESSION_ID_PATTERN

    return re.compile(SESSION_ID_PATTERN)


@functools.cache
def _run_id_pattern() -> re.Pattern[str]:
    """The server's run id rule, compiled on first use (off the fast path's imports)."""
    from ..domain.runs import MAX_RUN_ID

    return re.compile(rf"^[A-Za-z0-9_-]{{1,{MAX_RUN_ID}}}$")


# Reply readers that need no model (``health`` stays free of pydantic).


def _reads(model: type[M]) -> Callable[[Any], M]:
    """The parser of a reply that is one ``model``."""
    return functools.partial(parse_reply, model)


def _nothing(data: Any) -> None:
    return None


def _states(data: Any) -> dict[str, str]:
    states = expect_object(data, "/api/orchestrator/health")
    return {str(name): str(state) for name, state in states.items()}


def _health_details(data: Any) -> dict[str, HealthDetail]:
    from ..models import HealthDetail

    states = expect_object(data, "/api/orchestrator/health")
    return {str(name): parse_reply(HealthDetail, value) for name, value in states.items()}


def _liveness(data: Any) -> dict[str, Any]:
    return expect_object(data, "/api/health/check")


def _instance_list(data: Any) -> list[InstanceInfo]:
    from ..models import InstanceInfo

    items = expect_object(data, "/api/cluster/instances").get("instances")
    if not isinstance(items, list):
        raise OrchestratorError("the orchestrator sent an instance list without 'instances'")
    return [parse_reply(InstanceInfo, item) for item in items]


def _session_infos(data: Any) -> list[SessionInfo]:
    from ..models import SessionList

    return parse_reply(SessionList, data).sessions
