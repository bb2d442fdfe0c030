"""Issue 11's proof harness: N orchestrator replicas as processes on one fresh PostgreSQL
database, a round-robin front before them, and instances that count what they execute.

- :class:`Replica` is one ``openclaw orchestrator serve --config FILE`` child with its own
  port, config and log file; ``kill9``, ``sigstop``, ``sigcont`` and ``restart`` (same port,
  same config) are the faults the tests inject.
- :class:`Front` is a small reverse proxy (aiohttp server and client) that sends each
  *request* to the next replica in turn, as nginx's default upstream does. A replica that
  refuses the connection is skipped (``proxy_next_upstream error``, connect errors only); a
  request that reached a replica is never sent again. The request body is read first
  (nginx's ``proxy_request_buffering on``); the response is streamed back with its status
  and headers, plus ``X-Front-Upstream`` (the replica's index). Upstream connections are not
  kept alive (nginx's default), so a killed replica leaves no pooled connection behind.
- :class:`CountingInstance` is the reference instance (fencing v1.2 included) served in the
  test's loop with a handler that counts every completed execution per session (and every
  plain task), records each payload's ``n``, and sleeps ``{"sleep": s}`` seconds when asked.
- :func:`replica_cluster` starts all of it and :class:`ReplicaCluster` drives sessions
  (spawn, send, history, info, close, the instance's own view); :func:`check_session`
  compares a session's sends, history and executions by payload ``n`` (recorded once,
  executed once, every acknowledged send recorded) and :func:`report` prints the numbers.
- :func:`private_postgres` is a PostgreSQL server of one test alone (initdb, own port), for
  restarting under load: the shared server is never restarted.

A test needing PostgreSQL skips when no server answers, and fails in CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from openclaw_orchestrator.devtools.reference.app import create_instance_app
from openclaw_orchestrator.devtools.reference.handlers import HandlerContext, echo
from openclaw_orchestrator.server.hosting import BackgroundServer, bind_socket
from tests.ports import free_port

from ..conftest import IN_CI
from ..storage_faults import postgres_database

__all__ = [
    "API_KEY",
    "CLUSTER_TEST_TIMEOUT",
    "LEASE_TTL",
    "SESSION_SETTINGS",
    "CountingHandler",
    "CountingInstance",
    "Front",
    "PrivatePostgres",
    "Replica",
    "ReplicaCluster",
    "SendOutcome",
    "SessionCheck",
    "assert_consistent",
    "bounded",
    "check_session",
    "counting_instances",
    "private_postgres",
    "replica_cluster",
    "report",
    "until",
]

LEASE_TTL = 1.0
"""The session lease the session tests run with: short, so a dead holder is taken over
within a test."""
SESSION_SETTINGS = {"sessions": {"lease_ttl": LEASE_TTL, "sweep_interval": 0.5}}
"""Every replica's settings in the session tests: that lease, and a sweeper that settles
orphaned positions within a test."""

CLUSTER_TEST_TIMEOUT = 180
"""Seconds for one test of a module that shares a cluster: the last one also stops its
replicas and drops the database, and a timeout there would leave connections open on the
module's event loop."""

API_KEY = "replicas-test-key-0123456789"
T = TypeVar("T")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
FRONT_HEADER = "X-Front-Upstream"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
"""Headers that describe one hop, not the message: never passed through the front."""


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, sections (dicts) merged key by key."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# -- replicas ------------------------------------------------------------------------------


