"""The due scan: `rotate_due`'s cost must follow the number of due realms, not of all realms.

Two private schemas hold 10,000 and 1,000,000 realms (bulk-inserted rows, no keys: the scan
reads only `realms`), with the same 5,000 due. A `due_realm_ids` page (500, what one
`rotate_due` batch reads) is timed on both, the first page and the last, interleaved; a real
worker then runs the whole `rotate_due` on each. The plan of the last page shows the index
doing the work.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, event, text

from bench.support import (
    RUNS,
    Process,
    Report,
    celery_worker,
    deployment,
    median,
    ms,
    wait_for,
    x,
)
from worker import runtime
from worker.service import Service

SMALL, LARGE = 10_000, 1_000_000
DUE = 5_000
PAGE = 500
REPEATS = max(RUNS, 31)
TARGET = 1.5
INDEX = "ix_realms_next_rotation_at_id"
DUE_QUEUE = "bench-due"

FILL = """
INSERT INTO realms (id, name, algo, rsa_bits, rotation_period_s, prepublish_s, grace_s,
                    max_token_ttl_s, jwks_version, next_rotation_at, created_at, updated_at)
SELECT 'rl_' || substr(md5(g::text), 1, 22), 'bench-' || g, :algo, 2048, 2592000, 3600,
       21600, 3600, 1,
       CASE WHEN g <= :due
            THEN :now - (g % 600) * interval '1 second'  -- the last ten minutes, with ties
            ELSE :now + interval '1 minute' + (g % 2592000) * interval '1 second' END,
       :now - interval '30 days', :now - interval '30 days'
FROM generate_series(1, :total) AS g
"""


def fill_realms(engine: Engine, total: int, due: int, now: datetime, algo: str = "es256") -> float:
    """Insert `total` realm rows of `algo` (RSA ones of 2,048 bits), `due` of them due at
    `now` and the rest from 80 minutes on (so a worker started now sees the same due set);
    VACUUM ANALYZE as autovacuum would have by the time a table this size is scanned. Returns
    the seconds it took."""
    started = time.perf_counter()
    with engine.begin() as connection:
        connection.execute(
            text(FILL),
            {"due": due, "total": total, "now": now.replace(tzinfo=None), "algo": algo},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE realms"))
    return time.perf_counter() - started


@contextmanager
def capturing(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The statements (with parameters) sent while the block runs."""
    sent: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        sent.append((str(args[2]), args[3]))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def walk(service: Service, now: datetime) -> list[tuple[datetime, str]]:
    """Every due realm, a page at a time, as `rotate_due` walks them."""
    found: list[tuple[datetime, str]] = []
    after = None
    while page := service.due_realm_ids(now, after=after, limit=PAGE):
        found += page
        after = page[-1]
    return found


