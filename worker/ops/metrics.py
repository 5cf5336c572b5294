"""Prometheus metrics, read at scrape time from the database and Redis.

Rotations happen in Celery workers, not in the web process that is scraped, so nothing is
counted in memory here: rotations are the `key.rotated` events in the outbox, failures a
Redis counter that the rotation task increments. Any web process answers the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from worker.core.lifecycle import State
from worker.publish.heartbeat import last_heartbeat
from worker.publish.jwks import redis_key
from worker.service import Service
from worker.store import outbox, stats

log = logging.getLogger("keyrotor.metrics")

ROTATION_FAILURES = "keyrotor:metrics:rotation_failures"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def count_rotation_failure(client: redis.Redis) -> None:
    """Called by the rotation task when an attempt fails; a Redis failure here is not news."""
    try:
        client.incr(ROTATION_FAILURES)
    except redis.RedisError:
        log.debug("rotation failure not counted: Redis is unavailable")


class KeyrotorCollector(Collector):
    """One scrape: a handful of grouped queries and one Redis pipeline."""

    def __init__(self, service: Service, client: redis.Redis | None, now: datetime) -> None:
        self.service = service
        self.redis = client
        self.now = now

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "keyrotor_up", "1 when the component answered this scrape.", labels=["component"]
        )
        realms: list[stats.RealmStat] | None = None
        try:
            yield from self._database()
            realms = stats.realms(self.service.sessions)
            yield from self._rotation_ages(realms)
            up.add_metric(["database"], 1)
        except SQLAlchemyError as error:
            log.warning("metrics: database unavailable (%s)", error.__class__.__name__)
            up.add_metric(["database"], 0)
        try:
            if self.redis is None:
                raise redis.ConnectionError("no Redis configured")
            yield from self._redis(realms)
            up.add_metric(["redis"], 1)
        except redis.RedisError as error:
            log.warning("metrics: Redis unavailable (%s)", error.__class__.__name__)
            up.add_metric(["redis"], 0)
        yield up

    def _database(self) -> Iterable[Metric]:
        sessions = self.service.sessions
        by_state = stats.keys_by_state(sessions)
        keys = GaugeMetricFamily("keyrotor_keys", "Keys in each state.", labels=["state"])
        for state in State:
            keys.add_metric([state.value], by_state.get(state.value, 0))
        rotations = CounterMetricFamily(
            "keyrotor_rotations", "Rotations committed (scheduled, manual and on delete)."
        )
        rotations.add_metric([], stats.events_by_reason(sessions).get("key.rotated", 0))
        backlog = GaugeMetricFamily(
            "keyrotor_outbox_backlog", "Events committed but not yet relayed to Redis."
        )
        backlog.add_metric([], outbox.count_unpublished(sessions))
        return [keys, rotations, backlog]

    def _rotation_ages(self, realms: list[stats.RealmStat]) -> Iterable[Metric]:
        count = GaugeMetricFamily("keyrotor_realms", "Realms.")
        count.add_metric([], len(realms))
        ages = GaugeMetricFamily(
            "keyrotor_seconds_since_last_rotation",
            "Seconds since each realm's active key began to sign.",
            labels=["realm_id", "realm"],
        )
        for realm in realms:
            if realm.last_rotation_at is not None:
                age = (self.now - realm.last_rotation_at).total_seconds()
                ages.add_metric([realm.id, realm.name], max(0.0, age))
        # Beside the ages, so an alert can say "older than its own period" (deploy/prometheus).
        periods = GaugeMetricFamily(
            "keyrotor_rotation_period_seconds",
            "Each realm's rotation period: how long one key signs.",
            labels=["realm_id", "realm"],
        )
        for realm in realms:
            periods.add_metric([realm.id, realm.name], realm.rotation_period_s)
        return [count, ages, periods]

    def _redis(self, realms: list[stats.RealmStat] | None) -> Iterable[Metric]:
        assert self.redis is not None
        failures = CounterMetricFamily(
            "keyrotor_rotation_failures", "Rotation task attempts that failed (and were retried)."
        )
        failures.add_metric([], int(self.redis.get(ROTATION_FAILURES) or 0))
        beat = last_heartbeat(self.redis)
        seen = GaugeMetricFamily(
            "keyrotor_beat_last_seen_timestamp_seconds",
            "Unix time of the beat scheduler's last heartbeat (0 when never seen).",
        )
        seen.add_metric([], beat.at.timestamp() if beat is not None else 0.0)
        found: list[Metric] = [failures, seen]
        if realms is None:
            return found
        pipe = self.redis.pipeline(transaction=False)
        for realm in realms:
            pipe.hget(redis_key(realm.id), "jwks_version")
        published = pipe.execute()
        lagging = [
            realm
            for realm, version in zip(realms, published, strict=True)
            if version is None or int(version) < realm.jwks_version
        ]
        lag = GaugeMetricFamily(
            "keyrotor_jwks_publish_lag_seconds",
            "Age of the oldest change whose JWKS is not yet in Redis (0 when all are).",
        )
        oldest = min((realm.updated_at for realm in lagging), default=self.now)
        lag.add_metric([], max(0.0, (self.now - oldest).total_seconds()))
        behind = GaugeMetricFamily(
            "keyrotor_jwks_lagging_realms", "Realms whose Redis JWKS is older than the database."
        )
        behind.add_metric([], len(lagging))
        return [*found, lag, behind]


def exposition(service: Service, client: redis.Redis | None, now: datetime) -> bytes:
    """The Prometheus text format for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KeyrotorCollector(service, client, now))
    return generate_latest(registry)
