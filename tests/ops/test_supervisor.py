"""`serve` in a real subprocess, with stand-in children: it starts, restarts and stops them all.

The children are tiny Python scripts rather than Celery, so these tests need no worker or beat;
Valkey and the database are real. Every test kills its process group in a `finally`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from tests.support.stack import wait_for
from worker.ops.supervisor import READY_WAIT, Probe, _Banner, banner, web_answers
from worker.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# Each child appends one line to $MARK when it starts: its pid, then what it was given.
MARKER = (
    "import os; line = ' '.join([str(os.getpid()), os.environ['KEYROTOR_REDIS_URL'],"
    " os.environ['KEYROTOR_ALGO']]); open(os.environ['MARK'], 'a').write(line + '\\n'); "
)
SLEEPER = MARKER + "import time; time.sleep(3600)"
QUITTER = MARKER + "import sys; sys.exit(1)"
# Ignores SIGTERM and has a grandchild: only a SIGKILL of the whole tree stops them.
STUBBORN = (
    "import os, signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)']); "
    "open(os.environ['MARK'], 'a').write(f'{os.getpid()} {grandchild.pid}\\n'); time.sleep(3600)"
)


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in read(path).splitlines()]


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie nobody reaped yet counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Serve:
    """`serve(...)` running in its own session under `tmp`, as `keyrotor run` would."""

    def __init__(self, tmp: Path, *children: tuple[str, str]) -> None:
        self.tmp = tmp
        self.var = tmp / "var"
        self.mark = tmp / "mark"
        self.log = tmp / f"serve-{len(list(tmp.glob('serve-*.log')))}.log"
        argvs = [(name, [sys.executable, "-c", source]) for name, source in children]
        script = (
            "import sys; from worker.ops.supervisor import Child, serve; "
            f"sys.exit(serve({{'algo': 'es256'}}, children=[Child(*c) for c in {argvs!r}]))"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
        env.update(
            PYTHONPATH=str(ROOT),
            KEYROTOR_VAR_DIR=str(self.var),
            KEYROTOR_DATABASE_URL=f"sqlite:///{self.var}/k.db",
            MARK=str(self.mark),
        )
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", script],
                cwd=tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group, so the finally below reaches everything
            )

    def wait_for(self, check: Callable[[], T], timeout: float, what: str) -> T:
        """`wait_for`, failing with serve's log."""
        try:
            return wait_for(check, timeout, what)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{read(self.log)}") from None

    def exit_code(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"serve still running after {timeout}s\n{read(self.log)}"
            ) from None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(5)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(*children: tuple[str, str]) -> Serve:
        started.append(Serve(tmp_path, *children))
        return started[-1]

    try:
        yield start
    finally:
        for serve in started:
            serve.kill()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["term", "int"])
def test_serve_starts_everything_and_leaves_nothing_behind(
    running: Callable[..., Serve], stop_signal: signal.Signals
) -> None:
    serve = running(("sleeper", SLEEPER))
    url_file = serve.var / "redis.url"
    serve.wait_for(url_file.exists, 15, "var/redis.url")
    [[child_pid, child_redis_url, child_algo]] = serve.wait_for(
        lambda: lines(serve.mark), 15, "the child to start"
    )
    url = url_file.read_text().strip()
    client = redis.Redis.from_url(url, socket_timeout=2)
    assert client.ping()
    valkey_pid = int(client.info("server")["process_id"])
    client.close()
    assert (child_redis_url, child_algo) == (url, "es256")  # overrides reach the children
    with sqlite3.connect(serve.var / "k.db") as db:
        assert [name for (name,) in db.execute("select name from realms")] == ["default"]
    assert "press Ctrl-C to stop" in read(serve.log)

    serve.process.send_signal(stop_signal)

    assert serve.exit_code(15) == 0, read(serve.log)
    assert not alive(int(child_pid)), "the child outlived serve"
    assert not alive(valkey_pid), "Valkey outlived serve"
    assert "stopped the embedded Valkey" in read(serve.log)  # stopped by serve, not at exit
    assert not url_file.exists()


def test_a_child_that_exits_is_restarted_with_backoff(running: Callable[..., Serve]) -> None:
    serve = running(("quitter", QUITTER))

    serve.wait_for(lambda: len(lines(serve.mark)) >= 2, 10, "a second start of the child")

    assert "quitter exited with 1; restarting in 1s" in read(serve.log)
    serve.process.send_signal(signal.SIGTERM)
    assert serve.exit_code(15) == 0


def test_a_second_signal_kills_at_once(running: Callable[..., Serve]) -> None:
    serve = running(("stubborn", STUBBORN))
    [[child_pid, grandchild_pid]] = serve.wait_for(
        lambda: lines(serve.mark), 15, "the child to start"
    )

    serve.process.send_signal(signal.SIGINT)
    serve.wait_for(lambda: "stopping stubborn" in read(serve.log), 5, "shutdown to begin")
    serve.process.send_signal(signal.SIGINT)

    assert serve.exit_code(5) == 0  # not the 15s that a SIGTERM-proof child would cost
    assert not alive(int(child_pid))
    assert not alive(int(grandchild_pid)), "the killed child's own child was orphaned"


def test_refuses_a_var_dir_another_run_is_using(running: Callable[..., Serve]) -> None:
    first = running(("sleeper", SLEEPER))
    first.wait_for(lambda: lines(first.mark), 15, "the first run to start")

    second = running(("sleeper", SLEEPER))

    assert second.exit_code(15) != 0
    assert "another `keyrotor run` is using" in read(second.log)
    assert (first.var / "redis.url").exists(), "the refused run removed the first run's file"
    assert len(lines(first.mark)) == 1, "the refused run started children"


def test_the_banner_names_the_addresses_and_a_first_command() -> None:
    text = banner(load_settings(http_host="0.0.0.0", http_port=9000), "acme")

    base = "http://127.0.0.1:9000"  # a wildcard address is reached through this machine
    assert text.startswith("keyrotor is ready; press Ctrl-C to stop\n")
    for shown in (f"{base}/realms/acme/.well-known/jwks.json", f"{base}/v1", f"{base}/metrics"):
        assert shown in text
    assert "admin-keys create --out admin.pem" in text
    assert 'admin-token --key admin.pem --kid "$KID"' in text
    assert text.rstrip().endswith("keyrotor realms list")
    assert len(text.splitlines()) <= 8


def test_the_banner_waits_until_every_probe_answers_then_shows_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers = {"web": False}
    probes: list[tuple[str, Probe]] = [("web", lambda _s, _u: answers["web"])]
    announce = _Banner(load_settings(), "redis://unused", "default", probes)
    caplog.set_level(logging.INFO, "keyrotor.run")

    announce.check()
    assert "keyrotor is ready" not in caplog.text
    announce.since -= READY_WAIT
    announce.check()
    assert "web not answering after 60s; still waiting" in caplog.text

    answers["web"] = True
    announce.check()
    announce.check()
    assert caplog.text.count("keyrotor is ready") == 1


def test_web_answers_while_something_listens_on_the_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        settings = load_settings(http_port=listener.getsockname()[1])
        assert web_answers(settings, "")
    assert not web_answers(settings, "")