def explain_last_page(side: Side) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the very statement `due_realm_ids` sends."""
    with capturing(side.engine) as sent:
        side.service.due_realm_ids(side.now, after=side.deep, limit=PAGE)
    statement, parameters = next((s, p) for s, p in sent if "FROM realms" in s)
    with side.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters
        ).all()
    return "\n".join(row[0] for row in rows)


@dataclass
class Side:
    """One schema under test: its size, service and the page positions to time."""

    realms: int
    engine: Engine
    service: Service
    now: datetime
    deep: tuple[datetime, str]


def time_page(side: Side, after: tuple[datetime, str] | None) -> float:
    start = time.perf_counter()
    page = side.service.due_realm_ids(side.now, after=after, limit=PAGE)
    elapsed = time.perf_counter() - start
    assert page, "no due realms"
    return elapsed


def rotate_due_once(dep: Any, app: Any, worker: Process) -> tuple[float, int]:
    """Run `keyrotor.rotate_due` on the worker that serves DUE_QUEUE; the task's own runtime
    (from Celery's log line) and how many `rotate_realm` messages it sent. The messages and
    the claims are removed afterwards, so every run fans out the same realms."""
    pattern = re.compile(r"keyrotor\.rotate_due\[[^\]]+\] succeeded in ([0-9.]+)s: (\d+)")
    before = len(pattern.findall(worker.log()))
    app.send_task("keyrotor.rotate_due", queue=DUE_QUEUE)
    wait_for(lambda: len(pattern.findall(worker.log())) > before, 600, "rotate_due", every=0.05)
    seconds, sent = pattern.findall(worker.log())[before]
    dep.redis.delete("celery")  # the fanned-out messages: nobody consumes them here
    for name in dep.redis.scan_iter("keyrotor:due:*", count=5000):
        dep.redis.delete(name)
    return float(seconds), int(sent)


def run() -> Report:
    report = Report("due_scan", f"Due scan: {LARGE:,} realms vs {SMALL:,}, {DUE:,} due in each")
    sides: dict[int, Side] = {}
    with deployment("due_small") as small, deployment("due_large") as large:
        fill_seconds = {}
        now = datetime.now(UTC).replace(microsecond=0)
        for dep, size in ((small, SMALL), (large, LARGE)):
            engine = runtime.engine(str(dep.settings.database_url))
            fill_seconds[size] = fill_realms(engine, size, DUE, now)
            walked = walk(dep.service, now)
            assert len(walked) == DUE, len(walked)
            sides[size] = Side(size, engine, dep.service, now, deep=walked[-PAGE - 1])
        plan = explain_last_page(sides[LARGE])

        first: dict[int, list[float]] = {SMALL: [], LARGE: []}
        last: dict[int, list[float]] = {SMALL: [], LARGE: []}
        walks: dict[int, list[float]] = {SMALL: [], LARGE: []}
        for repeat in range(REPEATS):
            for size, side in sides.items():
                first[size].append(time_page(side, None))
                last[size].append(time_page(side, side.deep))
                if repeat < RUNS:
                    start = time.perf_counter()
                    walk(side.service, side.now)
                    walks[size].append(time.perf_counter() - start)

        batches: dict[int, list[float]] = {SMALL: [], LARGE: []}
        workers = {}
        apps = {}
        try:
            for dep, size in ((small, SMALL), (large, LARGE)):
                workers[size] = celery_worker(
                    f"due-{size}", dep.env, dep.folder, concurrency=1, queues=DUE_QUEUE
                )
                apps[size] = dep.celery()
            for _ in range(RUNS):
                for dep, size in ((small, SMALL), (large, LARGE)):
                    seconds, sent = rotate_due_once(dep, apps[size], workers[size])
                    assert sent == DUE, sent
                    batches[size].append(seconds / (DUE / PAGE))
        finally:
            for app in apps.values():
                app.close()
            for worker in workers.values():
                worker.stop()

    def ratio(values: dict[int, list[float]]) -> float:
        return median(values[LARGE]) / median(values[SMALL])

    uses_index = INDEX in plan and "Index Cond" in plan
    removed = [int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plan)]
    report.add(
        "last page of the walk (500, keyset after 4,500)",
        f"{ms(median(last[LARGE]))} vs {ms(median(last[SMALL]))}",
        f"≤ {TARGET}x",
        ratio(last) <= TARGET,
        f"{x(ratio(last))}; median of {REPEATS}",
    )
    report.add(
        "first page (500)",
        f"{ms(median(first[LARGE]))} vs {ms(median(first[SMALL]))}",
        f"≤ {TARGET}x",
        ratio(first) <= TARGET,
        f"{x(ratio(first))}; median of {REPEATS}",
    )
    report.add(
        "rotate_due per batch, real worker (page + 500 claims + 500 sends)",
        f"{ms(median(batches[LARGE]))} vs {ms(median(batches[SMALL]))}",
        f"≤ {TARGET}x",
        ratio(batches) <= TARGET,
        f"{x(ratio(batches))}; median of {RUNS} runs of the whole fan-out",
    )
    report.add(
        "whole walk of the 5,000 due (10 pages)",
        f"{ms(median(walks[LARGE]))} vs {ms(median(walks[SMALL]))}",
        note=x(ratio(walks)),
    )
    report.add(
        "plan of the last page uses the index as its start",
        f"{INDEX}" if uses_index else "no",
        "index, no filter",
        uses_index and not any(removed),
        f"rows removed by filter: {sum(removed)}",
    )
    report.add(
        "bulk insert + VACUUM ANALYZE of 1M realms",
        f"{fill_seconds[LARGE]:.1f} s",
        note="set-up, not a target",
    )
    report.details.append(f"EXPLAIN (ANALYZE, BUFFERS) of the last page, {LARGE:,} realms:")
    report.details.append(plan)
    report.data.update(
        first_page_s={str(k): v for k, v in first.items()},
        last_page_s={str(k): v for k, v in last.items()},
        rotate_due_batch_s={str(k): v for k, v in batches.items()},
        walk_s={str(k): v for k, v in walks.items()},
        plan=plan,
    )
    return report
