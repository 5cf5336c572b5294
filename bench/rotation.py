"""Rotation through a real Celery worker on PostgreSQL: batched, single-realm, and RSA.

`keyrotor.rotate_realms` rotates a batch of realms in one transaction, publishes their key
sets together and relays their events; its rate per pool process is measured for ES256 and
EdDSA beside the anchors of the same run: one `keyrotor.rotate_realm` task per realm (how
rotation went before batches) and a no-op Celery task on the same worker. RS256 is measured
with a warm key pool (a rotation takes a ready key, opens and re-seals it), against ES256
rotated the same way in the same run; and with an empty pool, against generating the same
number of RSA keys in one process. Database statements are counted per batch, for two batch
sizes, so a statement sent per realm would show as a count that grows with the batch.
"""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import Engine, event, func, select

from bench.support import (
    RUNS,
    Deployment,
    Process,
    Report,
    celery_worker,
    deployment,
    median,
    ms,
    pool_materials,
    rate,
    seed_realms,
    stock_pool,
    us,
    wait_for,
    x,
)
from worker import runtime
from worker.client.events import STREAM
from worker.core import keys
from worker.core.lifecycle import State
from worker.publish.jwks import publish_realm
from worker.publish.relay import Relay
from worker.store.db import transaction
from worker.store.models import JwtKey

BATCH = 200  # KEYROTOR_ROTATE_BATCH's default: what `rotate_due` sends
BATCHED_REALMS = 2000  # 10 batches a run
SINGLE_REALMS = 200  # one `rotate_realm` task each: the anchor
RSA_COLD_REALMS = 200  # RSA-2048 with an empty pool: one batch, a key generated per realm
POOL_DISTINCT = 32  # generated RSA-2048 keys the pooled rows reuse (each row sealed alone)
NOOPS = 500
BATCH_TARGET = 1000.0
RSA_TARGET = 1.15
COUNT_SIZES = (20, 200)
FAST_ALGOS = ("es256", "eddsa")
SINGLE_STEPS = ("rotate", "publish JWKS", "relay event")
PUBLISH_PAGE = 500
IN_PROCESS_BATCHES = 5
GENERATE: dict[str, Callable[[], object]] = {
    "rs256": lambda: rsa.generate_private_key(65537, 2048),
    "es256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "eddsa": ed25519.Ed25519PrivateKey.generate,
}


def generate_keys(algo: str, count: int) -> float:
    """Seconds to make `count` private keys and nothing else: the physical limit."""
    make = GENERATE[algo]
    start = time.perf_counter()
    for _ in range(count):
        make()
    return time.perf_counter() - start


def wait_for_events(dep: Deployment, count: int) -> None:
    wait_for(
        lambda: dep.redis.xlen(STREAM) >= count,
        timeout=60 + 0.5 * count,
        what=f"{count} rotations",
        every=0.005,
    )


def prepare(
    dep: Deployment, count: int, algo: str, *, material: keys.KeyMaterial | None = None
) -> list[str]:
    """Empty tables, Redis and JWKS folder, then `count` realms of `algo` seeded in bulk and
    published (file and Redis copy, in this process), as every realm is in production before
    its first rotation: the rotation replaces a JWKS, it does not create the realm's folder."""
    dep.clear()
    if dep.settings.jwks_dir.exists():
        for child in dep.settings.jwks_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    realm_ids = seed_realms(dep.service, count, algo, material=material)
    publisher = runtime.publisher(dep.settings)
    for first in range(0, count, PUBLISH_PAGE):
        publisher.publish_many(dep.service.publications(realm_ids[first : first + PUBLISH_PAGE]))
    return realm_ids


def rotate_through_worker(dep: Deployment, app: Any, realm_ids: list[str]) -> float:
    """Seconds from sending one `rotate_realm(force=True)` per realm until every rotation's
    event is in the stream (committed, JWKS published, event relayed)."""
    start = time.perf_counter()
    for realm_id in realm_ids:
        app.send_task("keyrotor.rotate_realm", args=[realm_id, True])
    wait_for_events(dep, len(realm_ids))
    return time.perf_counter() - start


