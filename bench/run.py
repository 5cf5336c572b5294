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
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench.support import (
    POSTGRES_URL,
    ROOT,
    RUNS,
    Report,
    console,
    machine,
    print_report,
    verdict,
)

BENCHMARKS = (
    "rotation",
    "due_scan",
    "memory",
    "signing",
    "jwks_route",
    "events",
    "webhooks",
    "revocation",
    "cold_start",
)
# Run only when named (`make bench-scale`): a million realms each, ~12 GiB of files at a time.
ON_DEMAND = ("scale", "mass_rotation")
RESULTS = ROOT / "bench" / "results"
WITHOUT_POSTGRES = {"cold_start"}


def run_one(name: str) -> Report:
    module = importlib.import_module(f"bench.{name}")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        report: Report = module.run()
    except Exception as error:
        report = Report(name, f"{name}: FAILED")
        why = (str(error).strip().splitlines() or [""])[0]
        report.add("benchmark", "failed", "runs", False, f"{error.__class__.__name__}: {why}")
        report.details.append(traceback.format_exc())
    report.seconds = time.perf_counter() - started
    # The machine is shared: the 1-minute load average says how busy it was meanwhile.
    report.data["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return report


def markdown(reports: list[Report], host: dict[str, str], runs: int) -> str:
    """The tables as Markdown, ready for bench/README.md."""
    lines = [
        f"Machine: {host['nproc']} cores, {host['cpu']}, {host['memory']} RAM,"
        f" Python {host['python']}; {runs} runs a figure.",
        "",
    ]
    for report in reports:
        lines += [
            f"### {report.title}",
            "",
            "| figure | value | target | | note |",
            "|---|---|---|---|---|",
        ]
        for row in report.rows:
            cells = (row.figure, row.value, row.target, verdict(row.met), row.note)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def postgres_answers() -> str | None:
    """None when the bench database answers, else why not."""
    import psycopg

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=5).close()
    except Exception as error:
        return f"{error.__class__.__name__}: {str(error).strip().splitlines()[0]}"
    return None


def summary(reports: list[Report]) -> None:
    """One line per target: met or missed, for the end of a long run."""
    console.rule("targets")
    for report in reports:
        for row in report.rows:
            if row.met is not None:
                console.print(
                    f"  {verdict(row.met):7} {report.name:13} {row.figure}: {row.value}"
                    f" (target {row.target})",
                    style="green" if row.met else "red",
                    markup=False,
                    highlight=False,
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS, *ON_DEMAND], metavar="NAME")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    if set(names) - WITHOUT_POSTGRES and (problem := postgres_answers()):
        sys.stderr.write(
            f"error: PostgreSQL at {POSTGRES_URL} does not answer ({problem});"
            " start it or set KEYROTOR_BENCH_POSTGRES_URL\n"
        )
        return 2
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
    args.output.with_suffix(".md").write_text(markdown(reports, host, RUNS))
    console.print(f"{total:.0f} s in all; results in {args.output}", markup=False)
    failed = any(report.title.endswith("FAILED") for report in reports)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
