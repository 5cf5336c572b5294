"""Progress of `rotate --all` in Redis: each batch counts once however often it reports, a
realm that failed and is done later moves out of `failed`, every key lapses, a batch's realms
are kept until it reports, and the fan-out's cursor reads back as saved."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from worker.core import ids
from worker.publish.progress import (
    PROGRESS_TTL,
    Fanout,
    batch_realms,
    read_fanout,
    read_progress,
    record_batch,
    reported_batches,
    save_batch,
    save_fanout,
    settle,
)
from worker.service import RotationProgress


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_a_batch_counts_once_however_often_it_reports(client: redis.Redis) -> None:
    rotation = ids.rotation_id()
    assert read_progress(client, rotation) == RotationProgress()

    for _ in range(3):  # a duplicated message, a redelivery
        record_batch(client, rotation, 0, ["rl_a", "rl_b"], ["rl_gone"], ["rl_bad"])
    record_batch(client, rotation, 1, ["rl_c"], [], ["rl_worse", "rl_bad2"])

    assert read_progress(client, rotation) == RotationProgress(
        batches=2,
        rotated=3,
        skipped=1,
        failed=3,
        failed_realm_ids=["rl_bad", "rl_bad2", "rl_worse"],
    )
    shown = read_progress(client, rotation, failed_ids=2)
    assert shown.failed == 3 and len(shown.failed_realm_ids) == 2
    assert set(shown.failed_realm_ids) < {"rl_bad", "rl_bad2", "rl_worse"}
    assert read_progress(client, ids.rotation_id()) == RotationProgress()  # others untouched

    keys = client.keys(f"keyrotor:rotation:{rotation}:*")
    assert len(keys) == 3
    for key in keys:
        assert 0 < client.ttl(key) <= PROGRESS_TTL.total_seconds()


def test_a_realm_that_failed_and_is_done_later_moves_out_of_failed(client: redis.Redis) -> None:
    rotation = ids.rotation_id()
    record_batch(client, rotation, 0, ["rl_a"], [], ["rl_b", "rl_c", "rl_d"])

    settle(client, rotation, ["rl_b"], ["rl_c"])  # rotated since by a retry; deleted since
    settle(client, rotation, ["rl_b"], ["rl_c"])  # settling twice changes nothing more
    record_batch(client, rotation, 1, ["rl_d"], [], [])  # the rerun's batch rotates the last

    assert read_progress(client, rotation) == RotationProgress(batches=2, rotated=3, skipped=1)


def test_the_fan_out_cursor_reads_back_as_saved(client: redis.Redis) -> None:
    rotation = ids.rotation_id()
    assert read_fanout(client, rotation) == Fanout(0, "", finished=False)

    save_fanout(client, rotation, Fanout(3, "rl_x"))
    assert read_fanout(client, rotation) == Fanout(3, "rl_x", finished=False)
    save_fanout(client, rotation, Fanout(4, finished=True))
    assert read_fanout(client, rotation) == Fanout(4, "", finished=True)
    assert 0 < client.ttl(f"keyrotor:rotation:{rotation}:fanout") <= PROGRESS_TTL.total_seconds()


def test_a_batch_s_realms_are_kept_until_it_reports(client: redis.Redis) -> None:
    rotation = ids.rotation_id()
    save_batch(client, rotation, 0, ["rl_a", "rl_b"])
    save_batch(client, rotation, 1, ["rl_c"])
    assert 0 < client.ttl(f"keyrotor:rotation:{rotation}:batch:0") <= PROGRESS_TTL.total_seconds()

    record_batch(client, rotation, 0, ["rl_a"], ["rl_b"], [])

    assert reported_batches(client, rotation) == {0}
    assert batch_realms(client, rotation, [0, 1, 2]) == {1: ["rl_c"]}