def rotate_batches_through_worker(
    dep: Deployment, app: Any, realm_ids: list[str], size: int = BATCH
) -> float:
    """Seconds from sending `rotate_realms(batch, force=True)` for every `size` realms until
    every rotation's event is in the stream (committed, JWKS published, event relayed)."""
    start = time.perf_counter()
    for first in range(0, len(realm_ids), size):
        app.send_task(
            "keyrotor.rotate_realms", args=[realm_ids[first : first + size]], kwargs={"force": True}
        )
    wait_for_events(dep, len(realm_ids))
    return time.perf_counter() - start


def check_rotated(dep: Deployment, count: int) -> None:
    """Every realm ended with one active and one expired key: the work was really done."""
    with transaction(dep.service.sessions, read_only=True) as session:
        states = dict(
            session.execute(select(JwtKey.state, func.count()).group_by(JwtKey.state)).all()
        )
    expected = {State.ACTIVE.value: count, State.EXPIRED.value: count}
    if states != expected:
        raise AssertionError(f"after rotating {count} realms the keys are {states}")


def pooled_left(dep: Deployment) -> int:
    return sum(dep.service.pool_counts().values())


class LogTail:
    """Counts lines matching a pattern in a growing log, reading each byte once (the worker's
    log grows by a line per rotation: re-reading all of it at every poll would take a core)."""

    def __init__(self, path: Path, pattern: str) -> None:
        self.path = path
        self.pattern = re.compile(pattern.encode())
        self.offset = path.stat().st_size if path.exists() else 0
        self.seen = 0

    def count(self) -> int:
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            chunk = log.read()
        end = chunk.rfind(b"\n") + 1  # whole lines only
        self.seen += len(self.pattern.findall(chunk, 0, end))
        self.offset += end
        return self.seen


def noops_through_worker(app: Any, worker: Process, count: int) -> float:
    """Seconds for `count` no-op tasks (Celery's built-in `celery.accumulate`): what the
    worker costs per task before keyrotor does anything."""
    done = LogTail(worker.log_path, r"Task celery\.accumulate\[[^\]]+\] succeeded")
    start = time.perf_counter()
    for _ in range(count):
        app.send_task("celery.accumulate")
    wait_for(lambda: done.count() >= count, 120, "no-ops", every=0.01)
    return time.perf_counter() - start


def redis_calls(dep: Deployment) -> Counter[str]:
    stats: dict[str, Any] = dep.redis.info("commandstats")
    return Counter({name: int(value["calls"]) for name, value in stats.items()})


def redis_commands(dep: Deployment, before: Counter[str]) -> int:
    """Redis commands since `before`, without the benchmark's own polling."""
    calls = redis_calls(dep) - before
    for own in ("cmdstat_xlen", "cmdstat_info"):
        calls.pop(own, None)
    return sum(calls.values())


@dataclass(frozen=True)
class Sent:
    """One statement sent to the database; an `executemany` carries `rows` parameter sets
    (psycopg 3 sends them pipelined: one round trip)."""

    sql: str
    executemany: bool
    rows: int

    def kind(self) -> str:
        """`VERB table`, e.g. `SELECT realms` or `INSERT events`: what a statement touches."""
        words = self.sql.split()
        verb = words[0].upper()
        upper = [w.upper() for w in words]
        if verb == "SELECT" and "FROM" in upper:
            table = words[upper.index("FROM") + 1]
        elif verb in ("INSERT", "DELETE"):
            table = words[2]
        elif verb == "UPDATE":
            table = words[1]
        else:
            table = ""
        return f"{verb} {table.strip('(')}".strip()


