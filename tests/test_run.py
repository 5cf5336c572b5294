"""`keyrotor run` from an empty directory: embedded SQLite and Valkey, real Celery children."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.stack import wait_for

KEYROTOR = Path(sys.executable).parent / "keyrotor"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def processes_under(folder: Path) -> list[int]:
    """Live processes whose working directory is inside `folder` (ours never are)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and Path(cwd).is_relative_to(folder):
            found.append(int(entry.name))
    return found


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
