"""Beat's heartbeat: written by the scheduler as it ticks, read by the doctor and `/metrics`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.stack import Stack, wait_for
from worker.jobs.app import make_app
from worker.jobs.beat import HeartbeatScheduler
from worker.ops.metrics import exposition
from worker.publish.heartbeat import HEARTBEAT_KEY, Heartbeat, last_heartbeat, record_heartbeat
from worker.settings import load_settings


def samples(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exposition(stack.service, stack.redis, datetime.now(UTC)).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_heartbeat_reads_back_as_written(stack: Stack) -> None:
    assert last_heartbeat(stack.redis) is None
    at = datetime(2026, 1, 1, 12, 0, 0, 500000, tzinfo=UTC)
    record_heartbeat(stack.redis, Heartbeat(at, "host-a", 17))
    assert last_heartbeat(stack.redis) == Heartbeat(at, "host-a", 17)
    assert 0 < int(stack.redis.ttl(HEARTBEAT_KEY)) <= 7 * 86400
    stack.redis.hset(HEARTBEAT_KEY, "at", "not a number")
    assert last_heartbeat(stack.redis) is None


def test_the_scheduler_records_a_heartbeat_as_it_ticks_and_sleeps_at_most_5s(
    stack: Stack,
) -> None:
    scheduler = HeartbeatScheduler(app=stack.app)
    before = datetime.now(UTC)
    assert scheduler.tick() <= 5.0
    beat = wait_for(lambda: last_heartbeat(stack.redis), 5, "the heartbeat")
    assert beat.at >= before.replace(microsecond=0)
    assert stack.app.conf.beat_scheduler == "worker.jobs.beat:HeartbeatScheduler"


def test_metrics_expose_the_heartbeat_for_the_alert_rules(stack: Stack) -> None:
    stack.service.create_realm("acme")
    found = samples(stack)
    assert found[("keyrotor_beat_last_seen_timestamp_seconds", ())] == 0  # never seen
    at = datetime.now(UTC)
    record_heartbeat(stack.redis, Heartbeat(at, "h", 1))
    seen = samples(stack)[("keyrotor_beat_last_seen_timestamp_seconds", ())]
    assert abs(seen - at.timestamp()) < 0.01


@pytest.mark.parametrize(
    ("entry", "task", "seconds"),
    [
        ("prune-events", "keyrotor.prune_events", 600.0),
        ("fill-key-pool", "keyrotor.fill_key_pool", 60.0),
    ],
)
def test_beat_runs_the_slow_sweeps_on_their_own_period_whatever_the_tick(
    entry: str, task: str, seconds: float
) -> None:
    """The outbox is pruned every ten minutes, the key pool topped up every minute."""
    app = make_app(load_settings(tick="1s"), "redis://127.0.0.1:1/0")  # no broker needed
    try:
        assert app.conf.beat_schedule[entry] == {
            "task": task,
            "schedule": timedelta(seconds=seconds),
            "options": {"expires": seconds},
        }
    finally:
        app.close()
