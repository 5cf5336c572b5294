"""`keyrotor doctor`: healthy on a healthy deployment, and one precise line for each thing
broken on purpose."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from tests.store.test_db import HEAD
from tests.support.processes import free_port, processes_under
from tests.support.stack import Stack, wait_for
from worker.core.keys import POOL_REALM
from worker.core.sealing import generate_master_key
from worker.ops.doctor import CHECKS, Check, examine
from worker.publish.heartbeat import HEARTBEAT_KEY, Heartbeat, record_heartbeat
from worker.publish.jwks import publish_realm, redis_key
from worker.publish.relay import Relay
from worker.service import RealmView
from worker.settings import Settings
from worker.store.db import transaction
from worker.store.models import Event, PooledKey

KEYROTOR = Path(sys.executable).parent / "keyrotor"


def by_name(results: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in results}


def problems(results: list[Check]) -> dict[str, str]:
    return {check.name: check.detail for check in results if not check.ok}


def healthy(stack: Stack) -> RealmView:
    """A realm created, published and relayed, and a beat that ticked just now: as a running
    deployment would have it. Hours, not seconds, of policy: nothing falls due (no key change
    becomes overdue) while a test runs."""
    hour = timedelta(hours=1)
    realm = stack.service.create_realm(
        "acme", rotation_period=24 * hour, prepublish=hour, grace=hour
    )
    publish_realm(stack.service, stack.publisher, realm.id)
    Relay(stack.service, stack.redis, publisher=stack.publisher).relay_all()
    record_heartbeat(stack.redis, Heartbeat(datetime.now(UTC), "beat-host", 4242))
    return realm


def changed(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(update=update)


def test_a_healthy_deployment_passes_every_check(stack: Stack) -> None:
    healthy(stack)
    results = examine(stack.settings)
    assert [check.name for check in results] == list(CHECKS)
    assert problems(results) == {}
    found = by_name(results)
    assert "(current)" in found["database"].detail
    assert "1 key, every one opens" in found["sealed_keys"].detail
    assert "beat-host, pid 4242" in found["beat"].detail
    assert "Redis and files" in found["jwks"].detail


def test_keys_sealed_under_a_master_key_that_is_not_configured(stack: Stack) -> None:
    realm = healthy(stack)
    kid = stack.service.signing_key(realm.id).kid
    other = changed(stack.settings, master_keys=generate_master_key())
    assert problems(examine(other)) == {
        "sealed_keys": f"1 of 1 key do not open with the configured master keys: {kid}"
        " (is a master key that sealed them missing from KEYROTOR_MASTER_KEYS?)"
    }
    # The old key kept behind a new first key: healthy, with a reminder to rewrap.
    rotated = changed(
        stack.settings, master_keys=f"{generate_master_key()},{stack.settings.master_keys}"
    )
    results = examine(rotated, only=["sealed_keys"])
    assert results[0].ok and "1 still sealed under an older one" in results[0].detail


def test_pooled_keys_are_checked_like_realm_keys(stack: Stack) -> None:
    healthy(stack)
    stack.service.fill_pool(1, wanted=[("rs256", 2048)])
    (check,) = examine(stack.settings, only=["sealed_keys"])
    assert check.ok
    assert check.detail.startswith("2 keys (1 of them pooled), every one opens")
    # A pooled key sealed for another row does not open: named like a realm key.
    with transaction(stack.service.sessions) as session:
        row = session.scalars(select(PooledKey)).one()
        pooled_id, keys = row.id, stack.service.master_keys
        secret = keys.open(row.sealed_secret, realm_id=POOL_REALM, key_id=pooled_id)
        row.sealed_secret = keys.seal(secret, realm_id="rl_elsewhere", key_id=pooled_id)
    assert problems(examine(stack.settings, only=["sealed_keys"])) == {
        "sealed_keys": "1 of 2 keys (1 of them pooled) do not open with the configured master"
        f" keys: {pooled_id} (is a master key that sealed them missing from"
        " KEYROTOR_MASTER_KEYS?)"
    }


def test_an_unmigrated_database(stack: Stack, tmp_path: Path) -> None:
    healthy(stack)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    found = problems(examine(changed(stack.settings, database_url=f"sqlite:///{empty}")))
    assert found["database"].endswith(
        f": schema at nothing, this code needs {HEAD} (run `keyrotor migrate`)"
    )
    assert found["policies"].startswith("not checked, database not usable:")
    assert set(found) == {"database", "sealed_keys", "policies", "overdue", "outbox", "jwks"}

    missing = tmp_path / "nowhere" / "keyrotor.db"
    found = problems(examine(changed(stack.settings, database_url=f"sqlite:///{missing}")))
    assert found["database"] == f"{missing} does not exist (run `keyrotor migrate`)"
    assert not missing.parent.exists()  # the doctor creates nothing


def test_an_unreachable_redis(stack: Stack) -> None:
    healthy(stack)
    url = f"redis://127.0.0.1:{free_port()}/0"
    found = problems(examine(changed(stack.settings, redis_url=url)))
    assert found["redis"].startswith(f"{url} does not answer (ConnectionError")
    assert found["beat"].startswith("not checked, redis not usable:")
    assert found["jwks"].startswith("not checked, redis not usable:")
    assert set(found) == {"redis", "beat", "jwks"}
    # Asked for beat alone, the Redis failure is beat's own problem, not a silent skip.
    assert examine(changed(stack.settings, redis_url=url), only=["beat"])[0].detail.startswith(
        "redis not usable:"
    )


def test_a_realm_with_an_unsafe_policy_written_behind_the_services_back(stack: Stack) -> None:
    realm = healthy(stack)
    with stack.service.sessions.begin() as session:
        session.execute(text("UPDATE realms SET grace_s = 1 WHERE id = :id"), {"id": realm.id})
    found = problems(examine(stack.settings))
    assert list(found) == ["policies"]
    assert found["policies"].startswith(f"1 of 1 realm with an unsafe policy: acme ({realm.id})")
    assert "Grace (1s) must be at least max token ttl plus clock skew (2s)" in found["policies"]


def test_no_beat_heartbeat_or_a_stale_one(stack: Stack) -> None:
    healthy(stack)
    stack.redis.delete(HEARTBEAT_KEY)
    assert problems(examine(stack.settings)) == {
        "beat": "no beat has ever ticked against this Redis (start `celery -A worker beat`)"
    }
    then = datetime.now(UTC) - timedelta(minutes=5)
    record_heartbeat(stack.redis, Heartbeat(then, "old-host", 7))
    found = problems(examine(stack.settings, now=then + timedelta(minutes=5, seconds=1)))
    assert found == {
        "beat": "beat last seen 5m1s ago (old-host, pid 7), over 2m: nothing rotates while it"
        " is down"
    }


def test_realms_overdue_are_named_earliest_first(stack: Stack) -> None:
    healthy(stack)
    late = [stack.service.create_realm(f"late-{n}") for n in range(6)]  # due in 4 s (FAST)
    Relay(stack.service, stack.redis, publisher=stack.publisher).relay_all()
    now = datetime.now(UTC)
    assert by_name(examine(stack.settings, only=["overdue"], now=now))["overdue"] == Check(
        "overdue", True, "no realm is over 3s late for a key change"
    )
    found = problems(examine(stack.settings, now=late[-1].next_rotation_at + timedelta(minutes=1)))
    assert list(found) == ["overdue"]
    assert found["overdue"].startswith(
        f"6 realms over 3s late for a scheduled key change: late-0 ({late[0].id}) 1m"
    )
    assert f"late-4 ({late[4].id}) 1m" in found["overdue"]
    assert found["overdue"].endswith(
        " late and 1 more (are beat and the workers running? `keyrotor rotate <realm>` rotates"
        " one by hand)"
    )


def test_an_event_left_unsent_in_the_outbox(stack: Stack) -> None:
    healthy(stack)
    old = datetime.now(UTC) - timedelta(minutes=10)
    with transaction(stack.service.sessions) as session:
        session.execute(update(Event).values(published_at=None, event_at=old))
    found = problems(examine(stack.settings))
    assert list(found) == ["outbox"]
    assert found["outbox"].startswith("1 event unsent for over 1m, the oldest from 10m")


def test_a_published_jwks_behind_or_ahead_of_the_database(stack: Stack) -> None:
    realm = healthy(stack)
    stack.service.rotate("acme", force=True)  # committed; neither copy published
    Relay(stack.service, stack.redis).relay_all()  # its event sent, the JWKS left behind
    assert problems(examine(stack.settings)) == {}  # just changed: still settling
    later = datetime.now(UTC) + timedelta(minutes=1)
    found = problems(examine(stack.settings, now=later))
    assert list(found) == ["jwks"]
    assert found["jwks"].startswith(
        f"2 published JWKS copies behind the database for over 30s: acme ({realm.id}) redis"
        f" v1, database v2, acme ({realm.id}) file v1, database v2"
    )

    publish_realm(stack.service, stack.publisher, realm.id)
    stack.redis.hset(redis_key(realm.id), "jwks_version", 99)  # as after a restored backup
    found = problems(examine(stack.settings, now=later))
    assert found["jwks"].startswith(
        f"1 published JWKS copy newer than the database: acme ({realm.id}) redis v99,"
        " database v2 (restored from a backup?"
    )


def test_the_command_prints_a_checklist_or_json_and_exits_1_on_a_problem(stack: Stack) -> None:
    healthy(stack)
    env = {**stack.env, "KEYROTOR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    shown = subprocess.run(
        [KEYROTOR, "doctor"], env=env, cwd=stack.tmp, capture_output=True, text=True
    )
    assert shown.returncode == 1, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("ok    database     ")
    assert lines[1].startswith("FAIL  redis        redis://127.0.0.1:")
    assert lines[-1] == "1 problem, 2 checks not run"

    as_json = subprocess.run(
        [KEYROTOR, "doctor", "--json", "--check", "database", "--check", "policies"],
        env=stack.env,
        cwd=stack.tmp,
        capture_output=True,
        text=True,
    )
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["ok"] is True
    assert [(c["name"], c["ok"]) for c in report["checks"]] == [
        ("database", True),
        ("policies", True),
    ]

    unknown = subprocess.run(
        [KEYROTOR, "doctor", "--check", "bogus"], env=stack.env, capture_output=True, text=True
    )
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown check bogus")


@pytest.mark.slow
def test_doctor_finds_an_embedded_keyrotor_run_healthy(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
    env["KEYROTOR_HTTP_PORT"] = str(free_port())
    with open(tmp_path / "run.log", "wb") as log:
        run = subprocess.Popen(
            [KEYROTOR, "run"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def doctor() -> dict[str, Any] | None:
            result = subprocess.run(
                [KEYROTOR, "doctor", "--json"], cwd=tmp_path, env=env, capture_output=True
            )
            report: dict[str, Any] = json.loads(result.stdout or b"{}")
            return report if result.returncode == 0 else None

        wait_for(lambda: (tmp_path / "var" / "redis.url").exists(), 60, "the embedded Valkey")
        report = wait_for(doctor, 60, "a healthy doctor report")
        assert report["ok"] and [c["name"] for c in report["checks"]] == list(CHECKS)
        assert all(check["ok"] for check in report["checks"]), report
    finally:
        os.killpg(run.pid, signal.SIGTERM)
        try:
            run.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
        for pid in processes_under(tmp_path):
            os.kill(pid, signal.SIGKILL)
