"""Memory: the peak RSS of a worker process while `rotate_due` fans out over 1,000,000 realms.

The fan-out walks the due index a page (500) at a time, claims each realm and sends its
message, so what it holds is one page, whatever the number of realms or of due realms. A
real Celery worker (one prefork pool process) runs `keyrotor.rotate_due` from its own queue;
the messages it sends go to the default queue, which nothing consumes here and which is
emptied after each run. Runs alternate between 5,000 and 20,000 due realms, and the pool
process's peak RSS (VmHWM) is reset before each run (`clear_refs`).
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, text

from bench.due_scan import DUE_QUEUE, fill_realms, rotate_due_once
from bench.support import (
    RUNS,
    Report,
    celery_worker,
    children,
    deployment,
    median,
    status_kib,
)
from worker import runtime

REALMS = 1_000_000
DUE = 20_000
FEWER_DUE = 5_000
TARGET_MIB = 150.0


def reset_peak(pid: int) -> bool:
    """Set VmHWM back to the current RSS (Linux `clear_refs` 5); False where not allowed."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    return False


def set_due(engine: Engine, due: int) -> None:
    """Make the first `due` of the DUE realms that `fill_realms` made due (by name), and
    not the rest: the same table, a different number of realms to fan out."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE realms SET next_rotation_at = next_rotation_at + CASE"
                " WHEN substr(name, 7)::int <= :due THEN -interval '1 day' ELSE interval"
                " '1 day' END WHERE substr(name, 7)::int BETWEEN :first AND :last"
                " AND (next_rotation_at > now() AT TIME ZONE 'UTC')"
                " = (substr(name, 7)::int <= :due)"
            ),
            {"due": due, "first": FEWER_DUE + 1, "last": DUE},
        )


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def run() -> Report:
    report = Report("memory", f"Memory: a worker's rotate_due over {REALMS:,} realms")
    peaks: dict[int, list[int]] = {FEWER_DUE: [], DUE: []}
    seconds: dict[int, list[float]] = {FEWER_DUE: [], DUE: []}
    parents: list[int] = []
    with deployment("memory") as dep:
        engine = runtime.engine(str(dep.settings.database_url))
        fill = fill_realms(engine, REALMS, DUE, datetime.now(UTC).replace(microsecond=0))
        worker = celery_worker("memory", dep.env, dep.folder, concurrency=1, queues=DUE_QUEUE)
        app = dep.celery()
        try:
            (pool,) = children(worker.popen.pid)
            time.sleep(0.5)
            idle = status_kib(pool, "VmRSS")
            resettable = True
            for _ in range(RUNS):
                for due in (FEWER_DUE, DUE):
                    set_due(engine, due)
                    resettable = reset_peak(pool) and resettable
                    took, sent = rotate_due_once(dep, app, worker)
                    assert sent == due, (sent, due)
                    peaks[due].append(status_kib(pool, "VmHWM"))
                    seconds[due].append(took)
            parents.append(status_kib(worker.popen.pid, "VmHWM"))
        finally:
            app.close()
            worker.stop()

    peak = median(peaks[DUE])
    report.add(
        "peak RSS of the pool process running rotate_due",
        mib(peak),
        f"≤ {TARGET_MIB:.0f} MiB",
        peak / 1024 <= TARGET_MIB,
        f"{DUE:,} due of {REALMS:,}; median of {RUNS} runs"
        + ("" if resettable else " (peak not resettable here: cumulative)"),
    )
    report.add(
        f"  the same with {FEWER_DUE:,} due",
        mib(median(peaks[FEWER_DUE])),
        note=f"{DUE // FEWER_DUE}x the due realms: {mib(peak - median(peaks[FEWER_DUE]))} more",
    )
    report.add(
        "  the pool process idle, before the first run",
        mib(idle),
        note="the first run adds connections, compiled SQL, the producer pool",
    )
    report.add("  the worker's main process (peak)", mib(parents[-1]))
    per_realm = median(seconds[DUE]) / DUE
    report.add(
        f"rotate_due run time, {DUE:,} due",
        f"{median(seconds[DUE]):.1f} s",
        note=f"{per_realm * 1e6:.0f} µs per due realm (a claim and a Celery send):"
        f" 100,000 due would take {per_realm * 100_000:.0f} s",
    )
    report.add("bulk insert + VACUUM ANALYZE", f"{fill:.1f} s", note="set-up")
    report.data.update(
        peak_kib={str(k): v for k, v in peaks.items()},
        idle_kib=idle,
        main_peak_kib=parents,
        rotate_due_s={str(k): v for k, v in seconds.items()},
    )
    return report