@contextmanager
def counting(engine: Engine) -> Iterator[list[Sent]]:
    """The SQL statements sent while the block runs: database round trips."""
    statements: list[Sent] = []

    def record(*args: Any) -> None:
        _, _, sql, parameters, _, executemany = args
        rows = len(parameters) if executemany else 1
        statements.append(Sent(str(sql), bool(executemany), rows))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def round_trips(dep: Deployment) -> dict[str, int]:
    """Statements per step of one single-realm rotation, for a realm with 1 key and one with
    6: equal counts mean no query per key (no N+1). BEGIN and COMMIT are not counted here."""
    engine = runtime.engine(str(dep.settings.database_url))
    publisher = runtime.publisher(dep.settings)
    relay = Relay(dep.service, publisher.redis, publisher=publisher)
    counts: dict[str, int] = {}
    for label, earlier_rotations in (("1 key", 0), ("6 keys", 5)):
        dep.clear()
        (realm_id,) = seed_realms(dep.service, 1, "es256")
        for _ in range(earlier_rotations):
            dep.service.rotate(realm_id, force=True)
        relay.relay_all()
        with counting(engine) as rotate:
            dep.service.rotate(realm_id, force=True)
        with counting(engine) as publish:
            publish_realm(dep.service, publisher, realm_id)
        with counting(engine) as relayed:
            relay.relay()
        counts[f"rotate ({label})"] = len(rotate)
        counts[f"publish JWKS ({label})"] = len(publish)
        counts[f"relay event ({label})"] = len(relayed)
    return counts


@dataclass
class BatchStatements:
    """Statements of one batch: `rotate_batch`, then the publication and relay after it."""

    rotate: list[Sent]
    after: list[Sent]


def batch_statements(
    dep: Deployment, materials: list[keys.KeyMaterial]
) -> dict[tuple[str, int], BatchStatements]:
    """Statements of a forced batch of each size in COUNT_SIZES, for ES256 and for RS256
    taking pooled keys, in this process (the same service code the worker runs)."""
    engine = runtime.engine(str(dep.settings.database_url))
    publisher = runtime.publisher(dep.settings)
    relay = Relay(dep.service, publisher.redis, publisher=publisher)
    found = {}
    for algo in ("es256", "rs256"):
        for size in COUNT_SIZES:
            material = materials[0] if algo == "rs256" else None
            realm_ids = prepare(dep, size, algo, material=material)
            if algo == "rs256":
                stock_pool(dep.service, materials, size, rsa_bits=2048)
            with counting(engine) as rotate:
                outcome = dep.service.rotate_batch(realm_ids, force=True)
            with counting(engine) as after:
                relay.after_batch(outcome.publications)
            if len(outcome.changes) != size or (algo == "rs256" and pooled_left(dep)):
                raise AssertionError(f"{algo} batch of {size}: {len(outcome.changes)} changes")
            found[(algo, size)] = BatchStatements(rotate, after)
    return found


def batch_in_process(dep: Deployment, algo: str) -> dict[str, float]:
    """Seconds per rotation of forced batches of BATCH realms in this process, without Celery:
    `rotate_batch` (the transaction), then `after_batch` (JWKS files and Redis, the relay)."""
    publisher = runtime.publisher(dep.settings)
    relay = Relay(dep.service, publisher.redis, publisher=publisher)
    realm_ids = prepare(dep, BATCH * IN_PROCESS_BATCHES, algo)
    spent = {"rotate_batch": 0.0, "publish + relay": 0.0}
    for first in range(0, len(realm_ids), BATCH):
        started = time.perf_counter()
        outcome = dep.service.rotate_batch(realm_ids[first : first + BATCH], force=True)
        rotated = time.perf_counter()
        relay.after_batch(outcome.publications)
        spent["rotate_batch"] += rotated - started
        spent["publish + relay"] += time.perf_counter() - rotated
    return {step: seconds / len(realm_ids) for step, seconds in spent.items()}


@dataclass
class Fast:
    """ES256 / EdDSA: batched and single-realm rotations through the worker, run by run."""

    batched: list[float] = field(default_factory=list)  # rotations per second
    single: list[float] = field(default_factory=list)
    keygen: list[float] = field(default_factory=list)  # seconds a key
    steps: list[dict[str, float]] = field(default_factory=list)
    redis_batched: list[float] = field(default_factory=list)  # commands a rotation
    redis_single: list[float] = field(default_factory=list)


