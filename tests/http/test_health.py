"""`/healthz` and `/metrics` over real HTTP, with everything up and with a part down."""

from __future__ import annotations

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.http.conftest import Api
from tests.support.live import LiveServer
from worker.http.app import create_app
from worker.ops.metrics import count_rotation_failure
from worker.service import Service
from worker.store.db import make_engine, session_factory


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_healthz_is_ok_when_the_database_and_redis_answer(api: Api) -> None:
    response = api.anon.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_healthz_is_503_when_redis_does_not_answer(api: Api) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    app = create_app(api.stack.settings, api.stack.service, redis_client=dead)
    with LiveServer(app) as server:
        response = httpx.get(server.url + "/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("unreachable")


def test_healthz_is_503_when_the_database_does_not_answer(api: Api) -> None:
    nowhere = "postgresql://nobody@127.0.0.1:1/none"
    engine = make_engine(nowhere, connect_args={"connect_timeout": 2})
    service = api.stack.service
    gone = Service(session_factory(engine), service.master_keys, service.limits)
    app = create_app(api.stack.settings, gone, redis_client=api.stack.redis)
    with LiveServer(app) as server:
        health = httpx.get(server.url + "/healthz")
        listing = httpx.get(server.url + "/v1/realms", headers=api.with_token(api.token()))
        metrics = httpx.get(server.url + "/metrics")
    assert health.status_code == 503
    assert health.json()["checks"]["database"].startswith("unreachable")
    assert listing.status_code == 503  # the admin key lookup needs the database
    assert listing.json() == {"errors": ["Service unavailable: the database does not answer"]}
    assert metrics.status_code == 200
    found = samples(metrics.text)
    assert found[("keyrotor_up", (("component", "database"),))] == 0
    assert found[("keyrotor_up", (("component", "redis"),))] == 1


def test_metrics_count_keys_rotations_failures_backlog_and_lag(api: Api) -> None:
    api.realm("acme")  # through the API: published and relayed after the commit
    api.realm("other")
    api.stack.service.rotate("acme", force=True)  # committed, not yet published or relayed
    count_rotation_failure(api.stack.redis)
    count_rotation_failure(api.stack.redis)

    response = api.anon.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    found = samples(response.text)
    assert found[("keyrotor_keys", (("state", "active"),))] == 2
    assert found[("keyrotor_keys", (("state", "expired"),))] == 1
    assert found[("keyrotor_keys", (("state", "pending"),))] == 0
    assert found[("keyrotor_rotations_total", ())] == 0  # counted as the relay sends it
    assert found[("keyrotor_events_relayed_total", (("reason", "realm.created"),))] == 2
    assert found[("keyrotor_rotation_failures_total", ())] == 2
    assert found[("keyrotor_realms", ())] == 2
    assert found[("keyrotor_realms_overdue", ())] == 0
    assert found[("keyrotor_outbox_backlog", ())] == 1  # the rotation's event
    assert found[("keyrotor_jwks_lagging_realms", ())] == 1
    assert found[("keyrotor_jwks_publish_lag_seconds", ())] >= 0
    assert not any(labels and labels[0][0].startswith("realm") for _, labels in found)
    assert found[("keyrotor_up", (("component", "database"),))] == 1
    assert found[("keyrotor_up", (("component", "redis"),))] == 1
