"""Scale: what reads every realm, and what one scrape reads, at 10,000 and at 1,000,000 realms.

Each size is a private schema filled in bulk (the service would take hours): realm rows as in
the due scan (100 of them overdue, for /metrics), one active ES256 key row each, then
`VACUUM ANALYZE`; every realm published in Redis (a hash each, pipelined) and on disk
(`<jwks_dir>/<realm>/jwks.json` and `.version`, as `Publisher.write_file` leaves them, without
its fsyncs). Then, the two sizes alternating:

- `GET /metrics` from a real `keyrotor web`, on a warm keep-alive connection: time and bytes;
- the start-up reconcile (`worker.publish.jwks.reconcile`, all that `keyrotor.reconcile_jwks`
  runs, on the objects its worker context builds) in process: with every copy current, and
  with 1% of realms one version ahead of both their copies;
- `keyrotor doctor --check jwks`, the whole command, beside `keyrotor doctor --check database`
  (the command's own start-up and one query).

Last, the outbox under continuous rotation: 200 realms rotated through the task functions
(`rotate_realm`, then `purge_expired`, `relay_events`, `prune_events`) every 15 s of an
injected clock, with `KEYROTOR_EVENTS_RETENTION=1m`: the `events` row count after each round.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import httpx
import redis
from redis.typing import EncodableT, FieldT
from sqlalchemy import Engine, text

from bench.cold_start import keyrotor_command
from bench.due_scan import fill_realms
from bench.support import (
    RUNS,
    Deployment,
    Process,
    Report,
    deployment,
    free_port,
    median,
    ms,
    spawn,
    wait_for,
    x,
)
from worker import runtime
from worker.core import keys
from worker.publish.jwks import Publisher, body, etag, reconcile, redis_key
from worker.publish.relay import Relay
from worker.service import Service

SMALL = 10_000
# KEYROTOR_BENCH_SCALE_REALMS: a smaller large side for a trial run (the files alone need
# ~12 GiB free at 1,000,000 realms).
LARGE = int(os.environ.get("KEYROTOR_BENCH_SCALE_REALMS", "1000000"))
OVERDUE = 100
LAGGING = 100  # one realm in this many is made to lag for the second reconcile
SCRAPES = 15  # per size, alternating, after two to warm up
PUBLISH_BATCH = 10_000
DISK_PER_REALM = 13 * 1024  # a folder and two one-block files on ext4, and some room

METRICS_MS, METRICS_BYTES, METRICS_SPREAD = 50.0, 30_000, 0.2
RECONCILE_S, DOCTOR_S = 60.0, 10.0

OUTBOX_REALMS, OUTBOX_ROUNDS, OUTBOX_STEP = 200, 16, timedelta(seconds=15)
OUTBOX_RETENTION = timedelta(minutes=1)
OUTBOX_FLAT = 1.1  # the last rounds hold at most this much more than the first full window
# Seconds-scale policies, so keys expire and are purged as they would over months.
FAST = {
    "rotation_period": "6s",
    "prepublish": "2s",
    "grace": "3s",
    "max_token_ttl": "1s",
    "clock_skew": "1s",
    "jwks_max_age": "1s",
    "tick": "1s",
    "events_retention": "1m",
}

KEYS = """
INSERT INTO jwt_keys (id, realm_id, algo, use, state, public_pem, sealed_secret, created_at,
                      activated_at)
SELECT 'jky_' || substr(md5('key' || id), 1, 22), id, algo, 'sign', 'active', :pem, :sealed,
       created_at, created_at
