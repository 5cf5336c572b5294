"""`keyrotor run` from an empty directory: embedded SQLite and Valkey, real Celery children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.processes import free_port, processes_under
from tests.support.stack import wait_for

KEYROTOR = Path(sys.executable).parent / "keyrotor"


def test_run_serves_from_an_empty_directory_and_stops_without_leftovers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
    env["KEYROTOR_HTTP_PORT"] = str(free_port())
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
