"""Scenario 7, the streaming relay (issue 12): per-chunk latency of 100 concurrent streams
read from the reference instances directly and through the orchestrator's route.

Each stream is the reference ``stream`` handler with ``"stamp": true``: every delta carries
``t``, the ``time.time()`` the instance emitted it at. A chunk's latency is its arrival at
the reader's socket minus ``t`` (one machine, one clock): the kernel stamps each read with
when its bytes were queued at the socket (``SO_TIMESTAMPNS``), so what the relay adds on
its way is measured up to the client's socket, and the reader's own wait for a core (on
two cores shared with the instances and, on one side, the orchestrator) is not counted as
the relay's. The time the reader's loop got to each chunk is kept too (``loop_p50_ms``,
``loop_p99_ms`` and their ``added_loop_…``): the latency as a client on this machine saw it.

The reader is not aiohttp: each of the 100 streams is a bare non-blocking socket on one
keep-alive connection, read with ``recvmsg`` from the loop's reader callback, that only
stamps each read and keeps its bytes; the events are parsed once the stream has ended. So
the reader's own work per chunk is a few microseconds (the rest of its cost is the kernel's
read) and it adds no queue of its own to the tail.

Streams start staggered over one stream's length and run back to back (closed loop), so
stream starts and ends are spread evenly in time, as independent users' would be; started
together, all 100 would start, emit and end in the same milliseconds every time, a burst
no real load makes. Only chunks emitted while all 100 run are counted. The sides' phases
alternate (direct, nginx when it is installed, orchestrator), so a busy minute on the
shared machine falls on all of them. nginx is the floor for one more hop: a relay in C
with nothing to decide, unbuffered, one worker like the orchestrator's one process.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import itertools
import re
import shutil
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from .load import percentile
from .procs import (
    API_KEY,
    Proc,
    start_instance,
    start_nginx_routes,
    start_orchestrator,
    stopping,
)
from .scenarios import QUIET_HEALTH, Row, Sizes

__all__ = ["streaming_relay"]

STREAMS = 100
CHUNKS = 50
DELAY_MS = 20
"""Between two chunks of one stream: 50 chunks/s, a fast language model's tokens; the
target's pace (5,000 chunks/s in all)."""
SLOW_DELAY_MS = 100
"""A full run's second pace: 10 chunks/s a stream, 1,000 in all."""
PIECE = "token "
BURST_GAP_S = 100e-6
"""Chunks emitted closer together than this are one burst (:func:`_burst_sizes`)."""
_STAMP = re.compile(rb'"t":([0-9.eE+-]+)\}')
_CHUNKED_END = b"\r\n0\r\n\r\n"
_SO_TIMESTAMPNS = 35
"""Linux's ``SO_TIMESTAMPNS`` (the control message's type too; the socket module has no
name for it): each ``recvmsg`` says when its bytes reached the socket, in
``time.time()``'s clock."""
_ANCILLARY_BYTES = socket.CMSG_SPACE(16)
_READ_BYTES = 16 * 1024
"""Bytes a read takes at most (a chunk is ~100; more waits for the next wake-up). Python
allocates this much for every read: at 256 KiB (past malloc's mmap threshold) each read cost
an mmap and munmap."""