@dataclass
class Rsa:
    """RS256-2048: warm pool against ES256 batched in the same run; empty pool against
    generating the keys alone."""

    warm: list[float] = field(default_factory=list)  # seconds a rotation
    es256: list[float] = field(default_factory=list)  # seconds a rotation, same run
    taken: list[int] = field(default_factory=list)  # pooled keys taken a run
    cold: list[float] = field(default_factory=list)  # seconds for RSA_COLD_REALMS
    keygen: list[float] = field(default_factory=list)  # seconds for RSA_COLD_REALMS keys

    def ratios(self) -> list[float]:
        return [w / e for w, e in zip(self.warm, self.es256, strict=True)]

    def cold_ratios(self) -> list[float]:
        return [c / k for c, k in zip(self.cold, self.keygen, strict=True)]


def measure_fast(dep: Deployment, app: Any, algo: str, fast: Fast) -> float:
    """One run of `algo`: single-realm tasks, then batches. Returns seconds a batched
    rotation."""
    fast.steps.append(batch_in_process(dep, algo))
    realm_ids = prepare(dep, SINGLE_REALMS, algo)
    fast.keygen.append(generate_keys(algo, SINGLE_REALMS) / SINGLE_REALMS)
    before = redis_calls(dep)
    seconds = rotate_through_worker(dep, app, realm_ids)
    fast.redis_single.append(redis_commands(dep, before) / SINGLE_REALMS)
    check_rotated(dep, SINGLE_REALMS)
    fast.single.append(SINGLE_REALMS / seconds)

    realm_ids = prepare(dep, BATCHED_REALMS, algo)
    before = redis_calls(dep)
    seconds = rotate_batches_through_worker(dep, app, realm_ids)
    fast.redis_batched.append(redis_commands(dep, before) / BATCHED_REALMS)
    check_rotated(dep, BATCHED_REALMS)
    fast.batched.append(BATCHED_REALMS / seconds)
    return seconds / BATCHED_REALMS


def measure_rsa_warm(
    dep: Deployment, app: Any, materials: list[keys.KeyMaterial], result: Rsa
) -> None:
    realm_ids = prepare(dep, BATCHED_REALMS, "rs256", material=materials[0])
    stock_pool(dep.service, materials, BATCHED_REALMS, rsa_bits=2048)
    seconds = rotate_batches_through_worker(dep, app, realm_ids)
    check_rotated(dep, BATCHED_REALMS)
    result.taken.append(BATCHED_REALMS - pooled_left(dep))
    result.warm.append(seconds / BATCHED_REALMS)


def measure_rsa_cold(dep: Deployment, app: Any, result: Rsa) -> None:
    # The pool emptied too: every key is generated, inside the batch's transaction.
    realm_ids = prepare(dep, RSA_COLD_REALMS, "rs256")
    result.keygen.append(generate_keys("rs256", RSA_COLD_REALMS))
    result.cold.append(rotate_batches_through_worker(dep, app, realm_ids))
    check_rotated(dep, RSA_COLD_REALMS)


def warm_up(dep: Deployment, app: Any, materials: list[keys.KeyMaterial]) -> None:
    """A few batches of each kind and a few single-realm tasks, so no run pays the worker's
    first connections and compiled statements."""
    rotate_batches_through_worker(dep, app, prepare(dep, 5 * BATCH, "es256"))
    realm_ids = prepare(dep, 20, "rs256", material=materials[0])
    stock_pool(dep.service, materials, 20, rsa_bits=2048)
    rotate_batches_through_worker(dep, app, realm_ids)
    rotate_through_worker(dep, app, prepare(dep, 5, "es256"))


