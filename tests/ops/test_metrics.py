"""Metrics read at scrape time: what each family counts, what a part that is down does, and that
a scrape does not grow with the number of realms."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import FakeClock
from tests.support.stack import Stack
from worker.client.events import REASONS
from worker.ops.metrics import ROTATION_FAILURES, count_rotation_failure, exposition
from worker.publish.relay import Relay
from worker.service import Service

TICK = timedelta(seconds=10)


def scrape(service: Service, client: redis.Redis | None, clock: FakeClock) -> dict[str, float]:
    text = exposition(service, client, clock(), tick=TICK).decode()
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def on_clock(stack: Stack, clock: FakeClock) -> Service:
    base = stack.service
    return Service(base.sessions, base.master_keys, base.limits, clock)


def relay(stack: Stack, service: Service) -> int:
    return Relay(service, stack.redis, publisher=stack.publisher).relay_all()


def test_database_families_without_redis(service: Service, clock: FakeClock) -> None:
    service.create_realm("acme")
    clock.advance(hours=2)
    service.rotate("acme", force=True)
    clock.advance(seconds=90)
    found = scrape(service, None, clock)
    assert found["keyrotor_keys[('state', 'active')]"] == 1
    assert found["keyrotor_keys[('state', 'expired')]"] == 1
    assert found["keyrotor_keys[('state', 'pending')]"] == 0
    assert found["keyrotor_realms[]"] == 1
    assert found["keyrotor_realms_overdue[]"] == 0
    assert found["keyrotor_oldest_overdue_seconds[]"] == 0
    assert found["keyrotor_outbox_backlog[]"] == 2
    # nothing relayed: both events wait, the oldest since the realm was created
    assert found["keyrotor_jwks_lagging_realms[]"] == 1
    assert found["keyrotor_jwks_publish_lag_seconds[]"] == 2 * 3600 + 90
    assert found["keyrotor_up[('component', 'database')]"] == 1
    assert found["keyrotor_up[('component', 'redis')]"] == 0
    assert "keyrotor_rotations_total[]" not in found  # counted in Redis


def test_the_key_pool_is_counted_by_algo_and_size_every_kind_always_shown(
    service: Service, clock: FakeClock
) -> None:
    service.fill_pool(2, wanted=[("rs256", 2048)])
    found = scrape(service, None, clock)
    pool = {name: n for name, n in found.items() if name.startswith("keyrotor_key_pool_keys")}
    assert pool == {
        f"keyrotor_key_pool_keys[('algo', '{algo}'), ('rsa_bits', '{bits}')]": (
            2 if (algo, bits) == ("rs256", 2048) else 0
        )
        for algo in ("ps256", "rs256")
        for bits in (2048, 3072, 4096)
    }


def test_a_realm_is_overdue_once_its_next_change_is_three_ticks_late(
    service: Service, clock: FakeClock
) -> None:
    hour, day = timedelta(hours=1), timedelta(days=1)
    service.create_realm("acme", rotation_period=2 * hour, prepublish=hour)
    service.create_realm("other", rotation_period=day, prepublish=hour)
    due_at = service.get_realm("acme").next_rotation_at
    clock.now = due_at + 3 * TICK  # late, but within the slack
    found = scrape(service, None, clock)
    assert found["keyrotor_realms_overdue[]"] == 0
    assert found["keyrotor_oldest_overdue_seconds[]"] == 0
    clock.advance(seconds=1)
    found = scrape(service, None, clock)
    assert found["keyrotor_realms_overdue[]"] == 1
    assert found["keyrotor_oldest_overdue_seconds[]"] == 31
    service.rotate("acme")  # what the rotation task would have done
    assert scrape(service, None, clock)["keyrotor_realms_overdue[]"] == 0


def test_publish_lag_is_the_age_of_the_oldest_event_not_yet_relayed(stack: Stack) -> None:
    clock = FakeClock()
    service = on_clock(stack, clock)
    service.create_realm("acme")
    service.create_realm("other")
    relay(stack, service)
    found = scrape(service, stack.redis, clock)
    assert found["keyrotor_jwks_lagging_realms[]"] == 0
    assert found["keyrotor_jwks_publish_lag_seconds[]"] == 0
    service.rotate("acme", force=True)  # committed; neither its JWKS nor its event sent
    clock.advance(seconds=20)
    service.rotate("acme", force=True)
    clock.advance(seconds=10)
    found = scrape(service, stack.redis, clock)
    assert found["keyrotor_outbox_backlog[]"] == 2
    assert found["keyrotor_jwks_lagging_realms[]"] == 1
    assert found["keyrotor_jwks_publish_lag_seconds[]"] == 30
    relay(stack, service)  # the JWKS first, then the events
    found = scrape(service, stack.redis, clock)
    assert found["keyrotor_jwks_lagging_realms[]"] == 0
    assert found["keyrotor_jwks_publish_lag_seconds[]"] == 0


def test_events_and_rotations_are_counted_as_the_relay_sends_them(stack: Stack) -> None:
    clock = FakeClock()
    service = on_clock(stack, clock)
    service.create_realm("acme")
    service.rotate("acme", force=True)
    before = scrape(service, stack.redis, clock)
    assert before["keyrotor_rotations_total[]"] == 0  # committed, not relayed yet
    assert {before[f"keyrotor_events_relayed_total[('reason', '{r}')]"] for r in REASONS} == {0}
    assert relay(stack, service) == 2
    relay(stack, service)  # nothing left: nothing counted again
    found = scrape(service, stack.redis, clock)
    assert found["keyrotor_rotations_total[]"] == 1
    assert found["keyrotor_events_relayed_total[('reason', 'realm.created')]"] == 1
    assert found["keyrotor_events_relayed_total[('reason', 'key.rotated')]"] == 1
    assert sum(found[f"keyrotor_events_relayed_total[('reason', '{r}')]"] for r in REASONS) == 2


def test_no_family_is_per_realm_and_a_scrape_does_not_grow_with_the_realms(
    stack: Stack,
) -> None:
    clock = FakeClock()
    service = on_clock(stack, clock)

    def scraped(first: int, last: int) -> str:
        """Realms `first`..`last` added, everything relayed, then one rotation left unsent."""
        for n in range(first, last):
            service.create_realm(f"realm-{n}")
        relay(stack, service)
        service.rotate("realm-0", force=True)
        return exposition(service, stack.redis, clock(), tick=TICK).decode()

    small = scraped(0, 3)
    large = scraped(3, 30)

    def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        found = set()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                assert not {"realm", "realm_id"} & set(sample.labels), sample
                found.add((sample.name, tuple(sorted(sample.labels.items()))))
        return found

    assert series(small) == series(large)
    assert len(small.splitlines()) == len(large.splitlines())
    assert abs(len(large) - len(small)) <= 12  # a digit more in a few counts
    assert scrape(service, stack.redis, clock)["keyrotor_realms[]"] == 30


def test_rotation_failures_are_counted_in_redis_by_the_rotation_task(stack: Stack) -> None:
    """The task's own code, in a process of its own (importing the Celery app reads settings)."""
    code = """
import sys
from types import SimpleNamespace
import redis
from worker.jobs import tasks

class Broken:
    def rotate(self, *args, **kwargs):
        raise RuntimeError("the database went away")

client = redis.Redis.from_url(sys.argv[1])
tasks.context = lambda: SimpleNamespace(service=Broken(), publisher=SimpleNamespace(redis=client))
for _ in range(2):
    try:
        tasks.rotate_realm.run("rl_0v1zTHXhtNgmDaXaDYSAqx")
    except RuntimeError:
        pass
"""
    result = subprocess.run(
        [sys.executable, "-c", code, stack.settings.redis_url or ""],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert int(stack.redis.get(ROTATION_FAILURES) or 0) == 2
    found = scrape(stack.service, stack.redis, FakeClock())
    assert found["keyrotor_rotation_failures_total[]"] == 2


def test_counting_a_failure_without_redis_is_silent() -> None:
    count_rotation_failure(redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0)))
