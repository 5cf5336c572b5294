"""Rotation through a real Celery worker on PostgreSQL, against what its key generation costs.

An RS256 rotation is dominated by making the RSA key, so its anchor is generating the same
number of keys in one process, measured in the same run, interleaved. An ES256 or EdDSA key
costs microseconds, so there the worker's own overhead (Celery, the transaction, publishing
the JWKS, relaying the event) is the whole cost, and it is reported per process and per
database round trip.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import Engine, event, func, select

from bench.support import (
    RUNS,
    Deployment,
    Report,
    celery_worker,
    deployment,
    median,
    ms,
    rate,
    seed_realms,
    us,
    wait_for,
    x,
)
from worker import runtime
from worker.events import STREAM
from worker.jwks import publish_realm
from worker.lifecycle import State
from worker.relay import Relay, relay_after_commit
from worker.store.db import transaction
from worker.store.models import JwtKey

RSA_REALMS = 200
FAST_REALMS = 1000
RSA_TARGET = 1.15
FAST_TARGET = 300.0
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


def rotate_through_worker(dep: Deployment, app: Any, realm_ids: list[str]) -> float:
    """Seconds from sending one `rotate_realm(force=True)` per realm until every rotation's
    event is in the stream (committed, JWKS published, event relayed)."""
    start = time.perf_counter()
    for realm_id in realm_ids:
        app.send_task("keyrotor.rotate_realm", args=[realm_id, True])
    wait_for(
        lambda: dep.redis.xlen(STREAM) >= len(realm_ids),
        timeout=60 + 0.5 * len(realm_ids),
        what=f"{len(realm_ids)} rotations",
        every=0.005,
    )
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


def redis_calls(dep: Deployment) -> Counter[str]:
    stats: dict[str, Any] = dep.redis.info("commandstats")
    return Counter({name: int(value["calls"]) for name, value in stats.items()})


@contextmanager
def counting(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements sent while the block runs: database round trips."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def round_trips(dep: Deployment) -> dict[str, int]:
    """Statements per step of one rotation, for a realm with 1 key and one with 6 keys: equal
    counts mean no query per key (no N+1). Transaction BEGIN/COMMIT are not statements here."""
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
            relay_after_commit(relay)
        counts[f"rotate ({label})"] = len(rotate)
        counts[f"publish JWKS ({label})"] = len(publish)
        counts[f"relay event ({label})"] = len(relayed)
    return counts


def run() -> Report:
    report = Report("rotation", "Rotation through a real Celery worker on PostgreSQL")
    with deployment("rotation") as dep:
        worker = celery_worker("rotation", dep.env, dep.folder, concurrency=1)
        app = dep.celery()
        try:
            rsa_rows = measure_rsa(dep, app)
            fast_rows = {algo: measure_fast(dep, app, algo) for algo in ("es256", "eddsa")}
            trips = round_trips(dep)
        finally:
            app.close()
            worker.stop()

    keygen, through, ratios = rsa_rows
    ratio = median(ratios)
    report.add(
        f"rs256-2048: {RSA_REALMS} rotations, 1 worker process",
        f"{through:.2f} s ({ms(through / RSA_REALMS)} each)",
    )
    report.add(
        f"anchor: {RSA_REALMS} RSA-2048 keys generated alone",
        f"{keygen:.2f} s ({ms(keygen / RSA_REALMS)} each)",
    )
    report.add(
        "rs256 rotation / key generation",
        x(ratio),
        f"≤ {RSA_TARGET}×",
        ratio <= RSA_TARGET,
        f"median of {len(ratios)} interleaved pairs: {', '.join(f'{r:.2f}' for r in ratios)}",
    )
    for algo, (per_second, keygen_each, overhead) in fast_rows.items():
        report.add(
            f"{algo}: rotations per second, 1 worker process",
            rate(per_second),
            f"≥ {FAST_TARGET:.0f}/s",
            per_second >= FAST_TARGET,
            f"{FAST_REALMS} realms a run; key generation {us(keygen_each)} of {ms(overhead)}",
        )
    for step, count in trips.items():
        report.add(f"database statements: {step}", str(count))
    flat = trips["rotate (1 key)"] == trips["rotate (6 keys)"]
    report.add(
        "statements independent of the number of keys (no N+1)",
        "yes" if flat else "no",
        "no N+1",
        flat and trips["publish JWKS (1 key)"] == trips["publish JWKS (6 keys)"],
    )
    report.data.update(
        rs256={"through_worker_s": through, "keygen_s": keygen, "ratios": ratios},
        fast={algo: {"per_second": r[0], "keygen_s": r[1]} for algo, r in fast_rows.items()},
        statements=trips,
        redis_commands_per_rotation=_redis_per_rotation,
    )
    return report


_redis_per_rotation: dict[str, float] = {}


def measure_rsa(dep: Deployment, app: Any) -> tuple[float, float, list[float]]:
    """Median seconds for key generation alone and through the worker, and the ratio of
    each interleaved pair."""
    keygens, throughs, ratios = [], [], []
    for _ in range(RUNS):
        dep.clear()
        realm_ids = seed_realms(dep.service, RSA_REALMS, "rs256")
        keygen = generate_keys("rs256", RSA_REALMS)
        through = rotate_through_worker(dep, app, realm_ids)
        check_rotated(dep, RSA_REALMS)
        keygens.append(keygen)
        throughs.append(through)
        ratios.append(through / keygen)
    return median(keygens), median(throughs), ratios


def measure_fast(dep: Deployment, app: Any, algo: str) -> tuple[float, float, float]:
    """Median rotations per second, key generation per key, and seconds per rotation."""
    rates, keygens = [], []
    for _ in range(RUNS):
        dep.clear()
        realm_ids = seed_realms(dep.service, FAST_REALMS, algo)
        keygens.append(generate_keys(algo, FAST_REALMS) / FAST_REALMS)
        before = redis_calls(dep)
        seconds = rotate_through_worker(dep, app, realm_ids)
        after = redis_calls(dep)
        check_rotated(dep, FAST_REALMS)
        rates.append(FAST_REALMS / seconds)
        calls = after - before
        calls.pop("cmdstat_xlen", None)  # the benchmark's own polling
        calls.pop("cmdstat_info", None)
        _redis_per_rotation[algo] = sum(calls.values()) / FAST_REALMS
    per_second = median(rates)
    return per_second, median(keygens), 1 / per_second
