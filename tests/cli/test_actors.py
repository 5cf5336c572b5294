"""The CLI's changes are the OS user's (`cli:<user>`), set once for every command, and
`keyrotor events --actor` prints only the events that actor caused.

Runs once (`ONE_DATABASE`): the writer stamps the actor the same way on both backends
(tests/service/test_actors.py)."""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from tests.cli.test_events import in_process
from tests.conftest import ONE_DATABASE
from worker.cli.app import cli_actor
from worker.store.models import Event


def actors(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as connection:
        query = select(Event.reason, Event.actor).order_by(Event.seq)
        return [(reason, actor) for reason, actor in connection.execute(query)]


@ONE_DATABASE
def test_each_command_records_its_os_user_and_events_filter_by_actor(
    engine: Engine,
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def keyrotor(*args: str, user: str) -> list[str]:
        monkeypatch.setenv("LOGNAME", user)  # what getpass reads first
        done = in_process(*args, tmp_path=tmp_path, database_url=database_url, redis_url=redis_url)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    keyrotor("realms", "create", "acme", "--algo", "es256", user="dave")
    keyrotor("rotate", "acme", user="erin")
    keyrotor("keys", "create", "acme", user="erin")
    assert actors(engine) == [
        ("realm.created", "cli:dave"),
        ("key.rotated", "cli:erin"),
        ("key.created", "cli:erin"),
    ]

    # The test Redis is shared by the whole run: this realm's events only.
    def printed(*args: str) -> list[tuple[str, str]]:
        lines = keyrotor("events", "--no-follow", "--realm", "acme", *args, user="frank")
        return [(event["reason"], event["actor"]) for event in map(json.loads, lines)]

    assert printed() == actors(engine)
    assert printed("--actor", "cli:erin") == actors(engine)[1:]
    assert printed("--actor", "cli:dave") == actors(engine)[:1]
    assert printed("--actor", "cli:frank") == []  # reading changes nothing


def test_the_cli_actor_is_the_os_user_or_else_the_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli_actor() == f"cli:{getpass.getuser()}"

    def nobody() -> str:
        raise OSError("no user name for this uid")

    monkeypatch.setattr(getpass, "getuser", nobody)
    assert cli_actor() == f"cli:{os.getuid()}"
