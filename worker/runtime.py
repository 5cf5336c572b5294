"""Wiring from settings to a ready service; the entry points (CLI, Celery, HTTP) call this."""

from __future__ import annotations

import logging
from functools import cache

from sqlalchemy import Engine

from worker.lifecycle import Policy
from worker.sealing import MasterKeys, load_or_create_key_file
from worker.service import Clock, Limits, Service, utcnow
from worker.settings import Settings
from worker.store.db import make_engine, session_factory

log = logging.getLogger(__name__)


def limits(settings: Settings) -> Limits:
    return Limits(
        default_policy=Policy(
            algo=settings.algo,
            rotation_period=settings.rotation_period,
            prepublish=settings.prepublish,
            grace=settings.grace,
            max_token_ttl=settings.max_token_ttl,
            rsa_bits=settings.rsa_bits,
        ),
        clock_skew=settings.clock_skew,
        jwks_max_age=settings.jwks_max_age,
    )


def master_keys(settings: Settings) -> MasterKeys:
    """The configured master keys; in development without any, a generated key file."""
    if settings.master_keys is not None:
        return MasterKeys.from_text(settings.master_keys)
    path = settings.var_dir / "master.key"
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
