"""Exit codes of the ``openclaw orchestrator`` commands (see :mod:`.main`); no Typer here,
so the fast path (:mod:`.fastpath`) exits the same way without loading it."""

from __future__ import annotations

import sys
from enum import IntEnum
from functools import cache
from typing import NoReturn

__all__ = ["EXIT_CODES", "RUN_EXIT_CODES", "ExitCode", "exit_code_for", "interrupted", "run_exit"]


class ExitCode(IntEnum):
    """What a script can tell from ``$?``."""

    OK = 0
    TASK_FAILED = 1
    USAGE = 2
    AUTH = 3
    UNREACHABLE = 4
    INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


EXIT_CODES: dict[str, ExitCode] = {
    "ConnectionFailedError": ExitCode.UNREACHABLE,
    "TimeoutExceededError": ExitCode.UNREACHABLE,
    "UnauthorizedError": ExitCode.AUTH,
    "ForbiddenError": ExitCode.AUTH,
    "InvalidRequestError": ExitCode.USAGE,
    "InstanceRejectedError": ExitCode.USAGE,
    "ConfigError": ExitCode.USAGE,
    "NotFoundError": ExitCode.TASK_FAILED,
    "SessionExistsError": ExitCode.TASK_FAILED,
    "SessionClosedError": ExitCode.TASK_FAILED,
    "OrchestratorError": ExitCode.TASK_FAILED,
    "OSError": ExitCode.TASK_FAILED,
}
"""Exception class name -> exit code; the most specific class in the MRO wins. Keyed by name
so that this table costs no import of the settings machinery on the success path."""


RUN_EXIT_CODES: dict[str, ExitCode] = {
    "succeeded": ExitCode.OK,
    "failed": ExitCode.TASK_FAILED,
    "timed_out": ExitCode.TASK_FAILED,
    "cancelled": ExitCode.TASK_FAILED,
}
"""How ``runs wait`` exits for the state it saw; a run still queued or running when
``--timeout`` ran out is :attr:`ExitCode.UNREACHABLE` (the deadline passed)."""


def run_exit(state: str) -> ExitCode:
    """The exit code of ``runs wait`` for a run in ``state`` (see :data:`RUN_EXIT_CODES`)."""
    return RUN_EXIT_CODES.get(state, ExitCode.UNREACHABLE)


def exit_code_for(exc: BaseException) -> ExitCode | None:
    """The exit code for ``exc`` (see :data:`EXIT_CODES`), or None: not ours, let it crash."""
    table = _exit_table()
    return next((table[cls] for cls in type(exc).__mro__ if cls in table), None)


@cache
def _exit_table() -> dict[type[BaseException], ExitCode]:
    """:data:`EXIT_CODES` keyed by the real classes, built on the error path only."""
    from .. import errors
    from ..settings import ConfigError

    classes = {name: getattr(errors, name) for name in errors.__all__}
    classes |= {"ConfigError": ConfigError, "OSError": OSError}
    return {classes[name]: code for name, code in EXIT_CODES.items()}


def interrupted() -> NoReturn:
    """Ctrl-C: one ``interrupted`` line on stderr and exit 130, for every command and path."""
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    raise SystemExit(ExitCode.INTERRUPTED)
