"""The Celery app: `celery -A worker worker` and `celery -A worker beat` find `app` here.

Importing this module reads the settings and refuses, in one line, to start without a broker.
"""

from __future__ import annotations

import sys

from celery import Celery

from worker.celery_app import make_app
from worker.errors import ConfigError
from worker.runtime import require_redis_url
from worker.settings import load_settings


def _load() -> Celery:
    try:
        settings = load_settings()
        return make_app(settings, require_redis_url(settings))
    except ConfigError as error:
        sys.stderr.write(f"error: {error}\n")
        raise SystemExit(2) from None


app = _load()
