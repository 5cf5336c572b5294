"""The Celery app: `celery -A worker worker` and `celery -A worker beat` find `app` here."""

from __future__ import annotations

import sys
from datetime import timedelta

from celery import Celery

from worker.errors import ConfigError
from worker.runtime import require_redis_url
from worker.settings import Settings, load_settings

# Longer than any task time limit or retry delay, so Redis never redelivers a task that is
# still running or waiting to retry (see README: "Two of anything at once").
VISIBILITY_TIMEOUT = 3600
TASK_TIME_LIMIT = 300
RETRY_DELAY_MAX = 120


def make_app(settings: Settings, broker_url: str) -> Celery:
    tick = settings.tick.total_seconds()
    sweep = min(60.0, tick * 6)
    app = Celery("keyrotor", broker=broker_url, include=["worker.tasks"])
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
        worker_cancel_long_running_tasks_on_connection_loss=True,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            # A beat message not picked up within its period is dropped: the next one replaces it.
            "rotate-due": _every("keyrotor.rotate_due", tick),
            "purge-expired": _every("keyrotor.purge_expired", sweep),
            "reconcile-jwks": _every("keyrotor.reconcile_jwks", sweep),
        },
    )
    return app


def _every(task: str, seconds: float) -> dict[str, object]:
    return {"task": task, "schedule": timedelta(seconds=seconds), "options": {"expires": seconds}}


def _load() -> Celery:
    try:
        settings = load_settings()
        return make_app(settings, require_redis_url(settings))
    except ConfigError as error:
        sys.stderr.write(f"error: {error}\n")
        raise SystemExit(2) from None


app = _load()