def run() -> Report:
    report = Report("rotation", "Rotation through a real Celery worker on PostgreSQL")
    fast = {algo: Fast() for algo in FAST_ALGOS}
    rsa_result = Rsa()
    noops: list[float] = []
    # No pool filled behind the benchmark's back: each run stocks (or empties) it itself.
    with deployment("rotation", key_pool_size="0") as dep:
        materials = pool_materials("rs256", 2048, POOL_DISTINCT)
        worker = celery_worker("rotation", dep.env, dep.folder, concurrency=1)
        app = dep.celery()
        try:
            warm_up(dep, app, materials)
            for _ in range(RUNS):
                noops.append(noops_through_worker(app, worker, NOOPS) / NOOPS)
                for algo in FAST_ALGOS:
                    per_rotation = measure_fast(dep, app, algo, fast[algo])
                    if algo == "es256":
                        rsa_result.es256.append(per_rotation)
                        measure_rsa_warm(dep, app, materials, rsa_result)
                measure_rsa_cold(dep, app, rsa_result)
            statements = batch_statements(dep, materials)
            trips = round_trips(dep)
        finally:
            app.close()
            worker.stop()

    add_fast_rows(report, fast, median(noops))
    add_rsa_rows(report, rsa_result)
    add_statement_rows(report, statements, trips)
    report.data.update(
        noop_s=noops,
        fast={
            algo: {
                "batched_per_second": r.batched,
                "single_per_second": r.single,
                "keygen_s": r.keygen,
                "batch_in_process_s": r.steps,
                "redis_commands_per_rotation_batched": r.redis_batched,
                "redis_commands_per_rotation_single": r.redis_single,
            }
            for algo, r in fast.items()
        },
        rs256={
            "warm_pool_s_per_rotation": rsa_result.warm,
            "es256_s_per_rotation": rsa_result.es256,
            "warm_over_es256": rsa_result.ratios(),
            "pooled_taken": rsa_result.taken,
            "empty_pool_s": rsa_result.cold,
            "keygen_s": rsa_result.keygen,
            "empty_pool_over_keygen": rsa_result.cold_ratios(),
        },
        statements={
            f"{algo} {size}": {
                "rotate_batch": [s.kind() for s in found.rotate],
                "publish_and_relay": [s.kind() for s in found.after],
            }
            for (algo, size), found in statements.items()
        },
        single_realm_statements=trips,
    )
    return report


def add_fast_rows(report: Report, fast: dict[str, Fast], noop: float) -> None:
    for algo, result in fast.items():
        batched, single = median(result.batched), median(result.single)
        speedups = [b / s for b, s in zip(result.batched, result.single, strict=True)]
        report.add(
            f"{algo}: batched rotations per second, one pool process",
            rate(batched),
            f"≥ {BATCH_TARGET:,.0f}/s",
            batched >= BATCH_TARGET,
            f"{ms(1 / batched)} a rotation (key generation {us(median(result.keygen))});"
            f" {BATCHED_REALMS:,} realms in `rotate_realms` batches of {BATCH} a run;"
            f" {x(median(speedups))} the single-realm tasks",
        )
        report.add(
            f"  anchor: {algo}, one `rotate_realm` task per realm",
            rate(single),
            note=f"{ms(1 / single)} a rotation; {SINGLE_REALMS} realms a run",
        )
        steps = {s: median([run[s] for run in result.steps]) for s in result.steps[0]}
        report.add(
            f"  {algo} batches of {BATCH} in process, no Celery, a rotation",
            ms(sum(steps.values())),
            note=" + ".join(f"{name} {ms(seconds)}" for name, seconds in steps.items())
            + f"; {IN_PROCESS_BATCHES} batches a run",
        )
        report.add(
            f"  {algo}: Redis commands a rotation, batched / single",
            f"{median(result.redis_batched):.1f} / {median(result.redis_single):.0f}",
            note="those run inside keyrotor's Lua scripts and the broker's included",
        )
    report.add(
        "anchor: a no-op Celery task on the same worker",
        ms(noop),
        note=f"{rate(1 / noop)}; acks_late, prefetch 1",
    )


