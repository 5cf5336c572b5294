"""Prometheus metrics, read at scrape time from the database and Redis, in constant size and time.

No family carries a per-realm label: a scrape is the same few dozen lines at ten realms or a
million, made by one database transaction of a handful of statements (each an index range or
the planner's statistics, see `worker.store.stats`), one GROUP BY over the small key pool, and
one Redis round trip. What one realm is
doing is asked of that realm: `keyrotor realms get`, `keyrotor doctor --check overdue`.

Rotations happen in Celery workers, not in the web process that is scraped, so nothing is
counted in memory here: the relay counts each event, by reason, as it appends it to the stream
(`worker.publish.relay`), and the rotation task counts its failures. Any web process answers
the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

import redis
from keyrotor_client.events import REASONS
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from worker.core.keys import POOLED_ALGOS, RSA_BITS
from worker.core.lifecycle import State
from worker.publish.heartbeat import HEARTBEAT_KEY, parse_heartbeat
from worker.publish.relay import EVENTS_RELAYED
from worker.publish.webhooks import OUTCOMES, WEBHOOK_OUTCOMES
from worker.service import Service
from worker.store import stats

log = logging.getLogger("keyrotor.metrics")

ROTATION_FAILURES = "keyrotor:metrics:rotation_failures"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_TICK = timedelta(seconds=10)  # KEYROTOR_TICK's default; the web route passes the setting


def count_rotation_failure(client: redis.Redis) -> None:
    """Called by the rotation task when an attempt fails; a Redis failure here is not news."""
    try:
        client.incr(ROTATION_FAILURES)
    except redis.RedisError:
        log.debug("rotation failure not counted: Redis is unavailable")


def _seconds(now: datetime, then: datetime | None) -> float:
    return 0.0 if then is None else max(0.0, (now - then).total_seconds())


class KeyrotorCollector(Collector):
    """One scrape: one read-only transaction, a count of the key pool and one Redis pipeline,
    whatever the realms."""

    def __init__(
        self,
        service: Service,
        client: redis.Redis | None,
        now: datetime,
        tick: timedelta = DEFAULT_TICK,
    ) -> None:
        self.service = service
        self.redis = client
        self.now = now
        self.tick = tick

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "keyrotor_up", "1 when the component answered this scrape.", labels=["component"]
        )
        try:
            found = self._database()
            up.add_metric(["database"], 1)
        except SQLAlchemyError as error:
            log.warning("metrics: database unavailable (%s)", error.__class__.__name__)
            found = []
            up.add_metric(["database"], 0)
        try:
            if self.redis is None:
                raise redis.ConnectionError("no Redis configured")
            found += self._redis()
            up.add_metric(["redis"], 1)
        except redis.RedisError as error:
            log.warning("metrics: Redis unavailable (%s)", error.__class__.__name__)
            up.add_metric(["redis"], 0)
        return [*found, up]

    def _database(self) -> list[Metric]:
        slack = stats.OVERDUE_TICKS * self.tick
        found = stats.snapshot(self.service.sessions, overdue_before=self.now - slack)
        keys = GaugeMetricFamily(
            "keyrotor_keys",
            f"Keys in each state (on PostgreSQL, beyond {stats.EXACT_UP_TO:,} keys, the planner's"
            " estimate from the last ANALYZE).",
            labels=["state"],
        )
        for state in State:
            keys.add_metric([state.value], found.keys_by_state.get(state.value, 0))
        realms = GaugeMetricFamily(
            "keyrotor_realms",
            f"Realms (on PostgreSQL, beyond {stats.EXACT_UP_TO:,} realms, the planner's estimate"
            " from the last ANALYZE).",
        )
        realms.add_metric([], found.realms)
        overdue = GaugeMetricFamily(
            "keyrotor_realms_overdue",
            "Realms whose next scheduled key change (next_rotation_at) is over"
            f" {stats.OVERDUE_TICKS} ticks late: beat or the workers are not keeping up.",
        )
        overdue.add_metric([], found.overdue.count)
        oldest = GaugeMetricFamily(
            "keyrotor_oldest_overdue_seconds",
            "How late the most overdue realm is: now minus the earliest next_rotation_at"
            f" (0 when none is over {stats.OVERDUE_TICKS} ticks late).",
        )
        oldest.add_metric([], _seconds(self.now, found.overdue.earliest_at))
        backlog = GaugeMetricFamily(
            "keyrotor_outbox_backlog", "Events committed but not yet relayed to Redis."
        )
        backlog.add_metric([], found.unrelayed.events)
        # The relay publishes a realm's JWKS before it stamps that realm's events, so a realm
        # with an unrelayed event is the only kind whose Redis JWKS may lag the database.
        lag = GaugeMetricFamily(
            "keyrotor_jwks_publish_lag_seconds",
            "Age of the oldest event not yet relayed (0 when none waits): how long its realm's"
            " JWKS may have been missing from Redis.",
        )
        lag.add_metric([], _seconds(self.now, found.unrelayed.oldest_at))
        lagging = GaugeMetricFamily(
            "keyrotor_jwks_lagging_realms",
            "Realms with an event not yet relayed, whose Redis JWKS may lag the database"
            " (`keyrotor doctor --check jwks` compares each realm).",
        )
        lagging.add_metric([], found.unrelayed.realms)
        waiting = GaugeMetricFamily(
            "keyrotor_webhook_oldest_undelivered_seconds",
            "Age of the oldest webhook delivery still waiting to be delivered (0 when none).",
        )
        waiting.add_metric([], _seconds(self.now, self.service.oldest_undelivered()))
        return [keys, realms, overdue, oldest, backlog, lag, lagging, waiting, self._pool()]

    def _pool(self) -> Metric:
        """Every pooled kind, zero or not, so the series stay the same six."""
        held = self.service.pool_counts()
        pool = GaugeMetricFamily(
            "keyrotor_key_pool_keys",
            "Ready RSA keys in the pool, by algo and size (KEYROTOR_KEY_POOL_SIZE each in use).",
            labels=["algo", "rsa_bits"],
        )
        for algo in sorted(POOLED_ALGOS):
            for bits in RSA_BITS:
                pool.add_metric([algo, str(bits)], held.get((algo, bits), 0))
        return pool

    def _redis(self) -> list[Metric]:
        assert self.redis is not None
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(ROTATION_FAILURES)
        pipe.hmget(EVENTS_RELAYED, REASONS)
        pipe.hgetall(HEARTBEAT_KEY)
        pipe.hmget(WEBHOOK_OUTCOMES, OUTCOMES)
        failed, counted, heartbeat, webhooks = pipe.execute()
        by_reason = {reason: int(n or 0) for reason, n in zip(REASONS, counted, strict=True)}
        relayed = CounterMetricFamily(
            "keyrotor_events_relayed",
            "Events appended to the stream, by reason (counted once each, as the relay appends).",
            labels=["reason"],
        )
        for reason, count in by_reason.items():
            relayed.add_metric([reason], count)
        rotations = CounterMetricFamily(
            "keyrotor_rotations",
            "Rotations committed and relayed (the key.rotated events: scheduled, manual and on"
            " delete).",
        )
        rotations.add_metric([], by_reason["key.rotated"])
        failures = CounterMetricFamily(
            "keyrotor_rotation_failures", "Rotation task attempts that failed (and were retried)."
        )
        failures.add_metric([], int(failed or 0))
        beat = parse_heartbeat(heartbeat)
        seen = GaugeMetricFamily(
            "keyrotor_beat_last_seen_timestamp_seconds",
            "Unix time of the beat scheduler's last heartbeat (0 when never seen).",
        )
        seen.add_metric([], beat.at.timestamp() if beat is not None else 0.0)
        deliveries = CounterMetricFamily(
            "keyrotor_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered, retrying (failed, tried again"
            " later), failed (given up after KEYROTOR_WEBHOOK_RETRY_FOR).",
            labels=["outcome"],
        )
        for outcome, count in zip(OUTCOMES, webhooks, strict=True):
            deliveries.add_metric([outcome], int(count or 0))
        return [relayed, rotations, failures, seen, deliveries]


def exposition(
    service: Service,
    client: redis.Redis | None,
    now: datetime,
    *,
    tick: timedelta = DEFAULT_TICK,
) -> bytes:
    """The Prometheus text format for one scrape; `tick` is KEYROTOR_TICK (what "late" means)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KeyrotorCollector(service, client, now, tick))
    return generate_latest(registry)