@dataclass
class Replica:
    """One ``serve`` child. Its config file and port stay fixed across :meth:`restart`; the
    log file collects every life's output (``log_text``)."""

    index: int
    port: int
    config: Path
    log: Path
    process: asyncio.subprocess.Process | None = None
    lives: int = 0

    def __repr__(self) -> str:
        return f"<Replica {self.index} :{self.port} pid={self.pid} {self.state}>"

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The current life's process id."""
        return None if self.process is None else self.process.pid

    @property
    def state(self) -> str:
        """``running``, ``exited <rc>`` or ``not started``."""
        if self.process is None:
            return "not started"
        rc = self.process.returncode
        return "running" if rc is None else f"exited {rc}"

    def is_running(self) -> bool:
        """Whether the current life has not exited (a stopped one still counts)."""
        return self.process is not None and self.process.returncode is None

    def log_text(self) -> str:
        """Everything every life of this replica wrote."""
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    async def wait_logged(self, texts: Iterable[str], timeout: float = 10.0) -> set[str]:
        """Which of ``texts`` its log holds, waiting up to ``timeout`` seconds for all of them
        (log lines are written off the request path, a moment after the answer)."""
        wanted = set(texts)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            log = self.log_text()
            found = {text for text in wanted if text in log}
            if found == wanted or loop.time() >= deadline:
                return found
            await asyncio.sleep(0.05)

    async def start(self) -> None:
        """Start a life and wait until ``/api/health/check`` answers 200."""
        openclaw = str(Path(sys.executable).parent / "openclaw")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
        env["ORCHESTRATOR_API_KEY"] = API_KEY
        self.lives += 1
        with self.log.open("ab") as log:
            log.write(f"--- life {self.lives}\n".encode())
            log.flush()
            self.process = await asyncio.create_subprocess_exec(
                openclaw, "orchestrator", "serve", "--config", str(self.config),
                env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        await self._wait_up()

    async def _wait_up(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while loop.time() < deadline:
                if not self.is_running():
                    raise AssertionError(f"replica {self.index} exited: {self.log_text()[-3000:]}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(self.url + "/api/health/check") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise AssertionError(f"replica {self.index} did not come up: {self.log_text()[-3000:]}")

    def _signal(self, signum: int) -> None:
        if not self.is_running():
            raise AssertionError(f"replica {self.index} is not running ({self.state})")
        assert self.process is not None
        self.process.send_signal(signum)

    async def kill9(self) -> None:
        """``kill -9``: no shutdown, no cleanup; returns once the process is gone."""
        self._signal(signal.SIGKILL)
        assert self.process is not None
        await self.process.wait()

    def sigstop(self) -> None:
        """Freeze it (SIGSTOP): its sockets stay open, nothing it holds is released."""
        self._signal(signal.SIGSTOP)

    def sigcont(self) -> None:
        """Let a frozen replica run on (SIGCONT)."""
        self._signal(signal.SIGCONT)

    async def restart(self) -> None:
        """A new life on the same port and config (stopping the current one if it runs)."""
        await self.stop()
        await self.start()

    async def stop(self) -> None:
        """SIGTERM (after a SIGCONT, in case it is frozen), SIGKILL after STOP_TIMEOUT."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


# -- the front -----------------------------------------------------------------------------


class Front:
    """A round-robin reverse proxy over ``upstreams`` (base URLs), one pick per request.

    ``served[i]`` counts requests answered by upstream ``i``, ``refused[i]`` connects it
    refused (the request then went to the next one), ``failed`` requests that reached an
    upstream and got no complete answer (the caller gets 502 ``front_upstream_failed``).
    """

    def __init__(self, upstreams: Sequence[str]) -> None:
        self.upstreams = list(upstreams)
        self.served = [0] * len(self.upstreams)
        self.refused = [0] * len(self.upstreams)
        self.failed = 0
        self.errors: list[str] = []
        self.url = ""
        self._turn = itertools.count()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        counts = f"served={self.served} refused={self.refused} failed={self.failed}"
        return f"<Front {self.url} {counts}>"

    async def start(self) -> str:
        """Listen on a free port of 127.0.0.1; returns the front's URL."""
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = bind_socket("127.0.0.1", 0)
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self.url

    async def aclose(self) -> None:
        """Stop listening and close the upstream client."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    def reset_counts(self) -> None:
        """Zero ``served``, ``refused`` and ``failed``."""
        self.served = [0] * len(self.upstreams)
        self.refused = [0] * len(self.upstreams)
        self.failed = 0
        self.errors.clear()

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        first = next(self._turn)
        for step in range(len(self.upstreams)):
            index = (first + step) % len(self.upstreams)
            target = self.upstreams[index] + request.rel_url.raw_path_qs
            try:
                upstream = await self._upstream(request.method, target, headers, body)
            except aiohttp.ClientConnectorError:
                self.refused[index] += 1
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failed += 1
                self.errors.append(f"upstream {index}: {exc!r}")
                return _front_error(f"upstream {index} failed: {exc!r}")
            return await self._relay(request, upstream, index)
        self.errors.append("every upstream refused the connection")
        return _front_error("every upstream refused the connection")

    async def _upstream(
        self, method: str, url: str, headers: CIMultiDict[str], body: bytes
    ) -> aiohttp.ClientResponse:
        assert self._client is not None
        return await self._client.request(
            method, url, headers=headers, data=body or None, allow_redirects=False
        )

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, index: int
    ) -> web.StreamResponse:
        """Stream ``upstream``'s answer back; a break mid-body aborts the caller's connection
        (it sees a truncated response, never a made-up one)."""
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    response.headers.add(key, value)
            response.headers[FRONT_HEADER] = str(index)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failed += 1
                self.errors.append(f"upstream {index} mid-body: {exc!r}")
                raise
            await response.write_eof()
            self.served[index] += 1
            return response


def _front_error(message: str) -> web.Response:
    body = {"error": {"code": "front_upstream_failed", "message": message}}
    return web.json_response(body, status=502)


# -- instances that count ------------------------------------------------------------------


class CountingHandler:
    """The echo handler, counting: ``executions[session]`` completed runs per session,
    ``executed[session]`` their payloads' ``n`` in order, ``tasks`` plain tasks by ``n``.
    ``{"sleep": s}`` sleeps ``s`` seconds first; ``started`` is set when such a slow one
    begins (so a test can freeze its sender while it runs)."""

    def __init__(self) -> None:
        self.executions: Counter[str] = Counter()
        self.executed: defaultdict[str, list[Any]] = defaultdict(list)
        self.tasks: Counter[Any] = Counter()
        self.started = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"<CountingHandler sessions={len(self.executions)} "
            f"executions={sum(self.executions.values())} tasks={sum(self.tasks.values())}>"
        )

    async def __call__(self, payload: Any, context: HandlerContext) -> Any:
        """Run (sleeping if asked), count, and echo."""
        sleep = payload.get("sleep") if isinstance(payload, dict) else None
        if isinstance(sleep, int | float):
            self.started.set()
            await asyncio.sleep(sleep)
        number = payload.get("n") if isinstance(payload, dict) else None
        if context.session is None:
            self.tasks[number] += 1
        else:
            self.executions[context.session.id] += 1
            self.executed[context.session.id].append(number)
        return await echo(payload, context)


@dataclass
class CountingInstance:
    """A reference instance in this loop, its counting handler and its server."""

    name: str
    handler: CountingHandler
    server: BackgroundServer

    @property
    def url(self) -> str:
        """Its base URL."""
        return self.server.url

    def spec(self) -> dict[str, Any]:
        """Its entry in the replicas' ``instances.static``."""
        return {"name": self.name, "url": self.url, "driver": "worker"}


@contextlib.asynccontextmanager
async def counting_instances(names: Iterable[str]) -> AsyncIterator[list[CountingInstance]]:
    """Counting reference instances named ``names``, on free ports, until the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for name in names:
            handler = CountingHandler()
            server = BackgroundServer(create_instance_app(name, handler))
            await stack.enter_async_context(server)
            started.append(CountingInstance(name, handler, server))
        yield started


# -- the cluster ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SendOutcome:
    """One send's answer: status, the body's ``seq`` (2xx) or error ``code``, the replica."""

    n: int
    status: int
    seq: int | None = None
    code: str | None = None
    upstream: int | None = None

    @property
    def ok(self) -> bool:
        """Acknowledged (2xx)."""
        return 200 <= self.status < 300

    @property
    def label(self) -> str:
        """``"409 conflict"``, ``"200"``: the status and error code, for counting."""
        return f"{self.status} {self.code}" if self.code else str(self.status)


@dataclass
class ReplicaCluster:
    """The running cluster: replicas, front, counting instances and one client session
    (API key set) for the test to drive it with."""

    database_url: str
    replicas: list[Replica]
    front: Front
    instances: list[CountingInstance]
    http: aiohttp.ClientSession
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def headers(self) -> dict[str, str]:
        """The API key header."""
        return {"Authorization": f"Bearer {API_KEY}"}

    def instance(self, name: str) -> CountingInstance:
        """The counting instance called ``name``."""
        return next(i for i in self.instances if i.name == name)

    def executions(self, session_id: str) -> int:
        """Completed executions of ``session_id``'s messages over every instance."""
        return sum(i.handler.executions[session_id] for i in self.instances)

    def executed(self, session_id: str) -> list[Any]:
        """The ``n`` of every execution of ``session_id``'s messages, over every instance."""
        return [n for i in self.instances for n in i.handler.executed[session_id]]

    def next_n(self) -> int:
        """A payload number no other send of this cluster used."""
        return next(self._numbers)

    async def spawn(self, *, instance: str | None = None, via: str | None = None) -> str:
        """Spawn a session (pinned to ``instance`` when given); returns its id."""
        body = {} if instance is None else {"instance": instance}
        url = (via or self.front.url) + "/api/orchestrator/sessions/spawn"
        async with self.http.post(url, json=body, headers=self.headers) as resp:
            reply = await resp.json()
            assert resp.status == 201, reply
            return str(reply["session_id"])

    async def send(
        self,
        session_id: str,
        data: dict[str, Any] | None = None,
        *,
        via: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> SendOutcome:
        """One send through the front (or ``via`` a replica's URL); ``data`` gets a fresh
        ``n`` unless it has one. A connection broken mid-request is status 0."""
        payload = {"n": self.next_n(), **(data or {})}
        url = f"{via or self.front.url}/api/orchestrator/sessions/{session_id}/send"
        request_headers = {**self.headers, **(headers or {})}
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        try:
            async with self.http.post(
                url, json={"data": payload}, headers=request_headers, timeout=client_timeout
            ) as resp:
                body = await resp.json(content_type=None)
                upstream = resp.headers.get(FRONT_HEADER)
                where = None if upstream is None else int(upstream)
                if 200 <= resp.status < 300:
                    return SendOutcome(payload["n"], resp.status, seq=body["seq"], upstream=where)
                code = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
                return SendOutcome(payload["n"], resp.status, code=code, upstream=where)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return SendOutcome(payload["n"], 0, code=type(exc).__name__)

    async def history(self, session_id: str, *, via: str | None = None) -> list[dict[str, Any]]:
        """Every history entry of ``session_id`` (all pages), oldest first."""
        entries: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            url = f"{via or self.front.url}/api/orchestrator/sessions/{session_id}/history"
            params = {"offset": str(offset), "limit": "1000"}
            async with self.http.get(url, params=params, headers=self.headers) as resp:
                page = await resp.json()
                assert resp.status == 200, page
            entries.extend(page["messages"])
            offset = page["next_offset"]
        return entries

    async def info(self, session_id: str, *, via: str | None = None) -> dict[str, Any]:
        """``GET /api/orchestrator/sessions/{id}``."""
        url = f"{via or self.front.url}/api/orchestrator/sessions/{session_id}"
        async with self.http.get(url, headers=self.headers) as resp:
            body: dict[str, Any] = await resp.json()
            assert resp.status == 200, body
            return body

    async def close(self, session_id: str, *, via: str | None = None) -> int:
        """Close ``session_id``; returns the status."""
        url = f"{via or self.front.url}/api/orchestrator/sessions/{session_id}/close"
        async with self.http.post(url, headers=self.headers) as resp:
            await resp.read()
            return resp.status

    async def instance_view(self, instance: str, session_id: str) -> dict[str, Any] | None:
        """The instance's own ``GET /api/instance/sessions/{id}`` (``seen``, ``history``,
        ``epoch``, ``seq``); None when it does not know the session."""
        url = f"{self.instance(instance).url}/api/instance/sessions/{session_id}"
        async with self.http.get(url) as resp:
            if resp.status == 404:
                return None
            body: dict[str, Any] = await resp.json()
            assert resp.status == 200, body
            return body


@dataclass(frozen=True)
class SessionCheck:
    """One session's numbers: what was sent, acknowledged, recorded and executed."""

    session_id: str
    sent: int
    acknowledged: int
    recorded: int
    executed: int
    non_2xx: Counter[str]
    duplicates_recorded: int
    duplicates_executed: int
    acknowledged_missing: int
    executed_not_recorded: int
    recorded_not_executed: int
    seqs_ok: bool

    def problems(self) -> list[str]:
        """Every broken invariant, phrased for the assertion message."""
        found = []
        if self.duplicates_recorded:
            found.append(f"{self.duplicates_recorded} messages recorded twice")
        if self.duplicates_executed:
            found.append(f"{self.duplicates_executed} messages executed twice")
        if self.acknowledged_missing:
            found.append(f"{self.acknowledged_missing} acknowledged sends not in the history")
        if self.executed_not_recorded:
            found.append(f"{self.executed_not_recorded} executions never recorded")
        if self.recorded_not_executed:
            found.append(f"{self.recorded_not_executed} recorded messages never executed")
        if not self.seqs_ok:
            found.append("message seqs are not distinct and increasing")
        return found


async def check_session(
    cluster: ReplicaCluster, session_id: str, outcomes: Sequence[SendOutcome]
) -> SessionCheck:
    """Compare one session's sends with its history and its instance's executions (by
    payload ``n``): recorded once, executed once, every acknowledged send recorded."""
    entries = [e for e in await cluster.history(session_id) if e["kind"] == "message"]
    recorded = Counter(e["data"]["n"] for e in entries)
    executed = Counter(cluster.executed(session_id))
    acked = {o.n for o in outcomes if o.ok}
    seqs = [e["seq"] for e in entries]
    return SessionCheck(
        session_id=session_id,
        sent=len(outcomes),
        acknowledged=len(acked),
        recorded=sum(recorded.values()),
        executed=sum(executed.values()),
        non_2xx=Counter(o.label for o in outcomes if not o.ok),
        duplicates_recorded=sum(1 for c in recorded.values() if c > 1),
        duplicates_executed=sum(1 for c in executed.values() if c > 1),
        acknowledged_missing=len(acked - recorded.keys()),
        executed_not_recorded=len(executed.keys() - recorded.keys()),
        recorded_not_executed=len(recorded.keys() - executed.keys()),
        seqs_ok=seqs == sorted(set(seqs)),
    )


async def bounded(limit: int, jobs: Iterable[Awaitable[T]]) -> list[T]:
    """Await ``jobs`` with at most ``limit`` running at a time; results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(job) for job in jobs)))


def report(title: str, checks: Sequence[SessionCheck], **extra: Any) -> None:
    """Print the totals of ``checks`` on one line (the numbers the issue asks for)."""
    non_2xx: Counter[str] = Counter()
    for check in checks:
        non_2xx.update(check.non_2xx)
    totals = {
        "sessions": len(checks),
        "sent": sum(c.sent for c in checks),
        "acknowledged": sum(c.acknowledged for c in checks),
        "recorded": sum(c.recorded for c in checks),
        "executed": sum(c.executed for c in checks),
        "non_2xx": dict(non_2xx),
        "conflicts_409": sum(n for label, n in non_2xx.items() if label.startswith("409")),
        **extra,
    }
    print(f"\n[{title}] " + " ".join(f"{k}={v}" for k, v in totals.items()))


def assert_consistent(checks: Sequence[SessionCheck]) -> None:
    """Every session: recorded once, executed once, acknowledged sends recorded."""
    broken = {c.session_id: c.problems() for c in checks if c.problems()}
    assert not broken, broken


async def until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait until ``predicate()`` holds; AssertionError naming ``what`` after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def replica_cluster(
    tmp_path: Path,
    *,
    replicas: int = 3,
    instances: Iterable[str] = ("A", "B"),
    settings: Mapping[str, Any] | None = None,
    database_url: str | None = None,
) -> AsyncIterator[ReplicaCluster]:
    """``replicas`` ``serve`` processes on one fresh PostgreSQL database (dropped after; or
    ``database_url`` as given), the counting ``instances`` in their static fleet, and a
    :class:`Front` over the replicas. ``settings`` are merged into every replica's config
    (e.g. ``{"sessions": {"lease_ttl": 1.0}}``)."""
    async with contextlib.AsyncExitStack() as stack:
        if database_url is None:
            database_url = await stack.enter_async_context(postgres_database())
        fleet = await stack.enter_async_context(counting_instances(instances))
        base = {
            "database_url": database_url,
            "log_format": "json",
            "instances": {"static": [i.spec() for i in fleet]},
        }
        config = deep_merge(base, settings or {})
        started = [_replica(tmp_path, index, config) for index in range(replicas)]
        stack.push_async_callback(_stop_all, started)
        await asyncio.gather(*(r.start() for r in started))
        front = Front([r.url for r in started])
        await front.start()
        stack.push_async_callback(front.aclose)
        http = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        yield ReplicaCluster(database_url, started, front, fleet, http)


def _replica(tmp_path: Path, index: int, config: Mapping[str, Any]) -> Replica:
    folder = tmp_path / f"replica{index}"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    path = folder / "orchestrator.json"
    path.write_text(json.dumps({**config, "port": port, "data_dir": str(folder / "data")}))
    return Replica(index, port, path, folder / "orchestrator.log")


async def _stop_all(replicas: Sequence[Replica]) -> None:
    await asyncio.gather(*(r.stop() for r in replicas))


# -- a private PostgreSQL server -----------------------------------------------------------


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of this test alone (``initdb`` in a temporary folder, a free
    port on 127.0.0.1, trust auth): it may be stopped and started, which the shared one
    must never be. Run as user ``postgres`` when the test runs as root (initdb refuses
    root)."""

    bindir: Path
    root: Path
    port: int
    user: str | None

    def __repr__(self) -> str:
        return f"<PrivatePostgres :{self.port} {self.root}>"

    @property
    def url(self) -> str:
        """Its ``postgres`` database, as the replicas' ``database_url``."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log(self) -> Path:
        """The server's own log."""
        return self.root / "postgres.log"

    async def _run(self, *args: str) -> None:
        """Run a server program; its output goes to a file, never a pipe: the postmaster
        that ``pg_ctl start`` leaves behind would hold a pipe open forever."""
        as_user = [] if self.user is None else ["runuser", "-u", self.user, "--"]
        output = self.root / "commands.log"
        with output.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *as_user, str(self.bindir / args[0]), *args[1:],
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            )  # fmt: skip
        if await proc.wait() != 0:
            tail = output.read_text(errors="replace")[-2000:]
            raise AssertionError(f"{' '.join(args)}: exit {proc.returncode}: {tail}")

    async def initdb(self) -> None:
        """Create the cluster's files (no fsync: a test server; a crash stop still recovers
        from its WAL, which the page cache keeps)."""
        data = str(self.root / "data")
        await self._run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                        "--no-sync", "--no-instructions")  # fmt: skip

    async def start(self) -> None:
        """Start it and wait until it takes connections."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=300"
        )
        data = str(self.root / "data")
        await self._run("pg_ctl", "-D", data, "-l", str(self.log), "-o", options, "-w",
                        "-t", "30", "start")  # fmt: skip

    async def stop(self, mode: str = "immediate") -> None:
        """Stop it; ``immediate`` is a crash as far as clients see (no goodbye, open
        transactions lost, WAL recovery at the next start)."""
        await self._run("pg_ctl", "-D", str(self.root / "data"), "-m", mode, "-w", "stop")


@contextlib.asynccontextmanager
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    """A started :class:`PrivatePostgres`, stopped and deleted after; skips (fails in CI)
    where PostgreSQL's server programs are not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        reason = "no PostgreSQL server programs (/usr/lib/postgresql/*/bin/initdb)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    user = "postgres" if os.geteuid() == 0 else None
    root = _server_folder(user)
    try:
        server = PrivatePostgres(Path(found[-1]).parent, root, free_port(), user)
        await server.initdb()
        await server.start()
        try:
            yield server
        finally:
            with contextlib.suppress(AssertionError):
                await server.stop("fast")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _server_folder(user: str | None) -> Path:
    """A fresh folder in the system's temporary directory that ``user`` owns (pytest's
    tmp_path is private to the test's user, so the server could not enter it)."""
    root = Path(tempfile.mkdtemp(prefix="replicas-pg-"))
    root.chmod(0o755)
    if user is not None:
        shutil.chown(root, user, user)
    return root
