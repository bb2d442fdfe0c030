"""Outgoing request bodies for aiohttp, shared by the SDK and the drivers.

aiohttp sends ``bytes`` in one write, which is what small JSON wants (headers and body leave
in one segment). From 1 MiB on it warns that a large ``bytes`` body might block the loop, so
large bodies go as a stream instead.
"""

from __future__ import annotations

import io

__all__ = ["STREAM_FROM_BYTES", "outgoing_body"]

STREAM_FROM_BYTES = 1024 * 1024


def outgoing_body(raw: bytes) -> bytes | io.BytesIO:
    """``raw`` as is when small, as a stream (same Content-Length) when large."""
    return io.BytesIO(raw) if len(raw) >= STREAM_FROM_BYTES else raw