def add_rsa_rows(report: Report, result: Rsa) -> None:
    ratios = result.ratios()
    warm, es256 = median(result.warm), median(result.es256)
    report.add(
        "rs256-2048 with a warm pool / es256, a batched rotation",
        x(median(ratios)),
        f"≤ {RSA_TARGET}x",
        median(ratios) <= RSA_TARGET,
        f"{ms(warm)} against {ms(es256)}; median of {RUNS} pairs from the same runs:"
        f" {', '.join(f'{r:.2f}' for r in ratios)}; {BATCHED_REALMS:,} realms a run,"
        f" pooled keys taken {min(result.taken):,} to {max(result.taken):,}",
    )
    report.add(
        "  rs256-2048 with a warm pool: batched rotations per second",
        rate(1 / warm),
        note=f"pooled rows reuse {POOL_DISTINCT} generated keys, each row sealed under its own"
        " pooled id",
    )
    cold, keygen = median(result.cold), median(result.keygen)
    report.add(
        f"rs256-2048, empty pool: {RSA_COLD_REALMS} realms in one batch",
        f"{cold:.2f} s",
        note=f"{rate(RSA_COLD_REALMS / cold)}; {ms(cold / RSA_COLD_REALMS)} a rotation,"
        " every key generated inside the batch's transaction",
    )
    report.add(
        f"  anchor: {RSA_COLD_REALMS} RSA-2048 keys generated alone",
        f"{keygen:.2f} s",
        note=f"{ms(keygen / RSA_COLD_REALMS)} a key",
    )
    cold_ratios = result.cold_ratios()
    report.add(
        "  rs256 empty pool / key generation (the former target, for reference)",
        x(median(cold_ratios)),
        f"(was ≤ {RSA_TARGET}x)",
        note=f"median of {RUNS} interleaved pairs: {', '.join(f'{r:.2f}' for r in cold_ratios)};"
        f" {ms((cold - keygen) / RSA_COLD_REALMS)} a rotation beyond its key",
    )


def add_statement_rows(
    report: Report, found: dict[tuple[str, int], BatchStatements], trips: dict[str, int]
) -> None:
    small, large = COUNT_SIZES
    grown: set[str] = set()
    for algo in ("es256", "rs256"):
        label = "es256" if algo == "es256" else "rs256, pooled keys"
        for step in ("rotate", "after"):
            a = getattr(found[(algo, small)], step)
            b = getattr(found[(algo, large)], step)
            kinds_a, kinds_b = Counter(s.kind() for s in a), Counter(s.kind() for s in b)
            grown |= {kind for kind in kinds_b if kinds_b[kind] > kinds_a[kind]}
            many = [s for s in b if s.executemany]
            name = "`rotate_batch`" if step == "rotate" else "publish JWKS + relay"
            report.add(
                f"database statements: {name}, {label}, batch of {small} / {large}",
                f"{len(a)} / {len(b)}",
                note=(
                    f"{len(many)} of them executemany ({', '.join(s.kind() for s in many)})"
                    if many
                    else ""
                ),
            )
    report.details.append(
        f"Statements of a batch of {large} (es256): "
        + "; ".join(
            f"{kind} x{n}"
            for kind, n in Counter(s.kind() for s in found[("es256", large)].rotate).items()
        )
        + " | then "
        + "; ".join(
            f"{kind} x{n}"
            for kind, n in Counter(s.kind() for s in found[("es256", large)].after).items()
        )
    )
    flat = not (grown - {"INSERT events"})
    report.add(
        f"statements per batch do not grow from {small} to {large} realms",
        "yes" if flat else f"no: {', '.join(sorted(grown))}",
        "no per-realm round trip beyond the outbox row",
        flat,
        "BEGIN/COMMIT and a pool pre-ping per transaction not counted"
        + (f"; grows: {', '.join(sorted(grown))}" if grown else ""),
    )
    report.add(
        "single-realm `rotate_realm`: rotate / publish / relay, a realm with 1 key; with 6",
        "; ".join(
            " / ".join(str(trips[f"{step} ({keys_held})"]) for step in SINGLE_STEPS)
            for keys_held in ("1 key", "6 keys")
        ),
        "no N+1",
        all(trips[f"{step} (6 keys)"] <= trips[f"{step} (1 key)"] for step in SINGLE_STEPS),
    )
