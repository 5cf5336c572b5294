"""`keyrotor run` from an empty directory: embedded SQLite and Valkey, real Celery children,
and a terminal a person can read: one banner, then quiet while nothing changes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.processes import free_port, processes_under
from tests.support.stack import wait_for

KEYROTOR = Path(sys.executable).parent / "keyrotor"
# Celery's per-task and per-sweep lines: beat sends a relay sweep every 2 s, rotate_due every
# tick (2 s with --demo), and the worker logs receiving and finishing each.
SWEEP_LINES = re.compile(r"Sending due task|Task keyrotor\.\S+ received|succeeded in")
IDLE = 5.0  # seconds of watching the terminal after the banner: two or three sweeps


def test_run_serves_from_an_empty_directory_and_stops_without_leftovers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
    port = free_port()
    env["KEYROTOR_HTTP_PORT"] = str(port)
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(KEYROTOR), "run", "--demo"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        jwks = wait_for(
            lambda: next((tmp_path / "var" / "jwks").glob("rl_*/jwks.json"), None), 60, "a JWKS"
        )
        assert '"kty":"EC"' in jwks.read_text()  # the demo's `default` realm, es256
        assert (tmp_path / "var" / "master.key").stat().st_mode & 0o777 == 0o600

        def output() -> str:
            return (tmp_path / "run.log").read_text(errors="replace")

        wait_for(lambda: "keyrotor is ready" in output(), 60, "the banner")
        banner = output().split("keyrotor is ready", 1)[1]
        base = f"http://127.0.0.1:{port}"
        jwks_url = f"{base}/realms/default/.well-known/jwks.json"
        wanted = (jwks_url, f"{base}/v1", f"{base}/metrics", "admin-keys create", "admin-token")
        for shown in wanted:
            assert shown in banner, banner
        assert re.search(r"try +\S*keyrotor realms list", banner), banner
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only
        with opener.open(jwks_url, timeout=5) as answer:
            assert b'"keys"' in answer.read()

        time.sleep(IDLE)
        after = output().split("keyrotor realms list", 1)[1].splitlines()[1:]  # past the banner
        assert not [line for line in after if SWEEP_LINES.search(line)], after
        assert len(after) <= 3, after  # at most a relayed or republished line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "run.log").read_text()[-3000:]
        wait_for(lambda: not processes_under(tmp_path), 10, "every child to exit")
        assert not (tmp_path / "var" / "redis.url").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        for pid in processes_under(tmp_path):
            os.kill(pid, signal.SIGKILL)
