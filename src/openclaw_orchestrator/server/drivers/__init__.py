"""Drivers: one module per kind of instance, each an :class:`InstanceDriver`; the worker
driver's :class:`InstanceTransport` implementations are in :mod:`.transport`."""

from __future__ import annotations

from .base import InstanceDriver, InstanceTransport, ProbeResult, map_client_errors
from .openclaw import OpenClawDriver
from .worker import WorkerDriver

__all__ = [
    "InstanceDriver",
    "InstanceTransport",
    "OpenClawDriver",
    "ProbeResult",
    "WorkerDriver",
    "map_client_errors",
]
