"""The Celery app: `celery -A worker worker` and `celery -A worker beat` find `app` here.

Importing this module reads the settings and refuses, in one line, to start without a broker.
"""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from celery.signals import setup_logging

from worker.celery_app import make_app
from worker.errors import ConfigError
from worker.logs import configure_logging
from worker.runtime import require_redis_url
from worker.settings import Settings, load_settings


def _load() -> Celery:
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
    `worker.logs` (JSON lines in production) instead of configuring Celery's own format."""

    def configure(**_: Any) -> None:
        configure_logging(settings)

    setup_logging.connect(configure, weak=False)


app = _load()
