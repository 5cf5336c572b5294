"""Cold start: `keyrotor run` on embedded defaults, from exec to its first JWKS answer.

Each run starts in an empty directory (so SQLite is created and migrated, the development
master key generated, the default realm and its RS256 key made, Valkey started), with only
the HTTP port set. The clock stops at the first 200 from the realm's JWKS route.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.support import RUNS, Process, Report, free_port, median, spawn, wait_for


def keyrotor_command() -> list[str]:
    script = Path(sys.executable).with_name("keyrotor")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from worker.cli.app import main; main()"]


def first_jwks(folder: Path) -> tuple[float, float, Process]:
    """Seconds to the first JWKS 200, and to the supervisor's "running" line (database
    migrated, default realm made, Valkey up, children launched)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
    env["KEYROTOR_HTTP_PORT"] = str(port)
    url = f"http://127.0.0.1:{port}/realms/default/.well-known/jwks.json"
    started = time.perf_counter()
    process = spawn("keyrotor-run", [*keyrotor_command(), "run"], env, folder)
    launched: list[float] = []

    def served() -> bool:
        if not launched and "keyrotor is running" in process.log():
            launched.append(time.perf_counter() - started)
        if process.popen.poll() is not None:
            raise RuntimeError(f"keyrotor run exited:\n{process.log()[-3000:]}")
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(served, 120, "the first JWKS", every=0.02)
    except BaseException:
        process.stop()
        raise
    return time.perf_counter() - started, (launched or [float("nan")])[0], process


def import_seconds(module: str) -> float:
    """How long a fresh interpreter takes to import `module`: the floor of any start."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - started


def run() -> Report:
    report = Report("cold_start", "Cold start: `keyrotor run` to its first JWKS (embedded)")
    firsts, launches, stops, imports = [], [], [], []
    for _ in range(RUNS):
        imports.append(import_seconds("worker.http.app"))
        with tempfile.TemporaryDirectory(prefix="kr-cold-") as folder:
            seconds, launched, process = first_jwks(Path(folder))
            firsts.append(seconds)
            launches.append(launched)
            started = time.perf_counter()
            process.stop(timeout=30)
            stops.append(time.perf_counter() - started)
    report.add(
        "exec → first JWKS 200 (SQLite, embedded Valkey, new var/)",
        f"{median(firsts):.2f} s",
        note=f"median of {RUNS}: " + ", ".join(f"{s:.2f}" for s in firsts),
    )
    report.add(
        "  of which: until the children are launched",
        f"{median(launches):.2f} s",
        note="migrate SQLite, master key, default realm (RS256 key), start Valkey",
    )
    report.add(
        "  of which: the web child starts and answers",
        f"{median(firsts) - median(launches):.2f} s",
    )
    report.add("SIGTERM → everything stopped", f"{median(stops):.2f} s")
    report.add("anchor: python -c 'import worker.http.app'", f"{median(imports):.2f} s")
    report.data.update(first_jwks_s=firsts, launched_s=launches, stop_s=stops, import_s=imports)
    return report
