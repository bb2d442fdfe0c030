"""The process's open-file limit (``RLIMIT_NOFILE``), raised to its hard limit at start-up.

Every connection to an instance or from a client, and every database file, is a file
descriptor. The usual soft limit (1,024) is far below what a busy orchestrator holds while
the hard limit, what the administrator allows, is usually much higher: servers raise the
soft one to it, as nginx's ``worker_rlimit_nofile`` does. Running out anyway is the
orchestrator's own failure (``overloaded``), never blamed on an instance.
"""

from __future__ import annotations

from .logs import get_logger

__all__ = ["UNLIMITED_CEILING", "raise_nofile_limit"]

UNLIMITED_CEILING = 1 << 20
"""The soft limit asked for when the hard limit is unlimited (Linux's default ``nr_open``)."""

log = get_logger("nofile")


def raise_nofile_limit() -> tuple[int, int] | None:
    """Raise the soft open-file limit to the hard one; ``(old, new)`` soft limits, logged
    when they differ. None where there is no such limit (Windows) or it cannot be read."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = UNLIMITED_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:  # e.g. macOS caps it below the hard limit
            log.warning("nofile.not_raised", soft=soft, hard=hard, wanted=wanted, error=str(exc))
            return soft, soft
        log.info("nofile.raised", old=soft, new=wanted, hard=hard)
        return soft, wanted
    return soft, soft
