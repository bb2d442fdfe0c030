"""Console entry points: ``openclaw-orchestrator`` and the ``openclaw`` shim.

``openclaw orchestrator <command> ...`` and ``openclaw-orchestrator <command> ...`` run the
same Typer app. Any other first word belongs to the real OpenClaw CLI: the whole command line
is handed (``os.execv``) to the first ``openclaw`` on ``PATH`` that is not this shim, so one
``openclaw`` command serves both. ``openclaw`` alone, ``-h`` or ``--help`` prints a short help
and exits 0. Nothing heavy is imported before the decision, so the hand-off stays quick.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

from .exits import interrupted
from .fastpath import FAST_PATH_COMMANDS

__all__ = [
    "MULTI_VALUE_OPTIONS",
    "expand_multi_value_options",
    "find_openclaw",
    "openclaw_main",
    "orchestrator_main",
]

MULTI_VALUE_OPTIONS = frozenset({"--instances", "--targets", "--tag"})
"""Options that take several values after one flag (``--instances A B``)."""
SUBCOMMAND = "orchestrator"
_SHIM_MARKER = b"openclaw_orchestrator.cli.entry"
"""Found in the first bytes of every console script pip writes for this package."""
_USAGE = """\
usage: openclaw orchestrator <command> [options]
       openclaw <other command> ...

  openclaw orchestrator --help   route, fanout, health, instances, register, unregister,
                                 sessions_spawn, sessions_send, sessions_list,
                                 sessions_history, sessions_close, runs list|get|wait|
                                 cancel|events, serve, up, instance serve
  openclaw <anything else>       handed over to the OpenClaw CLI: {target}
"""


def expand_multi_value_options(argv: Sequence[str]) -> list[str]:
    """Rewrite ``--instances A B`` as ``--instances A --instances B`` (Typer has no nargs).

    Bare words after a :data:`MULTI_VALUE_OPTIONS` flag are its values until the next
    ``-``-prefixed word; ``--`` ends the rewriting.
    """
    out: list[str] = []
    option: str | None = None
    has_value = False
    for index, word in enumerate(argv):
        if word == "--":
            return out + list(argv[index:])
        if word.startswith("-"):
            name, equals, _ = word.partition("=")
            option = name if name in MULTI_VALUE_OPTIONS else None
            has_value = bool(equals)
        elif option is not None and has_value:
            out.append(option)
        else:
            has_value = True
        out.append(word)
    return out


def find_openclaw(path: str, *, own: Path, skip_dirs: Iterable[Path] = ()) -> Path | None:
    """The first executable ``openclaw`` on ``path`` that is not this shim.

    Skipped: ``own`` (this script, after resolving links), anything in ``skip_dirs`` (this
    script's and this interpreter's bin directories) and other installs of this package.
    """
    mine = own.resolve()
    skipped = {mine.parent, *(Path(d).resolve() for d in skip_dirs)}
    for directory in path.split(os.pathsep):
        candidate = Path(directory or ".") / "openclaw"
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        if candidate.resolve() == mine or candidate.parent.resolve() in skipped:
            continue
        if not _is_shim(candidate):
            return candidate
    return None


def _is_shim(candidate: Path) -> bool:
    """Whether ``candidate`` is another install of this shim (handing to it would loop)."""
    try:
        with candidate.open("rb") as script:
            return _SHIM_MARKER in script.read(1024)
    except OSError:
        return False


def _run(argv: Sequence[str], *, prog_name: str) -> NoReturn:
    """Run one command; Ctrl-C anywhere in it is :func:`interrupted`, never a traceback."""
    try:
        args = expand_multi_value_options(argv)
        if args and args[0] in FAST_PATH_COMMANDS:  # JSON health/instances/route/fanout skip Typer
            from .fastpath import try_fast_path

            code = try_fast_path(args)
            if code is not None:
                sys.stdout.flush()
                raise SystemExit(code)
        from .main import app

        app(args=args, prog_name=prog_name)
    except KeyboardInterrupt:
        interrupted()
    raise SystemExit(0)  # Typer exits by itself; this only satisfies NoReturn


def _own_script() -> Path:
    return Path(sys.argv[0]).absolute()


def _real_openclaw() -> Path | None:
    """Where the hand-off goes; ``PATH`` is read here because it is the process's, not ours."""
    own = _own_script()
    search_path = os.environ.get("PATH", os.defpath)
    return find_openclaw(search_path, own=own, skip_dirs=[Path(sys.executable).parent])


def _hand_off(args: Sequence[str]) -> NoReturn:
    target = _real_openclaw()
    if target is None:
        sys.stderr.write(
            f"openclaw: no OpenClaw CLI found on PATH (looked for 'openclaw' beyond "
            f"{_own_script()})\n"
        )
        raise SystemExit(2)
    os.execv(target, [str(target), *args])  # noqa: S606  # the user asked for this very program


def openclaw_main() -> NoReturn:
    """``openclaw``: our commands under ``orchestrator``; everything else to OpenClaw."""
    args = sys.argv[1:]
    if args and args[0] == SUBCOMMAND:
        _run(args[1:], prog_name=f"openclaw {SUBCOMMAND}")
    if not args or args[0] in ("-h", "--help"):
        target = _real_openclaw()
        sys.stdout.write(_USAGE.format(target=target or "none found on PATH"))
        raise SystemExit(0)
    _hand_off(args)


def orchestrator_main() -> NoReturn:
    """``openclaw-orchestrator`` (and ``python -m openclaw_orchestrator``)."""
    _run(sys.argv[1:], prog_name="openclaw-orchestrator")
