"""Ports for child processes that bind them themselves.

A port found by binding port 0 comes from Linux's ephemeral range (32768-60999), where any
test's outgoing connection may take it between our look and the child's bind, and the child
then fails for a reason that is not the code under test's. These come from below that range,
and each pytest-xdist worker draws from its own slice of it, so two workers never race for one.
"""

from __future__ import annotations

import os
import random
import socket

_LOW, _HIGH = 20000, 32768
_SLICES = 8


def _slice() -> range:
    """This worker's share of the range (gw0 → first slice; no xdist → the whole range)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not worker[2:].isdigit():
        return range(_LOW, _HIGH)
    width = (_HIGH - _LOW) // _SLICES
    start = _LOW + (int(worker[2:]) % _SLICES) * width
    return range(start, start + width)


def is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_range(count: int) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 a moment ago."""
    ports = _slice()
    for _ in range(200):
        base = random.randrange(ports.start, ports.stop - count)
        if all(is_free(base + i) for i in range(count)):
            return base
    raise AssertionError("no free port range found")


def free_port() -> int:
    """A port free on 127.0.0.1 a moment ago, for a child process to bind."""
    return free_range(1)
