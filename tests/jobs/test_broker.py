"""The guard in worker/jobs/broker.py: a channel of a closed broker connection fails as a connection
error (which kombu and Celery handle) instead of an AttributeError that ends the worker."""

from __future__ import annotations

import pytest
import redis
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Producer
from kombu.transport import redis as kombu_redis

from worker.jobs.app import make_app
from worker.jobs.broker import guard_detached_channels
from worker.settings import load_settings


def _detached_channel_with_an_unacked_message(redis_url: str) -> tuple[Connection, object]:
    connection = Connection(redis_url)
    channel = connection.default_channel
    queue = Queue("keyrotor-test-guard", channel=channel)
    queue.declare()
    Producer(channel).publish({"x": 1}, routing_key="keyrotor-test-guard")
    assert queue.get(no_ack=False) is not None  # delivered, not acknowledged
    channel.connection.client = None  # what a broker restart leaves behind
    return connection, channel


def test_closing_a_detached_channel_no_longer_raises_attribute_error(redis_url: str) -> None:
    """Found by the chaos run: this path ended a worker process on a Redis restart."""
    guard_detached_channels()
    connection, channel = _detached_channel_with_an_unacked_message(redis_url)
    with pytest.raises(redis.ConnectionError):
        channel._connparams()  # type: ignore[attr-defined]
    connection.close()  # what Celery does on a lost connection: now it just closes


def test_the_celery_app_installs_the_guard(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    current = kombu_redis.Channel._connparams
    unguarded = getattr(current, "__wrapped__", current)
    monkeypatch.setattr(kombu_redis.Channel, "_connparams", unguarded)
    make_app(load_settings(redis_url=redis_url), redis_url)
    connection, channel = _detached_channel_with_an_unacked_message(redis_url)
    with pytest.raises(redis.ConnectionError):
        channel._connparams()  # type: ignore[attr-defined]
    connection.close()
