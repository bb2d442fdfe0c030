"""A local server this process started as a child (``up``'s instances, the stub model)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

__all__ = ["STOP_GRACE", "ChildServer"]

STOP_GRACE = 5.0
"""Seconds a child may take to exit after SIGTERM before it is killed."""


@dataclass
class ChildServer:
    """Where the child listens, and its process."""

    host: str
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Terminate it and wait; kill it if it will not stop."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
