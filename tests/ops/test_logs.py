"""Structured logs: JSON lines with ids as fields in production, readable lines in a terminal,
and never key material, whatever the level."""

from __future__ import annotations

import inspect
import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from celery.app import trace
from celery.app.trace import build_tracer
from celery.beat import ScheduleEntry, Scheduler

from tests.support.stack import Stack
from worker.core.keys import generate
from worker.ops.logs import (
    BEAT_SENDING,
    CELERY_RECEIVED,
    CELERY_RETRY,
    CELERY_SUCCEEDED,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    redact,
    wants_json,
)
from worker.settings import load_settings


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("keyrotor.tasks", logging.INFO, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_a_json_line_has_time_level_logger_message_and_the_extra_ids() -> None:
    line = JsonFormatter().format(
        record("rotated %s", "acme", realm_id="rl_x", key_id="jky_y", key_ids=["jky_y"])
    )
    entry = json.loads(line)
    assert "\n" not in line
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry.pop("ts"))
    assert entry == {
        "level": "INFO",
        "logger": "keyrotor.tasks",
        "message": "rotated acme",
        "realm_id": "rl_x",
        "key_id": "jky_y",
        "key_ids": ["jky_y"],
    }


def test_an_exception_stays_on_the_one_line() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        failed = record("failed")
        failed.exc_info = sys.exc_info()
    line = JsonFormatter().format(failed)
    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exc"]


def test_a_text_line_is_readable_and_keeps_the_fields() -> None:
    line = TextFormatter().format(record("rotated acme", realm_id="rl_x"))
    assert re.fullmatch(r"\S+ \S+ INFO    keyrotor\.tasks: rotated acme  realm_id=rl_x", line)


def test_key_material_that_reaches_a_log_line_is_blanked() -> None:
    pem = generate("es256").secret.decode().strip()
    secret = generate("hs256").secret.decode()
    assert "PRIVATE KEY" in pem and secret.startswith("jsk_")
    text = redact(f"oops {pem} and {secret} and jky_0vRHaJyOFdkV3QVJpUJqJQ")
    assert text == "oops [private key redacted] and jsk_[redacted] and jky_0vRHaJyOFdkV3QVJpUJqJQ"
    line = JsonFormatter().format(record("loaded %s", pem, secret=secret))
    assert "PRIVATE" not in line.replace("[private key redacted]", "") and secret not in line


def test_auto_means_json_in_production_unless_a_person_watches() -> None:
    production = load_settings(env="production", master_keys="A" * 43)
    assert wants_json(production, io.StringIO())
    assert not wants_json(production, Terminal())
    assert not wants_json(load_settings(), io.StringIO())  # development
    assert wants_json(load_settings(log_format="json"), Terminal())
    assert not wants_json(
        load_settings(log_format="TEXT", env="production", master_keys="A" * 43), io.StringIO()
    )


def test_configure_logging_replaces_the_handlers_at_the_configured_level(
    restore_logging: None,
) -> None:
    logging.getLogger().addHandler(logging.NullHandler())
    stream = io.StringIO()
    configure_logging(load_settings(log_format="json", log_level="warning"), stream=stream)
    assert len(logging.getLogger().handlers) == 1
    logging.getLogger("celery.worker").info("not shown")
    logging.getLogger("celery.worker").warning("shown", extra={"event_id": "evt_1"})
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["logger"], e["message"], e["event_id"]) for e in entries] == [
        ("celery.worker", "shown", "evt_1")
    ]


def test_the_routine_lines_are_celerys_own_word_for_word() -> None:
    """The filter matches Celery's templates exactly; a Celery that rewords one fails here."""
    assert (CELERY_RECEIVED, CELERY_SUCCEEDED, CELERY_RETRY) == (
        trace.LOG_RECEIVED,
        trace.LOG_SUCCESS,
        trace.LOG_RETRY,
    )
    assert repr(BEAT_SENDING) in inspect.getsource(Scheduler.apply_entry)


ROUTINE = Celery("routine", broker="memory://")


@ROUTINE.task(name="sweep")  # type: ignore[untyped-decorator]
def sweep() -> int:
    return 0


@ROUTINE.task(name="broken")  # type: ignore[untyped-decorator]
def broken() -> None:
    raise RuntimeError("database on fire")


@ROUTINE.task(name="flaky", autoretry_for=(ConnectionError,))  # type: ignore[untyped-decorator]
def flaky() -> None:
    raise ConnectionError("redis went away")


