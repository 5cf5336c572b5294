"""`keyrotor rotate --all` as an operator runs it in an emergency: the installed command in a
subprocess, real workers, the test database and Redis. Each realm is rotated once per cut-off
however the run is interrupted; refusals are one line and change nothing.

The tests with workers run once (`ONE_DATABASE`: on PostgreSQL when CI has it, else SQLite):
what they add is the command driving real workers and being interrupted, while the rotation's
storage rules (who a cut-off covers, resuming, one rotation per realm and cut-off) are checked
on both backends closer in (tests/service/test_mass.py, tests/service/test_batch.py). The
refusals run the command's entry point in this process (tests/support/cli.py), a dozen calls
without a second of imports each; the other tests start the real command.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import ONE_DATABASE
from tests.jobs.test_batches import rotations
from tests.support.cli import KEYROTOR, keyrotor_in_process
from tests.support.processes import interruptible
from tests.support.stack import Stack, wait_for
from worker.core.clock import rfc3339, utcnow
from worker.store import outbox
from worker.store.db import transaction
from worker.store.models import MassRotation

PAUSED_WORKER = Path(__file__).parents[1] / "support" / "paused_worker.py"


# Batches of two realms, so a handful of realms makes several batches.
STACK_SETTINGS = {"rotate_batch": "2"}


def keyrotor(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The command with the stack's settings and no terminal on stdin."""
    return subprocess.run(
        [str(KEYROTOR), *args],
        cwd=stack.tmp,
        env=stack.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, f"{result.args}: {result.returncode}\n{result.stderr}"
    return json.loads(result.stdout)


def refused(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    """Exit status 2, nothing on stdout, one `error:` line on stderr naming the problem."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, f"{result.args}: {result.returncode}\n{result.stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert fragment in lines[0], lines[0]
    assert result.stdout == ""


def records(stack: Stack) -> list[str]:
    with transaction(stack.service.sessions, read_only=True) as session:
        return list(session.scalars(select(MassRotation.id).order_by(MassRotation.created_at)))


@ONE_DATABASE
def test_every_matching_realm_is_rotated_once_with_a_summary(stack: Stack) -> None:
    covered = sorted(stack.service.create_realm(f"t{number}").id for number in range(5))
    stack.service.create_realm("other")
    stack.service.create_realm("t-hmac", algo="hs256")
    stack.worker("w1")

    result = keyrotor(
        stack, "rotate", "--all", "--algo", "es256", "--realm-prefix", "t", "--yes", "--json"
    )

    summary = ok_json(result)
    assert summary["id"].startswith("rot_") and summary["object"] == "rotation"
    assert (summary["algo"], summary["realm_prefix"], summary["state"]) == ("es256", "t", "done")
    counts = {k: summary[k] for k in ("total", "rotated", "skipped", "failed", "failed_realm_ids")}
    assert counts == {"total": 5, "rotated": 5, "skipped": 0, "failed": 0, "failed_realm_ids": []}
    assert "rotating realms" in result.stderr  # the progress bar
    assert rotations(stack) == dict.fromkeys(covered, 1)
    assert outbox.count_unpublished(stack.service.sessions) == 0  # every event relayed

    # A named cut-off: the realms whose key began signing before it, not a realm made since.
    cutoff = rfc3339(utcnow())
    assert cutoff is not None
    time.sleep(0.01)
    late = stack.service.create_realm("t-late").id
    text = keyrotor(stack, "rotate", "--all", "--realm-prefix", "t", "--before", cutoff, "--yes")
    assert text.returncode == 0, text.stderr
    assert f"rotated 6, skipped 0, failed 0 of 6 realms (cut-off {cutoff})" in text.stdout
    assert late not in rotations(stack)
    again = keyrotor(stack, "rotate", "--all", "--realm-prefix", "t", "--before", cutoff, "--yes")
    assert "rotated 0, skipped 0, failed 0 of 0 realms" in again.stdout  # nothing twice
    assert rotations(stack) == {
        **dict.fromkeys(covered, 2),
        stack.service.get_realm("t-hmac").id: 1,
    }


@ONE_DATABASE
def test_an_interrupted_rotation_resumes_and_rotates_each_realm_exactly_once(
    stack: Stack, tmp_path: Path
) -> None:
    covered = sorted(stack.service.create_realm(f"r{number}").id for number in range(6))
    marker = tmp_path / "paused"
    # The first batch pauses inside its transaction; the worker is then killed there, so that
    # batch's message is lost until the visibility timeout (an hour).
    stack.worker("paused", "--concurrency", "1", script=PAUSED_WORKER, PAUSE_MARKER=str(marker))
    first = subprocess.Popen(
        [str(KEYROTOR), "rotate", "--all", "--realm-prefix", "r", "--yes"],
        cwd=stack.tmp,
        env=stack.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    try:
        wait_for(marker.exists, 30, "the first batch to pause")
        stack.stop("paused", signal.SIGKILL)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, stderr
    (record,) = records(stack)
    assert f"interrupted; run the same command to resume {record}" in stderr
    assert rotations(stack) == {}  # the killed batch rolled back; the rest wait in the queue

    stack.worker("w2")
    result = keyrotor(stack, "rotate", "--all", "--realm-prefix", "r", "--yes", "--json")

    summary = ok_json(result)
    assert f"resuming {record} (cut-off " in result.stderr
    assert (summary["id"], summary["state"], summary["total"]) == (record, "done", 6)
    assert (summary["rotated"], summary["skipped"], summary["failed"]) == (6, 0, 0)
    assert rotations(stack) == dict.fromkeys(covered, 1)
    assert records(stack) == [record]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_refusals_are_one_line_and_change_nothing(stack: Stack) -> None:
    realm = stack.service.create_realm("acme")
    cases = [
        (("rotate",), "give a realm to rotate, or --all"),
        (("rotate", "acme", "--all"), "give a realm or --all, not both"),
        (("rotate", "acme", "--realm-prefix", "a"), "go with --all"),
        (("rotate", "--all", "--algo", "hs512", "--yes"), "Algo must be one of"),
        (("rotate", "--all", "--realm-prefix", "x" * 101, "--yes"), "too long (at most 100"),
        (("rotate", "--all", "--realm-prefix", "a b", "--yes"), "Realm prefix may hold only"),
        (("rotate", "--all", "--before", "yesterday", "--yes"), "must be an RFC 3339 timestamp"),
        (("rotate", "--all", "--before", "2999-01-01T00:00:00Z", "--yes"), "in the future"),
        (("rotate", "--all"), "would rotate 1 realm: confirm at a terminal, or pass --yes"),
    ]
    for args, fragment in cases:
        refused(keyrotor_in_process(*args, env=stack.env, cwd=stack.tmp), fragment)
    assert records(stack) == [] and rotations(stack) == {}

    one_realm = keyrotor_in_process("rotate", "acme", "--json", env=stack.env, cwd=stack.tmp)
    rotated = ok_json(one_realm)
    assert rotated["realm"]["id"] == realm.id and rotated["retired"] and rotated["activated"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_at_a_terminal_it_asks_first_and_no_means_nothing_happens(stack: Stack) -> None:
    stack.service.create_realm("acme")
    stack.service.create_realm("beta")
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"n\n")
        result = subprocess.run(
            [str(KEYROTOR), "rotate", "--all"],
            cwd=stack.tmp,
            env=stack.env,
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(controller)
        os.close(terminal)
    assert result.returncode == 1, result.stderr
    assert "Rotate 2 realms whose key began signing before 20" in result.stderr
    assert result.stderr.rstrip().endswith("error: aborted")  # the answer echoes on the terminal
    assert records(stack) == [] and rotations(stack) == {}
