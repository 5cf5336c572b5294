"""Rotation through a real Celery worker on PostgreSQL, against what its key generation costs.

An RS256 rotation is dominated by making the RSA key, so its anchor is generating the same
number of keys in one process, measured in the same run, interleaved. An ES256 or EdDSA key
costs microseconds, so there the worker's own path (Celery, the transaction, publishing the
JWKS, relaying the event) is the whole cost; it is split into a no-op Celery task on the
same worker and the same work done in process, and counted in database statements.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    rate,
    seed_realms,
    us,
    wait_for,
    x,
)
from worker import runtime
from worker.client.events import STREAM
from worker.core.lifecycle import State
from worker.publish.jwks import publish_realm
from worker.publish.relay import Relay
from worker.store.db import transaction
from worker.store.models import JwtKey

RSA_REALMS = 200
FAST_REALMS = 300
IN_PROCESS_REALMS = 100
NOOPS = 500
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


def noops_through_worker(app: Any, worker: Process, count: int) -> float:
    """Seconds for `count` no-op tasks (Celery's built-in `celery.accumulate`): what the
    worker costs per task before keyrotor does anything."""
    done = re.compile(r"Task celery\.accumulate\[[^\]]+\] succeeded")
    before = len(done.findall(worker.log()))
    start = time.perf_counter()
    for _ in range(count):
        app.send_task("celery.accumulate")
    wait_for(lambda: len(done.findall(worker.log())) >= before + count, 120, "no-ops", every=0.01)
    return time.perf_counter() - start


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
    """Statements per step of one rotation, for a realm with 1 key and one with 6: equal
    counts mean no query per key (no N+1). BEGIN and COMMIT are not counted here."""
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


def in_process(dep: Deployment, algo: str) -> dict[str, float]:
    """Seconds per rotation for each step of the task's work, without Celery."""
    publisher = runtime.publisher(dep.settings)
    relay = Relay(dep.service, publisher.redis, publisher=publisher)
    dep.clear()
    realm_ids = seed_realms(dep.service, IN_PROCESS_REALMS, algo)
    spent = {"rotate": 0.0, "publish": 0.0, "relay": 0.0}
    for realm_id in realm_ids:
        started = time.perf_counter()
        dep.service.rotate(realm_id, force=True)
        rotated = time.perf_counter()
        publish_realm(dep.service, publisher, realm_id)
        published = time.perf_counter()
        relay.relay()
        spent["rotate"] += rotated - started
        spent["publish"] += published - rotated
        spent["relay"] += time.perf_counter() - published
    return {step: seconds / len(realm_ids) for step, seconds in spent.items()}


@dataclass
class Fast:
    """ES256 / EdDSA: rotations per second through the worker, and what makes them up."""

    rates: list[float] = field(default_factory=list)
    keygen: list[float] = field(default_factory=list)
    noop: list[float] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    redis_per_rotation: list[float] = field(default_factory=list)


def measure_fast(dep: Deployment, app: Any, worker: Process, algo: str) -> Fast:
    fast = Fast()
    for _ in range(RUNS):
        fast.noop.append(noops_through_worker(app, worker, NOOPS) / NOOPS)
        fast.steps.append(in_process(dep, algo))
        dep.clear()
        realm_ids = seed_realms(dep.service, FAST_REALMS, algo)
        fast.keygen.append(generate_keys(algo, FAST_REALMS) / FAST_REALMS)
        before = redis_calls(dep)
        seconds = rotate_through_worker(dep, app, realm_ids)
        calls = redis_calls(dep) - before
        check_rotated(dep, FAST_REALMS)
        fast.rates.append(FAST_REALMS / seconds)
        for own in ("cmdstat_xlen", "cmdstat_info"):  # the benchmark's own polling
            calls.pop(own, None)
        fast.redis_per_rotation.append(sum(calls.values()) / FAST_REALMS)
    return fast


def measure_rsa(dep: Deployment, app: Any) -> tuple[list[float], list[float]]:
    """Seconds for key generation alone and through the worker, run by run, interleaved."""
    keygens, throughs = [], []
    for _ in range(RUNS):
        dep.clear()
        realm_ids = seed_realms(dep.service, RSA_REALMS, "rs256")
        keygens.append(generate_keys("rs256", RSA_REALMS))
        throughs.append(rotate_through_worker(dep, app, realm_ids))
        check_rotated(dep, RSA_REALMS)
    return keygens, throughs


def run() -> Report:
    report = Report("rotation", "Rotation through a real Celery worker on PostgreSQL")
    with deployment("rotation") as dep:
        worker = celery_worker("rotation", dep.env, dep.folder, concurrency=1)
        app = dep.celery()
        try:
            keygens, throughs = measure_rsa(dep, app)
            fast = {algo: measure_fast(dep, app, worker, algo) for algo in ("es256", "eddsa")}
            trips = round_trips(dep)
        finally:
            app.close()
            worker.stop()

    ratios = [t / k for t, k in zip(throughs, keygens, strict=True)]
    through, keygen = median(throughs), median(keygens)
    report.add(
        f"rs256-2048: {RSA_REALMS} rotations, one pool process",
        f"{through:.2f} s",
        note=f"{ms(through / RSA_REALMS)} a rotation",
    )
    report.add(
        f"anchor: {RSA_REALMS} RSA-2048 keys generated alone",
        f"{keygen:.2f} s",
        note=f"{ms(keygen / RSA_REALMS)} a key",
    )
    report.add(
        "rs256 rotations / key generation",
        x(median(ratios)),
        f"≤ {RSA_TARGET}x",
        median(ratios) <= RSA_TARGET,
        f"median of {RUNS} interleaved pairs: {', '.join(f'{r:.2f}' for r in ratios)};"
        f" {ms((through - keygen) / RSA_REALMS)} a rotation beyond the key",
    )
    for algo, result in fast.items():
        per_second = median(result.rates)
        report.add(
            f"{algo}: rotations per second, one pool process",
            rate(per_second),
            f"≥ {FAST_TARGET:.0f}/s",
            per_second >= FAST_TARGET,
            f"{ms(1 / per_second)} a rotation, of which key generation"
            f" {us(median(result.keygen))}; {FAST_REALMS} realms a run",
        )
        steps = {s: median([run[s] for run in result.steps]) for s in result.steps[0]}
        report.add(
            f"  {algo} in process, no Celery: rotate + publish JWKS + relay",
            ms(sum(steps.values())),
            note=" + ".join(f"{name} {ms(seconds)}" for name, seconds in steps.items()),
        )
        report.add(
            f"  {algo}: a no-op Celery task on the same worker",
            ms(median(result.noop)),
            note=f"{rate(1 / median(result.noop))}; Redis commands a rotation:"
            f" {median(result.redis_per_rotation):.0f} (broker included)",
        )
    for step, count in trips.items():
        report.add(f"database statements: {step}", str(count))
    flat = all(
        trips[f"{step} (6 keys)"] <= trips[f"{step} (1 key)"]
        for step in ("rotate", "publish JWKS", "relay event")
    )
    report.add(
        "statements per rotation do not grow with the keys (no N+1)",
        "yes" if flat else "no",
        "no N+1",
        flat,
        "plus BEGIN/COMMIT and a pool pre-ping per transaction (4 transactions)",
    )
    report.data.update(
        rs256={"through_worker_s": throughs, "keygen_s": keygens, "ratios": ratios},
        fast={
            algo: {
                "per_second": r.rates,
                "keygen_s": r.keygen,
                "noop_s": r.noop,
                "in_process_s": r.steps,
                "redis_commands_per_rotation": r.redis_per_rotation,
            }
            for algo, r in fast.items()
        },
        statements=trips,
    )
    return report
