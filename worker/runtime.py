"""Wiring from settings to a ready service; the entry points (CLI, Celery, HTTP) call this."""

from __future__ import annotations

import logging
from functools import cache

import redis
from sqlalchemy import Engine

from worker.client import events
from worker.core.clock import Clock, utcnow
from worker.core.errors import ConfigError
from worker.core.sealing import MasterKeys, load_or_create_key_file
from worker.publish.jwks import Publisher
from worker.publish.relay import Relay
from worker.service import Limits, Service
from worker.settings import Settings
from worker.store.db import make_engine, session_factory

log = logging.getLogger(__name__)


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
    return Service(sessions, master_keys(settings), limits(settings), clock)


def redis_url(settings: Settings) -> str | None:
    """The configured Redis, else the embedded Valkey that `keyrotor run` announced in var/."""
    if settings.redis_url is not None:
        return settings.redis_url
    try:
        return (settings.var_dir / "redis.url").read_text().strip() or None
    except FileNotFoundError:
        return None


def require_redis_url(settings: Settings) -> str:
    url = redis_url(settings)
    if url is None:
        raise ConfigError(
            "KEYROTOR_REDIS_URL is not set and no embedded Valkey is running"
            " (set it, or start everything with `keyrotor run`)"
        )
    return url


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
    )
