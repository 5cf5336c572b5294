"""`make bench`: run every benchmark (or those named), print a table each, write the JSON.

    .venv/bin/python -m bench.run                 # all of them, ~15 minutes
    .venv/bin/python -m bench.run signing events  # some of them

Results go to bench/results/latest.json (git-ignored); bench/README.md keeps the last table
worth keeping, with the machine it came from.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench.support import RUNS, ROOT, Report, console, machine, print_report, verdict

BENCHMARKS = (
    "rotation",
    "due_scan",
    "memory",
    "signing",
    "jwks_route",
    "events",
    "revocation",
    "cold_start",
)
RESULTS = ROOT / "bench" / "results"


def run_one(name: str) -> Report:
    module = importlib.import_module(f"bench.{name}")
    started = time.perf_counter()
    try:
        report: Report = module.run()
    except Exception:
        report = Report(name, f"{name}: FAILED")
        report.add("benchmark", "failed", "runs", False, traceback.format_exc().splitlines()[-1])
        report.details.append(traceback.format_exc())
    report.seconds = time.perf_counter() - started
    return report


def summary(reports: list[Report]) -> None:
    """One line per target: met or missed, for the end of a long run."""
    console.rule("targets")
    for report in reports:
        for row in report.rows:
            if row.met is not None:
                console.print(
                    f"  {verdict(row.met):7} {report.name:11} {row.figure}: {row.value}"
                    f" (target {row.target})",
                    style="green" if row.met else "red",
                    markup=False,
                    highlight=False,
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], metavar="NAME")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    host = machine()
    console.print(
        f"keyrotor benchmarks: {', '.join(names)}; {RUNS} runs a figure;"
        f" {host['nproc']} cores, {host['cpu']}, {host['memory']}",
        markup=False,
    )
    started = time.perf_counter()
    reports = []
    for name in names:
        console.rule(name)
        report = run_one(name)
        print_report(report)
        reports.append(report)
    summary(reports)
    total = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(total, 1),
        "runs": RUNS,
        "machine": host,
        "benchmarks": [report.as_dict() for report in reports],
    }
    args.output.write_text(json.dumps(document, indent=2, default=str) + "\n")
    console.print(f"{total:.0f} s in all; results in {args.output}", markup=False)
    failed = any(report.title.endswith("FAILED") for report in reports)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
