"""Real Celery workers and beats as subprocesses, on the test database and the test Redis."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery import Celery

from worker.core.sealing import generate_master_key
from worker.jobs.app import make_app
from worker.publish.jwks import Publisher
from worker.runtime import build_service
from worker.service import Service
from worker.settings import Settings, load_settings

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]

# Seconds-scale policy: a realm prepublishes at 4s, rotates at 6s, purges 3s later.
FAST = {
    "algo": "es256",
    "rotation_period": "6s",
    "prepublish": "2s",
    "grace": "3s",
    "max_token_ttl": "1s",
    "clock_skew": "1s",
    "jwks_max_age": "1s",
    "tick": "1s",
}


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll until `check` returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Stack:
    """One keyrotor deployment under test: settings, a service, and the processes started."""

    tmp: Path
    env: dict[str, str]
    settings: Settings
    service: Service
    redis: redis.Redis
    app: Celery
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def publisher(self) -> Publisher:
        return Publisher(self.redis, self.settings.jwks_dir)

    def spawn(self, name: str, argv: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv,
            cwd=self.tmp,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg reaches the pool children
        )
        self.procs[name] = proc
        return proc

    def worker(self, name: str, *extra: str, script: Path | None = None, **env: str) -> Any:
        args = ["--loglevel", "INFO", "-n", f"{name}@%h", "--without-mingle", "--without-gossip"]
        args += list(extra) or ["--concurrency", "2"]
        argv = (
            [sys.executable, str(script), *args]
            if script
            else [sys.executable, "-m", "celery", "-A", "worker", "worker", *args]
        )
        proc = self.spawn(name, argv, **env)
        wait_for(lambda: "ready." in self.log(name) or proc.poll() is not None, 30, f"{name}")
        assert proc.poll() is None, self.log(name)
        return proc

    def beat(self, name: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "celery", "-A", "worker", "beat"]
        return self.spawn(name, [*argv, "--loglevel", "INFO"])

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def send(self, task: str, *args: Any) -> None:
        self.app.send_task(task, args=list(args))

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Signal a process group and wait; SIGKILL it if it lingers."""
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # pool children left behind by a killed parent

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        self.app.close()


def make_stack(tmp: Path, database_url: str, redis_url: str, **overrides: str) -> Stack:
    values = {
        **FAST,
        "database_url": database_url,
        "redis_url": redis_url,
        "master_keys": generate_master_key(),
        "var_dir": str(tmp / "var"),
        "jwks_dir": str(tmp / "jwks"),
        **overrides,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
    env.update({f"KEYROTOR_{k.upper()}": v for k, v in values.items()})
    env["PYTHONPATH"] = str(ROOT)
    settings = load_settings(**values)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    return Stack(
        tmp=tmp,
        env=env,
        settings=settings,
        service=build_service(settings),
        redis=client,
        app=make_app(settings, redis_url),
    )
