"""Drivers: one module per kind of instance, each an :class:`InstanceDriver`."""

from __future__ import annotations

from .base import InstanceDriver, ProbeResult, map_client_errors
from .openclaw import OpenClawDriver
from .worker import WorkerDriver

__all__ = ["InstanceDriver", "OpenClawDriver", "ProbeResult", "WorkerDriver", "map_client_errors"]
