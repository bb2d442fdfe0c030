"""Run the scenarios, print the table, write ``bench/results/latest.json`` and the plots."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import uvloop

from .report import check_targets, plot, table, write_json
from .scenarios import SCENARIOS, Row, Sizes

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI), under a minute")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(SCENARIOS), help="run only these scenarios"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    return parser.parse_args(argv)


async def _run(names: list[str], sizes: Sizes, out: Path) -> tuple[list[Row], list[str]]:
    """Every scenario in turn; a failing one is reported and the others still run. The
    rows so far are saved after each scenario (``partial.json``)."""
    rows: list[Row] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-") as scratch:
        for name in names:
            started = time.perf_counter()
            print(f"== {name} ...", file=sys.stderr, flush=True)
            try:
                rows.extend(await SCENARIOS[name](Path(scratch), sizes))
            except Exception:
                traceback.print_exc()
                failed.append(name)
            took = time.perf_counter() - started
            print(f"== {name} done in {took:.1f}s", file=sys.stderr, flush=True)
            write_json(out / "partial.json", rows, [], quick=sizes.quick)
    return rows, failed


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench``."""
    args = _parse(argv)
    names = args.only or list(SCENARIOS)
    out = args.out / "quick" if args.quick else args.out  # a quick run never replaces a full one
    rows, failed = uvloop.run(_run(names, Sizes(quick=args.quick), out))
    checks = check_targets(rows)
    print(table(rows))
    print()
    for check in checks:
        mark = "met" if check["met"] else "NOT MET"
        print(f"{mark:8} {check['target']}: {check['value']}")
    write_json(out / "latest.json", rows, checks, quick=args.quick)
    pngs = plot(out, rows)
    (out / "partial.json").unlink(missing_ok=True)
    print(f"\nwrote {out / 'latest.json'} and {len(pngs)} plots")
    if failed:
        print(f"failed scenarios: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
