"""Drivers: one module per kind of instance, each an :class:`InstanceDriver`."""

from __future__ import annotations

from .base import InstanceDriver, ProbeResult, map_client_errors
from .worker import WorkerDriver

__all__ = ["InstanceDriver", "ProbeResult", "WorkerDriver", "map_client_errors"]
