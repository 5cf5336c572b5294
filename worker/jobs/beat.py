"""The beat scheduler keyrotor runs: Celery's, plus a heartbeat in Redis as it ticks.

`keyrotor doctor` and the `keyrotor_beat_last_seen_timestamp_seconds` metric read the heartbeat
(`worker.publish.heartbeat`), so "beat is silent" is told apart from "workers are slow": no worker
writes it. `celery beat` runs `HeartbeatScheduler` because `worker.jobs.app` names it as
`beat_scheduler`. The schedule is kept in memory: every entry is a short interval, so a
restarted beat loses nothing, and beat needs no writable schedule file (a read-only container
is fine).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

import redis
from celery.beat import Scheduler

from worker import runtime
from worker.publish.heartbeat import HEARTBEAT_EVERY, Heartbeat, record_heartbeat

log = logging.getLogger("keyrotor.beat")


class HeartbeatScheduler(Scheduler):  # type: ignore[misc]
    """Celery's in-memory scheduler, recording a heartbeat every few seconds as it ticks."""

    _client: redis.Redis | None = None
    _last_write = 0.0
    _failing = False

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval: float = super().tick(*args, **kwargs)
        if time.monotonic() - self._last_write >= HEARTBEAT_EVERY:
            self._beat()
        return min(interval, HEARTBEAT_EVERY)

    def _beat(self) -> None:
        try:
            if self._client is None:
                self._client = runtime.redis_client(self.app.conf.broker_url)
            record_heartbeat(
                self._client, Heartbeat(datetime.now(UTC), socket.gethostname(), os.getpid())
            )
            self._last_write = time.monotonic()
            if self._failing:
                log.info("beat heartbeat recorded again")
            self._failing = False
        except redis.RedisError as error:
            if not self._failing:  # once per outage, not once per tick
                log.warning("beat heartbeat not recorded (%s)", error.__class__.__name__)
            self._failing = True
