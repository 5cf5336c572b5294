"""Ports and process bookkeeping for tests that start real commands (honcho, `keyrotor run`)."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def processes_under(folder: Path) -> list[int]:
    """Live processes whose working directory is inside `folder` (the test's own never are)."""
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


def interruptible() -> None:
    """`preexec_fn` for a child a test stops with SIGINT: Python leaves SIGINT ignored when it
    starts with it ignored (as in a job a script started with `&`), so reset it first."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
