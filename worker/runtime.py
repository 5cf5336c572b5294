"""Wiring from settings to a ready service; the entry points (CLI, Celery, HTTP) call this."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

import redis
from keyrotor_client import events
from sqlalchemy import Engine

from worker.core.clock import Clock, utcnow
from worker.core.sealing import MasterKeys, load_or_create_key_file
from worker.core.webhooks import WebhookPolicy
from worker.publish.jwks import Publisher
from worker.publish.relay import Relay
from worker.service import Limits, Service
from worker.service.webhooks import Dispatch
from worker.settings import Settings, redis_url, require_redis_url
from worker.store.db import make_engine, session_factory

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

__all__ = ["redis_url", "require_redis_url"]  # where they were first, for callers


def limits(settings: Settings) -> Limits:
    return Limits(
        default_policy=settings.default_policy,
        clock_skew=settings.clock_skew,
        jwks_max_age=settings.jwks_max_age,
    )


def master_keys(settings: Settings) -> MasterKeys:
    """The configured master keys; in development without any, a generated key file."""
    if settings.master_keys is not None:
        return MasterKeys.from_text(settings.master_keys)
    path = settings.master_key_file
    text, created = load_or_create_key_file(path)
    if created:
        log.warning(
            "KEYROTOR_MASTER_KEYS is not set: generated %s to seal keys (development only;"
            " back it up, or every sealed key is lost with it)",
            path,
        )
    return MasterKeys.from_text(text)


@cache
def engine(database_url: str) -> Engine:
    """One engine (and pool) per database per process."""
    return make_engine(database_url)


def build_service(settings: Settings, clock: Clock = utcnow) -> Service:
    sessions = session_factory(engine(settings.database_url))
    return Service(
        sessions, master_keys(settings), limits(settings), clock, webhook_policy(settings)
    )


def webhook_policy(settings: Settings) -> WebhookPolicy:
    return WebhookPolicy(
        allow_http=settings.webhook_allow_http,
        allow_private=settings.webhook_allow_private,
        timeout=settings.webhook_timeout,
        secret_overlap=settings.webhook_secret_overlap,
        retry_for=settings.webhook_retry_for,
        retry_schedule=settings.webhook_retry_schedule,
    )


@cache
def redis_client(url: str, *, timeout: float = 5.0, fail_fast: bool = False) -> redis.Redis:
    """One client (and pool) per Redis and set of options per process: the server side's only
    way to Redis. `fail_fast` for callers that have another source or report the failure."""
    return events.redis_client(url, timeout=timeout, fail_fast=fail_fast)


def publisher(settings: Settings) -> Publisher:
    return Publisher(redis_client(require_redis_url(settings)), settings.jwks_dir)


def relay(settings: Settings, service: Service, client: redis.Redis | None = None) -> Relay:
    """The relay that publishes each change after its commit (`Relay.after_commit`), on the
    configured Redis unless a client is given."""
    client = client or redis_client(require_redis_url(settings))
    return Relay(
        service,
        client,
        maxlen=settings.events_stream_maxlen,
        publisher=Publisher(client, settings.jwks_dir),
        dispatch=lambda dispatches: send_deliveries(settings, dispatches),
    )


@cache
def task_sender(settings: Settings) -> Celery:
    """The Celery app a process sends tasks with (the web API, the CLI, a relay), made on
    first use and kept: a broker connection pool per process, not per message."""
    from worker.jobs.app import make_app

    return make_app(settings, require_redis_url(settings))


def send_deliveries(settings: Settings, dispatches: Sequence[Dispatch]) -> None:
    """Queue webhook deliveries for the webhook worker, from any process (a task, the web
    API, the CLI) through a Celery app made for sending on first use."""
    tasks = task_sender(settings)
    for dispatch in dispatches:
        tasks.send_task(
            "keyrotor.deliver_webhook",
            args=[dispatch.webhook_id, dispatch.delivery_ids, dispatch.lease],
        )
