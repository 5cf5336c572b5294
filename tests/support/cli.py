"""`keyrotor` run in the test's own process, as the console script runs it but without the
second or so of imports a new process pays at every start.

`keyrotor_in_process` calls the script's entry point (`worker.cli.app:main`, so a refusal is
turned into its one line and exit status there, as in a subprocess) with its arguments, its
working directory and exactly the KEYROTOR_ variables given (none from this process), on
stdin without a terminal, and returns what a subprocess would: the exit status, stdout and
stderr. What a new process would not know is forgotten before and after each run: the cached
settings and service, and the engine, Redis clients and Celery app made from them. Warnings
logged without a handler reach stderr, as Python's last-resort handler writes them there.

Keep at least one test per CLI module on the real command (`KEYROTOR`, in a subprocess).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from typer.testing import CliRunner

from worker import runtime
from worker.cli import common
from worker.cli.app import main

KEYROTOR = Path(sys.executable).parent / "keyrotor"


def keyrotor_in_process(
    *args: str, env: Mapping[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """`keyrotor ARGS` with the KEYROTOR_ variables of `env` (others in it are ignored)."""
    overrides: dict[str, str | None] = dict.fromkeys(
        (name for name in os.environ if name.startswith("KEYROTOR_")), None
    )
    overrides.update({k: v for k, v in env.items() if k.startswith("KEYROTOR_")})
    forget(env.get("KEYROTOR_DATABASE_URL"))
    runner = CliRunner()
    try:
        with (
            contextlib.chdir(cwd),
            runner.isolation(env=overrides) as (stdout, stderr, _),
            arguments([str(KEYROTOR), *args]),
            last_resort_logging(),
        ):
            try:
                main()
                code = 0
            except SystemExit as exit:
                code = status(exit.code)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            return subprocess.CompletedProcess(
                [KEYROTOR.name, *args],
                code,
                stdout.getvalue().decode(),
                stderr.getvalue().decode(),
            )
    finally:
        forget(env.get("KEYROTOR_DATABASE_URL"))


def status(code: object) -> int:
    """The exit status `SystemExit(code)` ends a process with (a message is printed first)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


@contextlib.contextmanager
def arguments(argv: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


@contextlib.contextmanager
def last_resort_logging() -> Iterator[None]:
    """What `logging.lastResort` does in a process whose logging nobody configured: warnings
    and worse, message only, on stderr (here the captured one; pytest's own handlers on the
    root logger would keep Python from falling back to it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def forget(database_url: str | None) -> None:
    """Drop the settings, service, engine, Redis clients and Celery app a run cached."""
    if runtime.task_sender.cache_info().currsize and common.settings.cache_info().currsize:
        runtime.task_sender(common.settings()).close()
    runtime.task_sender.cache_clear()
    common.service.cache_clear()
    common.settings.cache_clear()
    if database_url and runtime.engine.cache_info().currsize:
        runtime.engine(database_url).dispose()
    runtime.engine.cache_clear()
    runtime.redis_client.cache_clear()
