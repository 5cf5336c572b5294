"""Who the workers' changes are recorded as: beat's rotations are `scheduler`'s, a task sent
with an `actor` records it, and one sent without (as before tasks took one) is `system`'s.

The process test runs once (`ONE_DATABASE`): the writer stamps the actor the same way on both
backends (tests/service/test_actors.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

from sqlalchemy import select

from tests.conftest import ONE_DATABASE
from tests.support.stack import ROOT, Stack, wait_for
from worker.store.db import transaction
from worker.store.models import Event


def events_of(stack: Stack, realm_id: str) -> list[tuple[str, str]]:
    """(reason, actor) of a realm's events, in the order written."""
    query = select(Event.reason, Event.actor).where(Event.realm_id == realm_id).order_by(Event.seq)
    with transaction(stack.service.sessions, read_only=True) as session:
        return [(reason, actor) for reason, actor in session.execute(query)]


@ONE_DATABASE
def test_beat_rotates_as_the_scheduler_and_a_sent_task_as_its_actor(stack: Stack) -> None:
    scheduled = stack.service.create_realm("scheduled").id  # prepublishes at 4 s, rotates at 6 s
    asked = stack.service.create_realm(
        "asked", rotation_period=timedelta(hours=1), prepublish=timedelta(minutes=1)
    ).id
    stack.worker("w1")
    stack.beat("beat1")
    stack.send("keyrotor.rotate_realm", asked, True)  # an old message: no actor
    stack.app.send_task("keyrotor.rotate_realm", args=[asked, True], kwargs={"actor": "cli:carol"})

    wait_for(lambda: len(events_of(stack, scheduled)) > 1, 20, "beat's first change")
    reason, actor = events_of(stack, scheduled)[1]
    assert (reason, actor) == ("key.created", "scheduler")

    def rotations() -> list[tuple[str, str]]:  # beat purges the retired keys soon after (grace)
        return sorted(event for event in events_of(stack, asked) if event[0] == "key.rotated")

    wait_for(lambda: len(rotations()) == 2, 10, "both rotations")
    assert rotations() == [("key.rotated", "cli:carol"), ("key.rotated", "system")]


def test_the_tasks_said_to_take_an_actor_take_one_and_work_without_it() -> None:
    """`HttpContext.send_task` passes `actor` only to `ACTOR_TASKS`: each takes it as an
    optional keyword (importing the tasks needs a broker URL, not a broker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
    env.update(KEYROTOR_REDIS_URL="redis://127.0.0.1:1/0", PYTHONPATH=str(ROOT))
    code = """
import inspect
from worker.celery import app
from worker.jobs import mass_rotation, tasks
from worker.jobs.app import ACTOR_TASKS
for name in sorted(ACTOR_TASKS):
    parameter = inspect.signature(app.tasks[name].run).parameters["actor"]
    print(name, parameter.default, parameter.kind.name)
"""
    found = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert found.returncode == 0, found.stderr
    lines = found.stdout.split("\n")[:-1]
    assert len(lines) == 6
    assert all(line.endswith(" None POSITIONAL_OR_KEYWORD") for line in lines), lines
