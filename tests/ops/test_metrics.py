"""Metrics read at scrape time: what each family counts, and what a part that is down does."""

from __future__ import annotations

import subprocess
import sys

import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import FakeClock
from tests.support.stack import Stack
from worker.ops.metrics import ROTATION_FAILURES, count_rotation_failure, exposition
from worker.publish.jwks import publish_realm
from worker.service import Service


def scrape(service: Service, client: redis.Redis | None, clock: FakeClock) -> dict[str, float]:
    text = exposition(service, client, clock()).decode()
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_database_families_without_redis(service: Service, clock: FakeClock) -> None:
    realm = service.create_realm("acme")
    clock.advance(hours=2)
    service.rotate("acme", force=True)
    clock.advance(seconds=90)
    found = scrape(service, None, clock)
    assert found["keyrotor_keys[('state', 'active')]"] == 1
    assert found["keyrotor_keys[('state', 'expired')]"] == 1
    assert found["keyrotor_rotations_total[]"] == 1
    assert found["keyrotor_outbox_backlog[]"] == 2
    labels = f"[('realm', 'acme'), ('realm_id', '{realm.id}')]"
    assert found["keyrotor_seconds_since_last_rotation" + labels] == 90
    assert found["keyrotor_up[('component', 'database')]"] == 1
    assert found["keyrotor_up[('component', 'redis')]"] == 0
    assert "keyrotor_jwks_lagging_realms[]" not in found


def test_publish_lag_is_the_age_of_the_oldest_unpublished_change(stack: Stack) -> None:
    clock = FakeClock()
    base = stack.service
    service = Service(base.sessions, base.master_keys, base.limits, clock)
    service.create_realm("acme")
    publish_realm(service, stack.publisher, service.get_realm("acme").id)
    found = scrape(service, stack.redis, clock)
    assert found["keyrotor_jwks_lagging_realms[]"] == 0
    assert found["keyrotor_jwks_publish_lag_seconds[]"] == 0
    service.rotate("acme", force=True)  # not published
    clock.advance(seconds=30)
    found = scrape(service, stack.redis, clock)
    assert found["keyrotor_jwks_lagging_realms[]"] == 1
    assert found["keyrotor_jwks_publish_lag_seconds[]"] == 30


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