@dataclass(frozen=True, slots=True)
class Read:
    """One stream as it arrived: every read's bytes, the time the kernel queued them at
    the reader's socket and the ``time.time()`` the reader's loop read them, and its
    status."""

    status: int
    blocks: list[bytes]
    arrivals: list[float]
    times: list[float]

    def chunks(self) -> list[tuple[float, float, float]]:
        """Per stamped chunk: its emit time and two latencies, of the read that holds the
        end of its stamp: its arrival at the reader's socket, and when the reader's loop
        read it, each minus the emit time."""
        ends, total = [], 0
        for block in self.blocks:
            total += len(block)
            ends.append(total)
        body = b"".join(self.blocks)
        out = []
        for match in _STAMP.finditer(body):
            emitted = float(match[1])
            read = bisect.bisect_left(ends, match.end())
            out.append((emitted, self.arrivals[read] - emitted, self.times[read] - emitted))
        return out


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """The kernel's receive time (``SCM_TIMESTAMPNS``) of a ``recvmsg``, if it gave one."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack_from("qq", data)
            return float(seconds + nanoseconds / 1e9)
    return None


class _Reader:
    """One keep-alive HTTP/1.1 connection; :meth:`fetch` sends a request and gathers its
    reply's reads until the reply ends (chunked end, or its Content-Length).

    Read with ``recvmsg`` on a socket with ``SO_TIMESTAMPNS``: each read carries the time
    the kernel queued its newest bytes at this socket, when the relay (or the instance)
    had delivered them, besides the time this loop got to them, which is also how long
    this process waited for a core."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._sock = sock
        self._loop = loop
        self._done: asyncio.Future[Read] | None = None
        self._blocks: list[bytes] = []
        self._arrivals: list[float] = []
        self._times: list[float] = []
        self._head: bytes | None = None
        self._size = 0
        self._length: int | None = None
        self.is_closed = False
        loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    async def open(cls, host: str, port: int) -> _Reader:
        """A connected reader (``TCP_NODELAY``, kernel receive times on)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        try:
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock, loop)

    async def fetch(self, request: bytes) -> Read:
        self._done = self._loop.create_future()
        self._blocks, self._arrivals, self._times = [], [], []
        self._head, self._size = None, 0
        try:
            sent = self._sock.send(request)
        except OSError:
            self._lost()
            return await self._done
        if sent < len(request):
            await self._loop.sock_sendall(self._sock, request[sent:])
        return await self._done

    def _readable(self) -> None:
        """One ``recvmsg`` a wake-up (the loop calls again while bytes are left)."""
        try:
            data, ancillary, _, _ = self._sock.recvmsg(_READ_BYTES, _ANCILLARY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost()
            return
        if not data:
            self._lost()
            return
        now = time.time()
        arrival = _arrival(ancillary)
        self._arrivals.append(now if arrival is None else arrival)
        self._times.append(now)
        self._blocks.append(data)
        self._size += len(data)
        if self._head is None:
            self._parse_head()
        if self._head is not None and self._is_complete(data):
            assert self._done is not None
            status = int(self._head.split(b" ", 2)[1])
            self._done.set_result(Read(status, self._blocks, self._arrivals, self._times))

    def _lost(self) -> None:
        """The connection closed (or broke): a reply under way fails."""
        self.close()
        if self._done is not None and not self._done.done():
            self._done.set_exception(_Lost(not self._blocks))

    def _parse_head(self) -> None:
        joined = b"".join(self._blocks)
        end = joined.find(b"\r\n\r\n")
        if end < 0:
            return
        self._head = joined[:end].lower()
        found = re.search(rb"\r\ncontent-length: *(\d+)", self._head)
        self._length = None if found is None else end + 4 + int(found[1])

    def _is_complete(self, data: bytes) -> bool:
        if self._length is not None:
            return self._size >= self._length
        tail = data if len(data) >= len(_CHUNKED_END) else b"".join(self._blocks)[-16:]
        return tail.endswith(_CHUNKED_END)

    def close(self) -> None:
        if not self.is_closed:
            self.is_closed = True
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


class _Lost(ConnectionError):
    """The connection closed before the reply ended (``unanswered``: before any byte)."""

    def __init__(self, unanswered: bool) -> None:
        super().__init__("connection lost")
        self.unanswered = unanswered


class Connection:
    """A :class:`_Reader` to ``url``, opened again when the server closed it while idle
    (uvicorn closes keep-alive connections after 5 s, as between two phases)."""

    def __init__(self, url: str) -> None:
        self._host, _, port = urlsplit(url).netloc.partition(":")
        self._port = int(port)
        self._reader: _Reader | None = None

    async def fetch(self, request: bytes) -> Read:
        """The reply to ``request``; sent once more on a new connection when the old one
        turns out closed before any reply came (the server's idle close raced it)."""
        try:
            return await (await self._open()).fetch(request)
        except _Lost as exc:
            if not exc.unanswered:
                raise
        return await (await self._open()).fetch(request)

    async def _open(self) -> _Reader:
        """The open connection, or a new one."""
        if self._reader is None or self._reader.is_closed:
            self._reader = await _Reader.open(self._host, self._port)
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


@dataclass(frozen=True, slots=True)
class Pace:
    """How fast every stream's chunks come, and how long each side is measured at it."""

    delay_ms: int
    rounds: int
    per_reader: int

    @property
    def stream_s(self) -> float:
        """How long one stream takes at the instance."""
        return (CHUNKS - 1) * self.delay_ms / 1000

    @property
    def chunks_per_s(self) -> int:
        """All the streams together."""
        return STREAMS * 1000 // self.delay_ms


def _paces(sizes: Sizes) -> list[Pace]:
    """The target's pace (first), and in a full run a slower one beside it."""
    if sizes.quick:
        return [Pace(DELAY_MS, rounds=1, per_reader=1)]
    return [Pace(DELAY_MS, rounds=3, per_reader=3), Pace(SLOW_DELAY_MS, rounds=1, per_reader=1)]


@dataclass(frozen=True, slots=True)
class Side:
    """One way to read the streams: stream ``i``'s connection URL and request bytes, and
    the processes whose CPU it costs."""

    name: str
    urls: list[str]
    requests: list[bytes]
    procs: list[Proc]


def _request(url: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    host = urlsplit(url).netloc
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _sides(instances: list[Proc], orch: Proc, pace: Pace, nginx: Proc | None) -> list[Side]:
    """Stream ``i`` goes to instance ``i % n``: directly, through nginx (when it is
    installed: ``/S0/`` goes to S0) or routed there by name by the orchestrator."""
    accept = {"Accept": "text/event-stream", "Content-Type": "application/json"}
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    payload = {"text": PIECE * CHUNKS, "chunks": CHUNKS, "delay_ms": pace.delay_ms, "stamp": True}
    targets = [instances[i % len(instances)] for i in range(STREAMS)]
    task = orjson.dumps({"payload": payload})
    direct = [_request(t.url, "/api/instance/task", task, accept) for t in targets]
    routed = [
        _request(
            orch.url,
            "/api/orchestrator/route",
            orjson.dumps({"instances": [t.name], "payload": payload, "stream": True}),
            auth,
        )
        for t in targets
    ]
    sides = [Side("direct", [t.url for t in targets], direct, instances)]
    if nginx is not None:
        proxied = [
            _request(nginx.url, f"/{t.name}/api/instance/task", task, accept) for t in targets
        ]
        sides.append(Side("nginx", [nginx.url] * STREAMS, proxied, [nginx]))
    sides.append(Side("orchestrator", [orch.url] * STREAMS, routed, [orch]))
    return sides


@dataclass
class Tally:
    """What one side saw at one pace: the latencies of the chunks emitted while all the
    streams ran (not in a phase's ramp up or down), and the CPU all its chunks cost."""

    latencies: list[float] = field(default_factory=list)
    loop_latencies: list[float] = field(default_factory=list)
    emitted: list[float] = field(default_factory=list)
    chunks: int = 0
    steady_s: float = 0.0
    streams: int = 0
    errors: int = 0
    cpu_s: float = 0.0
    reader_cpu_s: float = 0.0


async def _phase(
    readers: list[Connection], side: Side, pace: Pace, per_reader: int, tally: Tally
) -> None:
    """Every reader streams ``per_reader + 1`` times back to back, reader ``i`` starting
    ``i / n`` of a stream's length after the first (so stream starts and ends are spread
    evenly in time); only the chunks emitted once every reader is going and before the
    first one is done are kept, when all ``n`` streams are under way."""
    spread = pace.stream_s / len(readers)
    read: list[tuple[float, float, float]] = []
    first_done: list[float] = []

    async def one(i: int) -> None:
        await asyncio.sleep(i * spread)
        for _ in range(per_reader + 1):
            reply = await readers[i].fetch(side.requests[i])
            chunks = reply.chunks()
            tally.streams += 1
            tally.errors += reply.status != 200 or len(chunks) != CHUNKS
            read.extend(chunks)
        first_done.append(time.time())

    started, cpu, reader_cpu = time.time(), _cpu(side), time.process_time()
    await asyncio.gather(*(one(i) for i in range(len(readers))))
    tally.cpu_s += _cpu(side) - cpu
    tally.reader_cpu_s += time.process_time() - reader_cpu
    steady = (started + pace.stream_s, min(first_done))
    kept = [chunk for chunk in read if steady[0] <= chunk[0] <= steady[1]]
    tally.emitted.extend(emitted for emitted, _, _ in kept)
    tally.latencies.extend(arrived for _, arrived, _ in kept)
    tally.loop_latencies.extend(seen for _, _, seen in kept)
    tally.chunks += len(read)
    tally.steady_s += max(0.0, steady[1] - steady[0])


def _burst_sizes(emitted: list[float], gap: float = BURST_GAP_S) -> list[int]:
    """How many chunks each burst of the offered load holds: chunks emitted (by any
    instance) less than ``gap`` after the one before are in its burst. At 5,000 chunks/s
    spread at random (Poisson) 99 % of bursts hold at most 5; timers that tick in whole
    milliseconds make more, and a relay's per-chunk CPU times a burst's size is a wait."""
    times = sorted(emitted)
    sizes, size = [], 1
    for before, after in itertools.pairwise(times):
        if after - before < gap:
            size += 1
        else:
            sizes.append(size)
            size = 1
    return [*sizes, size] if times else []


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection in this process while a phase runs (a full collection
    first, the next after it): the reader holds every chunk's bytes and timings, so its
    full collections grew to 20-70 ms, and a reader that stops reading stamps every chunk
    that arrives meanwhile late, a stall the relay never made (it fell on whichever side
    was running). A phase makes few reference cycles; they wait for the next phase."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _cpu(side: Side) -> float:
    return sum(p.cpu() for p in side.procs)


async def _measure(
    instances: list[Proc], orch: Proc, nginx: Proc | None, paces: list[Pace]
) -> list[tuple[Pace, dict[str, Tally]]]:
    """Per pace, alternating phases of the sides (after one warm-up stream each)."""
    first = _sides(instances, orch, paces[0], nginx)
    readers = {side.name: [Connection(u) for u in side.urls] for side in first}
    out = []
    try:
        for side in first:
            with _collector_paused():
                await _phase(readers[side.name], side, paces[0], 0, Tally())  # pools, caches
        for pace in paces:
            sides = _sides(instances, orch, pace, nginx)
            tallies = {side.name: Tally() for side in sides}
            for _ in range(pace.rounds):
                for side in sides:
                    with _collector_paused():
                        await _phase(
                            readers[side.name], side, pace, pace.per_reader, tallies[side.name]
                        )
            out.append((pace, tallies))
    finally:
        for reader in (r for rs in readers.values() for r in rs):
            reader.close()
    return out


def _row(variant: str, pace: Pace, tally: Tally, cpu_of: str, rss: float | None) -> Row:
    n = len(tally.latencies)
    return Row(
        scenario="stream",
        variant=variant,
        concurrency=STREAMS,
        requests=n,
        p50_ms=percentile(tally.latencies, 0.5) * 1000,
        p99_ms=percentile(tally.latencies, 0.99) * 1000,
        req_s=n / tally.steady_s if tally.steady_s else 0.0,
        cpu_us_per_req=tally.cpu_s / tally.chunks * 1e6 if tally.chunks else None,
        cpu_of=cpu_of,
        peak_rss_mb=rss,
        errors=tally.errors,
        extra={
            "per": "chunk",
            "streams": tally.streams,
            "chunks_per_stream": CHUNKS,
            "delay_ms": pace.delay_ms,
            "p999_ms": round(percentile(tally.latencies, 0.999) * 1000, 3),
            "max_ms": round(max(tally.latencies, default=0.0) * 1000, 3),
            "loop_p50_ms": round(percentile(tally.loop_latencies, 0.5) * 1000, 3),
            "loop_p99_ms": round(percentile(tally.loop_latencies, 0.99) * 1000, 3),
            "burst_p99": percentile([float(b) for b in _burst_sizes(tally.emitted)], 0.99),
            "reader_cpu_us_per_chunk": (
                round(tally.reader_cpu_s / tally.chunks * 1e6, 1) if tally.chunks else None
            ),
        },
    )


def _rows(pace: Pace, tallies: dict[str, Tally], orch: Proc, rss: float) -> list[Row]:
    """The target's pace is plain ``direct``, ``nginx`` and ``orchestrator``; another is
    suffixed. A relay's row has what it adds over direct."""
    suffix = "" if pace.delay_ms == DELAY_MS else f":{pace.chunks_per_s}_chunks_per_s"
    direct = _row("direct" + suffix, pace, tallies["direct"], "instances", None)
    rows = [direct]
    if "nginx" in tallies:
        rows.append(_row("nginx" + suffix, pace, tallies["nginx"], "nginx", None))
    rows.append(_row("orchestrator" + suffix, pace, tallies["orchestrator"], orch.name, rss))
    for relay in rows[1:]:
        relay.extra["added_p50_ms"] = round(relay.p50_ms - direct.p50_ms, 3)
        relay.extra["added_p99_ms"] = round(relay.p99_ms - direct.p99_ms, 3)
        for q in ("p50", "p99"):
            added = relay.extra[f"loop_{q}_ms"] - direct.extra[f"loop_{q}_ms"]
            relay.extra[f"added_loop_{q}_ms"] = round(added, 3)
    return rows


async def streaming_relay(workdir: Path, sizes: Sizes) -> list[Row]:
    """100 streams of 50 stamped chunks, 20 ms apart (and 100 ms in a full run): read
    directly vs through nginx (a relay in C: what any one more hop costs on this machine;
    left out when nginx is not installed) vs through the orchestrator's route."""
    procs: list[Proc] = []
    with stopping(procs):
        instances = [
            await start_instance(f"S{k}", workdir, handler="stream")
            for k in range(sizes.fanout_processes)
        ]
        procs.extend(instances)
        urls = {p.name: p.url for p in instances}
        orch = await start_orchestrator(
            workdir, urls, label="orchestrator-stream", settings={"health": QUIET_HEALTH}
        )
        procs.append(orch)
        nginx = None
        if shutil.which("nginx"):
            routes = {f"/{p.name}/": p.url for p in instances}
            nginx = await start_nginx_routes(workdir, routes, label="nginx-stream")
            procs.append(nginx)
        measured = await _measure(instances, orch, nginx, _paces(sizes))
        rss = orch.peak_rss_mb()
    return [row for pace, tallies in measured for row in _rows(pace, tallies, orch, rss)]