FROM realms
"""
LAG = "UPDATE realms SET jwks_version = jwks_version + 1 WHERE substr(name, 7)::int % :every = 0"

Published = tuple[str, str, bytes, int]  # realm id, name, JWKS bytes, jwks_version


# -- filling a deployment ----------------------------------------------------------------------


def fill_keys(engine: Engine, material: keys.KeyMaterial | None = None) -> None:
    """One active key row per realm, of the realm's algo, all sharing one public key
    (`material`'s, else a fresh ES256 one: the realms must be of its algo). The sealed secret
    is a placeholder: nothing measured here opens it (`doctor --check jwks` reads no secrets,
    and a rotation only retires the old key)."""
    material = material or keys.generate("es256")
    with engine.begin() as connection:
        connection.execute(text(KEYS), {"pem": material.public_pem, "sealed": b"\x00" * 64})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE jwt_keys"))


def publications(engine: Engine) -> Iterator[list[Published]]:
    """Every realm's JWKS as the service would publish it, a page at a time, in id order."""
    with engine.connect() as connection:
        rows = connection.execution_options(stream_results=True, yield_per=PUBLISH_BATCH).execute(
            text(
                "SELECT r.id, r.name, r.jwks_version, k.id, k.algo, k.public_pem FROM realms r"
                " JOIN jwt_keys k ON k.realm_id = r.id ORDER BY r.id"
            )
        )
        member: dict[str, str] | None = None  # the keys share one public key: made once
        for partition in rows.partitions():
            page = []
            for realm_id, name, version, kid, algo, pem in partition:
                member = member or keys.public_jwk(algo, kid, pem)
                page.append((realm_id, name, body({"keys": [{**member, "kid": kid}]}), version))
            yield page


def publish_redis(client: redis.Redis, page: list[Published]) -> None:
    pipe = client.pipeline(transaction=False)
    for realm_id, name, document, version in page:
        mapping: dict[FieldT, EncodableT] = {
            "jwks_version": version,
            "document": document,
            "etag": etag(document),
            "next_change_at": "",
            "realm_name": name,
        }
        pipe.hset(redis_key(realm_id), mapping=mapping)
    pipe.execute()


def publish_files(folder: int, page: list[Published]) -> None:
    """jwks.json and .version under the JWKS folder (an open descriptor), as
    `Publisher.write_file` leaves them (`.version` a 20-digit number and a newline); no fsync
    and no lock file: this is set-up."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for realm_id, _, document, version in page:
        os.mkdir(realm_id, dir_fd=folder)
        for name, data in (("jwks.json", document), (".version", f"{version:020d}\n".encode())):
            handle = os.open(f"{realm_id}/{name}", flags, 0o644, dir_fd=folder)
            try:
                os.write(handle, data)
            finally:
                os.close(handle)


def publish_all(engine: Engine, client: redis.Redis, jwks_dir: Path) -> dict[str, float]:
    """Every realm into Redis and on disk; the seconds each took."""
    spent = {"redis": 0.0, "files": 0.0}
    jwks_dir.mkdir(parents=True, exist_ok=True)
    folder = os.open(jwks_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for page in publications(engine):
            started = time.perf_counter()
            publish_redis(client, page)
            spent["redis"] += time.perf_counter() - started
            started = time.perf_counter()
            publish_files(folder, page)
            spent["files"] += time.perf_counter() - started
    finally:
        os.close(folder)
    return spent


@dataclass
class Side:
    """One size under test: its deployment, engine, publisher and `keyrotor web`."""

    realms: int
    dep: Deployment
    engine: Engine
    publisher: Publisher
    web: Process | None = None
    url: str = ""


def prepare(dep: Deployment, realms: int, setup: dict[str, float]) -> Side:
    engine = runtime.engine(str(dep.settings.database_url))
    started = time.perf_counter()
    fill_realms(engine, realms, OVERDUE, datetime.now(UTC).replace(microsecond=0))
    fill_keys(engine)
    setup[f"database_{realms}"] = time.perf_counter() - started
    for what, seconds in publish_all(engine, dep.redis, dep.settings.jwks_dir).items():
        setup[f"{what}_{realms}"] = seconds
    return Side(realms, dep, engine, runtime.publisher(dep.settings))


def start_web(side: Side) -> None:
    port = free_port()
    argv = [*keyrotor_command(), "web", "--host", "127.0.0.1", "--port", str(port)]
    side.web = spawn(f"web-{side.realms}", argv, side.dep.env, side.dep.folder)
    side.url = f"http://127.0.0.1:{port}"
    web = side.web

    def answers() -> bool:
        if web.popen.poll() is not None:
            raise RuntimeError(f"keyrotor web exited:\n{web.log()[-2000:]}")
        try:
            return httpx.get(side.url + "/healthz", timeout=2).status_code > 0
        except httpx.HTTPError:
            return False

    wait_for(answers, 60, "keyrotor web")


# -- the measurements --------------------------------------------------------------------------


def scrape(client: httpx.Client, side: Side) -> tuple[float, int]:
    started = time.perf_counter()
    answer = client.get(side.url + "/metrics")
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    return elapsed, len(answer.content)


def timed_reconcile(side: Side, expected: int) -> float:
    started = time.perf_counter()
    republished = reconcile(side.dep.service, side.publisher)
    elapsed = time.perf_counter() - started
    assert republished == expected, (side.realms, republished, expected)
    return elapsed


def timed_doctor(side: Side, check: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [*keyrotor_command(), "doctor", "--check", check],
        env=side.dep.env,
        cwd=side.dep.folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stdout + done.stderr
    if check == "jwks":
        assert f"{side.realms} realms, each published at its current version" in done.stdout
    return elapsed


def events_count(service: Service) -> int:
    with service.sessions() as session:
        return int(session.execute(text("SELECT count(*) FROM events")).scalar_one())


def outbox_rounds() -> list[tuple[int, int]]:
    """(events rows, pruned) after each round of continuous rotation with pruning.

    The task functions run in process on a context whose service and relay read an injected
    clock, so 4 minutes of rotation take as long as the rotations themselves."""
    with ExitStack() as stack:
        dep = stack.enter_context(deployment("scale_outbox", **FAST))
        url = str(dep.settings.redis_url)
        with mock.patch.dict(os.environ, {"KEYROTOR_REDIS_URL": url}):
            from worker.jobs import tasks  # the Celery app reads the broker URL on import
        now = [datetime.now(UTC)]
        base = dep.service
        service = Service(base.sessions, base.master_keys, base.limits, lambda: now[0])
        client = redis.Redis.from_url(url)
        stack.callback(client.close)
        publisher = Publisher(client, dep.settings.jwks_dir)
        relay = Relay(service, client, publisher=publisher, clock=lambda: now[0])
        context = tasks.Context(dep.settings, service, relay)
        stack.enter_context(mock.patch.object(tasks, "context", lambda: context))
        realm_ids = [service.create_realm(f"r{n}", algo="es256").id for n in range(OUTBOX_REALMS)]
        relay.relay_all()
        rounds = []
        for _ in range(OUTBOX_ROUNDS):
            now[0] += OUTBOX_STEP
            for realm_id in realm_ids:
                tasks.rotate_realm(realm_id, force=True)
            tasks.purge_expired()
            tasks.relay_events()
            pruned = tasks.prune_events()
            rounds.append((events_count(service), pruned))
        return rounds


def run() -> Report:
    report = Report("scale", f"Scale: {LARGE:,} realms vs {SMALL:,}")
    rounds = outbox_rounds()

    free = shutil.disk_usage(os.environ.get("TMPDIR", "/tmp")).free
    if free < (SMALL + LARGE) * DISK_PER_REALM:
        raise RuntimeError(
            f"{(SMALL + LARGE) * DISK_PER_REALM / 2**30:.0f} GiB free needed under the temporary"
            f" folder for the JWKS files, {free / 2**30:.0f} GiB there"
        )
    setup: dict[str, float] = {}
    sizes = (SMALL, LARGE)
    times: dict[str, dict[int, list[float]]] = {
        name: {size: [] for size in sizes}
        for name in ("metrics", "current", "lagging", "doctor", "doctor_start")
    }
    sizes_bytes: dict[int, list[int]] = {size: [] for size in sizes}
    with ExitStack() as stack:
        sides = [
            prepare(stack.enter_context(deployment(f"scale_{size}")), size, setup) for size in sizes
        ]
        for side in sides:
            start_web(side)
            assert side.web is not None
            stack.callback(side.web.stop)

        client = stack.enter_context(httpx.Client(timeout=30))
        for _ in range(2):
            for side in sides:
                scrape(client, side)
        for _ in range(SCRAPES):
            for side in sides:
                elapsed, size = scrape(client, side)
                times["metrics"][side.realms].append(elapsed)
                sizes_bytes[side.realms].append(size)

        for _ in range(RUNS):
            for side in sides:
                times["current"][side.realms].append(timed_reconcile(side, 0))
        for _ in range(RUNS):
            for side in sides:
                with side.engine.begin() as connection:
                    connection.execute(text(LAG), {"every": LAGGING})
                lagging = side.realms // LAGGING
                times["lagging"][side.realms].append(timed_reconcile(side, lagging))
        for _ in range(RUNS):
            for side in sides:
                times["doctor"][side.realms].append(timed_doctor(side, "jwks"))
                times["doctor_start"][side.realms].append(timed_doctor(side, "database"))

    def at(name: str, size: int) -> float:
        return median(times[name][size])

    def spread(name: str) -> float:
        return at(name, LARGE) / at(name, SMALL)

    small_bytes, large_bytes = median(sizes_bytes[SMALL]), median(sizes_bytes[LARGE])
    scrape_ms = max(at("metrics", SMALL), at("metrics", LARGE)) * 1000
    report.add(
        "GET /metrics, real `keyrotor web`",
        f"{ms(at('metrics', LARGE))} vs {ms(at('metrics', SMALL))}",
        f"≤ {METRICS_MS:.0f} ms, ±{METRICS_SPREAD:.0%}",
        scrape_ms <= METRICS_MS and abs(spread("metrics") - 1) <= METRICS_SPREAD,
        f"{x(spread('metrics'))}; median of {SCRAPES} alternating scrapes",
    )
    report.add(
        "/metrics body",
        f"{large_bytes:,.0f} vs {small_bytes:,.0f} bytes",
        f"≤ {METRICS_BYTES:,} bytes, ±{METRICS_SPREAD:.0%}",
        max(small_bytes, large_bytes) <= METRICS_BYTES
        and abs(large_bytes / small_bytes - 1) <= METRICS_SPREAD,
    )
    republished = f"{LARGE // LAGGING:,} vs {SMALL // LAGGING:,} realms republished"
    for name, what, note in (
        ("current", "every copy current", "nothing republished"),
        ("lagging", "1% lagging", republished),
    ):
        report.add(
            f"start-up reconcile, {what}",
            f"{at(name, LARGE):.1f} s vs {ms(at(name, SMALL))}",
            f"≤ {RECONCILE_S:.0f} s at {LARGE:,}",
            at(name, LARGE) <= RECONCILE_S,
            f"{x(spread(name))}; {note}; median of {RUNS}",
        )
    report.add(
        "`keyrotor doctor --check jwks`, whole command",
        f"{at('doctor', LARGE):.1f} s vs {at('doctor', SMALL):.2f} s",
        f"≤ {DOCTOR_S:.0f} s at {LARGE:,}",
        at("doctor", LARGE) <= DOCTOR_S,
        f"Redis and files; median of {RUNS}",
    )
    report.add(
        "`keyrotor doctor --check database` (the command's start-up)",
        f"{at('doctor_start', LARGE):.2f} s vs {at('doctor_start', SMALL):.2f} s",
        note="anchor",
    )

    counts = [count for count, _ in rounds]
    window = math.ceil(OUTBOX_RETENTION / OUTBOX_STEP) + 1  # the first round pruning a window
    first, last = max(counts[window : window + 3]), max(counts[-3:])
    report.add(
        f"outbox rows, {OUTBOX_REALMS} realms rotated every {OUTBOX_STEP.seconds} s, retention 1m",
        f"{last:,} after round {len(counts)} vs {first:,} after round {window + 1}",
        f"flat (≤ {OUTBOX_FLAT}x)",
        last <= first * OUTBOX_FLAT,
        f"{sum(p for _, p in rounds):,} pruned in all; an injected clock",
    )
    for size in sizes:
        report.add(
            f"set-up, {size:,} realms",
            f"database {setup[f'database_{size}']:.1f} s, Redis {setup[f'redis_{size}']:.1f} s,"
            f" files {setup[f'files_{size}']:.1f} s",
            note="bulk, not a target",
        )
    report.details.append(
        "outbox rows after each round: " + ", ".join(f"{count:,}" for count in counts)
    )
    report.data.update(
        metrics_s={str(k): v for k, v in times["metrics"].items()},
        metrics_bytes={str(k): v for k, v in sizes_bytes.items()},
        reconcile_current_s={str(k): v for k, v in times["current"].items()},
        reconcile_lagging_s={str(k): v for k, v in times["lagging"].items()},
        doctor_jwks_s={str(k): v for k, v in times["doctor"].items()},
        doctor_database_s={str(k): v for k, v in times["doctor_start"].items()},
        outbox_rounds=rounds,
        setup_s=setup,
    )
    return report
