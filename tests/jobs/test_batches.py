"""Batched rotation through real Celery workers: beat fans out batches, a poisoned realm is
split out and retried alone while its batch commits, overlapping and duplicated batches rotate
each realm once, and a worker killed mid-batch leaves every realm due for the redelivery.

Each test runs once (`ONE_DATABASE`: on PostgreSQL when CI has it, else SQLite): what they add
is the processes, while a batch's storage rules (one rotation per realm and cut-off, a poisoned
realm left out, a failed shared write retried alone) are checked on both backends closer in
(tests/service/test_batch.py). PostgreSQL is also the backend whose overlapping batches really
run their transactions at once.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, text

from tests.conftest import ONE_DATABASE
from tests.jobs.test_tasks import PAUSED_WORKER, active_key, published_kids, states
from tests.support.stack import Stack, wait_for
from worker.core.clock import rfc3339, utcnow
from worker.store.db import transaction
from worker.store.models import Event


def rotations(stack: Stack) -> Counter[str]:
    """`key.rotated` events per realm id."""
    with transaction(stack.service.sessions, read_only=True) as session:
        query = select(Event.realm_id).where(Event.reason == "key.rotated")
        return Counter(session.scalars(query))


@ONE_DATABASE
def test_beat_rotates_due_realms_in_batches_and_a_poisoned_realm_fails_alone(
    stack: Stack,
) -> None:
    good = [stack.service.create_realm(f"good-{n}").id for n in range(5)]
    bad = stack.service.create_realm("bad").id
    bad_key = active_key(stack, "bad")
    with transaction(stack.service.sessions) as session:  # an algorithm no release knows
        session.execute(text("UPDATE realms SET algo = 'zz999' WHERE id = :id"), {"id": bad})
    stack.worker("w1", KEYROTOR_ROTATE_BATCH="4")
    stack.beat("beat1")

    wait_for(lambda: set(rotations(stack)) >= set(good), 30, "every good realm's rotation")
    wait_for(lambda: "retrying it alone" in stack.log("w1"), 15, "the poisoned realm split out")
    log = stack.log("w1")
    assert f"rotation of {bad} failed in its batch" in log
    assert states(stack, "bad") == {bad_key: "active"}  # untouched, and still due
    assert bad in {realm_id for _, realm_id in stack.service.due_realm_ids(utcnow())}
    for realm_id in good:
        assert published_kids(stack, realm_id)  # the batch published what it rotated
    assert "PRIVATE KEY" not in log


@ONE_DATABASE
def test_overlapping_and_duplicated_batches_rotate_each_realm_once(stack: Stack) -> None:
    ids = [stack.service.create_realm(f"r{n}").id for n in range(12)]
    stack.worker("w1")
    stack.worker("w2")
    cutoff = rfc3339(utcnow())
    for start in (0, 4, 0, 8, 2):  # overlapping windows, one of them sent twice
        stack.send("keyrotor.rotate_realms", ids[start : start + 6], False, cutoff)

    wait_for(lambda: set(rotations(stack)) == set(ids), 30, "every realm's rotation")
    wait_for(lambda: "rotate_realms" in stack.log("w1") + stack.log("w2"), 10, "the tasks")
    for realm_id in ids:  # every batch done: the last one to finish found nothing left
        wait_for(lambda: len(published_kids(stack, realm_id)) == 2, 10, "its JWKS")  # noqa: B023
    assert rotations(stack) == Counter(ids)


@ONE_DATABASE
def test_a_worker_killed_mid_batch_rolls_it_back_and_the_redelivery_rotates_each_once(
    stack: Stack, tmp_path: Path
) -> None:
    ids = [
        stack.service.create_realm(
            f"r{n}", rotation_period=timedelta(seconds=20), prepublish=timedelta(seconds=18)
        ).id
        for n in range(6)
    ]
    marker = tmp_path / "paused"
    stack.worker("paused", "--concurrency", "1", script=PAUSED_WORKER, PAUSE_MARKER=str(marker))
    stack.send("keyrotor.rotate_realms", ids, True)
    child = int(wait_for(lambda: marker.read_text() if marker.exists() else None, 15, "pause"))
    assert rotations(stack) == Counter()  # inside the open transaction: nothing visible
    os.kill(child, signal.SIGKILL)

    wait_for(lambda: set(rotations(stack)) == set(ids), 30, "the redelivered batch")
    assert rotations(stack) == Counter(ids)