def run_celery_tasks() -> None:
    """A success, a failure and a retried failure through Celery's tracer, as a worker runs
    them, and one beat send: the lines an idle or a failing service logs."""
    for task in (sweep, broken, flaky):
        tracer = build_tracer(task.name, task, app=ROUTINE, eager=False, propagate=False)
        tracer(f"id-{task.name}", (), {}, {"id": f"id-{task.name}"})
    every = timedelta(seconds=2)
    entry = ScheduleEntry(name="relay-events", task="sweep", schedule=every, app=ROUTINE)
    Scheduler(ROUTINE, lazy=True).apply_entry(entry)


@pytest.mark.parametrize("level", ["info", "debug"])
def test_routine_task_lines_are_debug_and_failures_stay_loud(
    restore_logging: None, level: str
) -> None:
    stream = io.StringIO()
    configure_logging(load_settings(log_format="json", log_level=level), stream=stream)

    run_celery_tasks()

    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    levels = {e["message"].split(":")[0]: e["level"] for e in entries if "logger" in e}
    assert levels["Task broken[id-broken] raised unexpected"] == "ERROR"
    assert "database on fire" in next(e["exc"] for e in entries if e["level"] == "ERROR")
    assert levels["Task flaky[id-flaky] retry"] == "WARNING"  # Celery says INFO
    routine = {"Task sweep[id-sweep] succeeded in", "Scheduler"}
    shown = {m for m in levels for r in routine if m.startswith(r)}
    if level == "info":
        assert shown == set(), stream.getvalue()
    else:
        assert len(shown) == 2 and {levels[m] for m in shown} == {"DEBUG"}


def test_a_failure_in_a_terminal_shows_its_traceback_once(restore_logging: None) -> None:
    stream = Terminal()
    configure_logging(load_settings(), stream=stream)

    run_celery_tasks()

    text = stream.getvalue()
    assert "ERROR   celery.app.trace: Task broken[id-broken] raised unexpected" in text
    assert text.count("RuntimeError: database on fire") == 1  # not again in Celery's `data`
    assert "succeeded" not in text and "Sending due task" not in text


# A whole lifecycle through the Celery tasks' own code, logging JSON at DEBUG.
LIFECYCLE = """
import json, sys
from worker.jobs import tasks
from worker.ops.logs import configure_logging

ctx = tasks.context()
configure_logging(ctx.settings)
service, seen = ctx.service, []
for algo in ("hs256", "es256", "rs256"):
    realm = service.create_realm(f"r-{algo}", algo=algo)
    tasks.publish_jwks(realm.id)
    seen.append(service.signing_key(realm.id).secret.decode())
    tasks.rotate_realm(realm.id, force=True)
    seen.append(service.signing_key(realm.id).secret.decode())
    made = service.create_key(realm.id)
    tasks.revoke_key(service.signing_key(realm.id).kid)
    seen.append(service.signing_key(realm.id).secret.decode())
    tasks.delete_key(made.id)
tasks.purge_expired()
tasks.reconcile_jwks()
tasks.relay_events()
print(json.dumps(seen))
"""


def test_a_whole_lifecycle_logs_json_with_ids_and_no_key_material(stack: Stack) -> None:
    env = {**stack.env, "KEYROTOR_LOG_FORMAT": "json", "KEYROTOR_LOG_LEVEL": "DEBUG"}
    result = subprocess.run(
        [sys.executable, "-c", LIFECYCLE], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    secrets = json.loads(result.stdout)
    log = result.stderr
    entries = [json.loads(line) for line in log.splitlines()]  # every line is one JSON object

    assert len(secrets) == 9 and all(secret for secret in secrets)
    for secret in secrets:
        assert secret not in log
        assert secret.strip().splitlines()[1 if "PRIVATE" in secret else 0] not in log
    assert "PRIVATE KEY" not in log
    assert not re.search(r"jsk_[0-9A-Za-z]{43}", log)
    assert stack.settings.master_keys and stack.settings.master_keys not in log

    rotated = [e for e in entries if e.get("reason") == "key.rotated"]
    assert len(rotated) == 3
    assert all(e["realm_id"].startswith("rl_") for e in rotated)
    assert all(e["key_id"].startswith("jky_") and e["event_id"].startswith("evt_") for e in rotated)
    revoked = [e for e in entries if e["message"].startswith("revoked ")]
    assert len(revoked) == 3 and all(e["key_id"] in e["message"] for e in revoked)
