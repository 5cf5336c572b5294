"""The Celery app from settings: broker, serialization, acknowledgement, the beat schedule."""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.signals import setup_logging

from worker.core.errors import ConfigError
from worker.jobs.broker import guard_detached_channels
from worker.ops.logs import configure_logging
from worker.settings import Settings, load_settings, require_redis_url

# Longer than any task time limit or retry delay, so Redis never redelivers a task that is
# still running or waiting to retry (docs/architecture.md: "Two of anything at once").
VISIBILITY_TIMEOUT = 3600
TASK_TIME_LIMIT = 300
RETRY_DELAY_MAX = 120
RELAY_EVERY = 2.0
# The outbox retention is days; sweeping it every 10 minutes keeps each run's share small.
PRUNE_EVERY = 600.0
POOL_EVERY = 60.0
WEBHOOK_QUEUE = "keyrotor.webhooks"
# The tasks that take an `actor` keyword (who asked: worker.service.actors); a sender passes
# it only to these, as any other task would refuse the unknown argument.
ACTOR_TASKS = frozenset(
    {
        "keyrotor.rotate_all",
        "keyrotor.rotate_realms",
        "keyrotor.rotate_realm",
        "keyrotor.purge_expired",
        "keyrotor.delete_key",
        "keyrotor.revoke_key",
    }
)


def make_app(settings: Settings, broker_url: str) -> Celery:
    guard_detached_channels()  # a Redis restart must not end the worker (worker/jobs/broker.py)
    tick = settings.tick.total_seconds()
    sweep = min(60.0, tick * 6)
    app = Celery(
        "keyrotor",
        broker=broker_url,
        include=["worker.jobs.tasks", "worker.jobs.mass_rotation", "worker.jobs.webhooks"],
    )
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=TASK_TIME_LIMIT,
        task_soft_time_limit=TASK_TIME_LIMIT - 30,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        broker_connection_retry_on_startup=True,
        # A rotation under way when Redis drops still commits; its redelivery is harmless.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        timezone="UTC",
        enable_utc=True,
        # In-memory schedule plus a heartbeat in Redis for `keyrotor doctor` (worker/jobs/beat.py).
        beat_scheduler="worker.jobs.beat:HeartbeatScheduler",
        # Webhook deliveries wait on other people's servers: their own queue and worker.
        task_routes={"keyrotor.deliver_webhook": {"queue": WEBHOOK_QUEUE}},
        beat_schedule={
            # A beat message not picked up within its period is dropped: the next one replaces it.
            "rotate-due": _every("keyrotor.rotate_due", tick),
            "purge-expired": _every("keyrotor.purge_expired", sweep),
            "reconcile-jwks": _every("keyrotor.reconcile_jwks", sweep),
            # Events are sent right after each commit; this only sweeps what was left behind.
            "relay-events": _every("keyrotor.relay_events", RELAY_EVERY),
            "prune-events": _every("keyrotor.prune_events", PRUNE_EVERY),
            # Tops the RSA key pool up; a run with a full pool is one small GROUP BY.
            "fill-key-pool": _every("keyrotor.fill_key_pool", POOL_EVERY),
            # Retries of webhook deliveries, and any whose sender was lost.
            "send-webhooks": _every("keyrotor.send_webhooks", RELAY_EVERY),
        },
    )
    return app


def _every(task: str, seconds: float) -> dict[str, object]:
    return {"task": task, "schedule": timedelta(seconds=seconds), "options": {"expires": seconds}}


def load_app() -> Celery:
    """The app from the environment's settings, or one line and exit status 2 without a broker."""
    try:
        settings = load_settings()
        app = make_app(settings, require_redis_url(settings))
    except ConfigError as error:
        sys.stderr.write(f"error: {error}\n")
        raise SystemExit(2) from None
    _log_our_way(settings)
    return app


def _log_our_way(settings: Settings) -> None:
    """Answer Celery's `setup_logging` signal, so the worker and beat log through
    `worker.ops.logs` (JSON lines in production) instead of configuring Celery's own format."""

    def configure(**_: Any) -> None:
        configure_logging(settings)

    setup_logging.connect(configure, weak=False)
