"""`keyrotor webhooks` as a person or a script sees it, driven in-process through `main()`
(the console script's entry point) against a migrated, empty database of each backend: the
secret printed once, `--json` in the API's shapes, and every refusal one line with exit 2."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from sqlalchemy import select

from worker.cli import common
from worker.cli.app import main
from worker.store.db import transaction
from worker.store.models import Event

MASTER_KEY = base64.b64encode(secrets.token_bytes(32)).decode()
WEBHOOK_ID = re.compile(r"whk_[0-9A-Za-z]{22}")
SECRET = re.compile(r"whsec_[A-Za-z0-9+/]{43}=")
HOOK = "http://127.0.0.1:9/hook"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def ok(self) -> str:
        assert self.code == 0, f"exit {self.code}: {self.err}"
        return self.out

    def json(self) -> Any:
        return json.loads(self.ok())

    def refused(self, *fragments: str) -> str:
        """Exit status 2, nothing on stdout, one `error:` line on stderr naming it."""
        lines = self.err.splitlines()
        assert self.code == 2, f"exit {self.code}: {self.err}"
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        for fragment in fragments:
            assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
        assert self.out == "", self.out
        return lines[0]


class Keyrotor(Protocol):
    def __call__(self, *args: str, **env: str) -> Result: ...


@pytest.fixture
def keyrotor(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Keyrotor]:
    """`keyrotor ARGS` in this process, with only the KEYROTOR_ variables set here (webhooks
    may go to http:// and to this machine, as in development) and `**env` on top."""
    for name in list(os.environ):
        if name.startswith("KEYROTOR_"):
            monkeypatch.delenv(name)
    base = {
        "KEYROTOR_DATABASE_URL": database_url,
        "KEYROTOR_VAR_DIR": str(tmp_path / "var"),
        "KEYROTOR_MASTER_KEYS": MASTER_KEY,
        "KEYROTOR_WEBHOOK_ALLOW_HTTP": "true",
        "KEYROTOR_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    monkeypatch.chdir(tmp_path)  # no .env of the checkout's

    def run(*args: str, **env: str) -> Result:
        with monkeypatch.context() as scoped:
            for name, value in {**base, **env}.items():
                if value:
                    scoped.setenv(name, value)
                else:
                    scoped.delenv(name, raising=False)
            scoped.setattr(sys, "argv", ["keyrotor", *args])
            _forget_settings()
            capsys.readouterr()
            try:
                main()
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else 1
            else:
                code = 0
            captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    yield run
    _forget_settings()


def _forget_settings() -> None:
    common.settings.cache_clear()
    common.service.cache_clear()


def created(keyrotor: Keyrotor, *args: str) -> dict[str, Any]:
    webhook: dict[str, Any] = keyrotor("webhooks", "create", HOOK, *args, "--json").json()
    return webhook


# -- create, list, get -------------------------------------------------------------------------


def test_create_prints_the_id_and_the_secret_once(keyrotor: Keyrotor) -> None:
    printed = keyrotor("webhooks", "create", HOOK).ok()
    lines = printed.splitlines()
    webhook_id = lines[0].split()[-1]
    secret = lines[1].split()[-1]
    assert WEBHOOK_ID.fullmatch(webhook_id) and SECRET.fullmatch(secret), printed
    assert "shown only now" in printed

    for args in (("webhooks", "list"), ("webhooks", "get", webhook_id)):
        shown = keyrotor(*args).ok()
        assert webhook_id in shown and HOOK in shown and secret not in shown
        assert secret not in keyrotor(*args, "--json").ok()

    listing = keyrotor("webhooks", "list", "--json").json()
    assert listing["more_results"] is False
    (item,) = listing["collection"]
    assert item == keyrotor("webhooks", "get", webhook_id, "--json").json()
    assert item["id"] == webhook_id and item["object"] == "webhook" and "secret" not in item


def test_create_json_with_a_realm_reasons_and_disabled(keyrotor: Keyrotor) -> None:
    realm = keyrotor("realms", "create", "acme", "--algo", "es256", "--json").json()
    webhook = created(
        keyrotor, "--realm", "acme", "--reason", "key.rotated", "--reason", "key.revoked"
    )
    assert list(webhook) == [
        "id",
        "object",
        "url",
        "realm_id",
        "reasons",
        "enabled",
        "created_at",
        "secret",
    ]
    assert webhook["realm_id"] == realm["id"]
    assert webhook["reasons"] == ["key.revoked", "key.rotated"]
    assert SECRET.fullmatch(webhook["secret"]) and webhook["enabled"] is True
    assert created(keyrotor, "--disabled")["enabled"] is False

    page = keyrotor("webhooks", "list", "--max-results", "1", "--json").json()
    assert page["more_results"] is True and len(page["collection"]) == 1
    assert "more results: --after" in keyrotor("webhooks", "list", "--max-results", "1").ok()
    ascending = keyrotor("webhooks", "list", "--sort", "id", "--direction", "asc", "--json")
    ids = [item["id"] for item in ascending.json()["collection"]]
    assert ids == sorted(ids) and len(ids) == 2
    keyrotor("webhooks", "list", "--sort", "url").refused("Sort must be 'id'")
    keyrotor("webhooks", "list", "--direction", "up").refused("Direction must be asc or desc")
    keyrotor("webhooks", "list", "--max-results", "0").refused("Max results must be between")


def test_refused_urls_are_one_line_and_exit_2(keyrotor: Keyrotor) -> None:
    production = {"KEYROTOR_WEBHOOK_ALLOW_HTTP": "", "KEYROTOR_WEBHOOK_ALLOW_PRIVATE": ""}
    refusals = [
        ("http://hooks.example.com/", "Url must start with https://"),
        ("https://127.0.0.1/", "resolves to a loopback address"),
        ("https://10.0.0.1/", "resolves to a private address"),
        ("https://169.254.169.254/latest/meta-data", "link-local or metadata"),
    ]
    for url, why in refusals:
        keyrotor("webhooks", "create", url, **production).refused(why)
    keyrotor("webhooks", "create", HOOK, "--realm", "nowhere").refused("Realm 'nowhere'")
    keyrotor("webhooks", "create", HOOK, "--reason", "key.lost").refused("key.lost")
    keyrotor("webhooks", "create").refused(
        "Missing argument 'url'"
    )  # typer's own refusal, one line too
    assert keyrotor("webhooks", "list", "--json").json()["collection"] == []

    webhook = created(keyrotor)
    keyrotor(
        "webhooks", "update", webhook["id"], "--url", "https://127.0.0.1/", **production
    ).refused("resolves to a loopback address")
    shown = keyrotor("webhooks", "get", webhook["id"], "--json").json()
    assert shown["url"] == HOOK


# -- update, delete, rotate-secret -------------------------------------------------------------


def test_update_changes_only_what_is_given(keyrotor: Keyrotor) -> None:
    realm = keyrotor("realms", "create", "acme", "--algo", "es256", "--json").json()
    webhook = created(keyrotor)
    webhook_id = webhook["id"]
    del webhook["secret"]

    changed = keyrotor("webhooks", "update", webhook_id, "--disable", "--json").json()
    assert changed == {**webhook, "enabled": False}
    changed = keyrotor(
        "webhooks",
        "update",
        webhook_id,
        "--realm",
        "acme",
        "--reason",
        "key.created",
        "--url",
        "http://127.0.0.1:9/other",
        "--enable",
        "--json",
    ).json()
    assert changed == {
        **webhook,
        "realm_id": realm["id"],
        "reasons": ["key.created"],
        "url": "http://127.0.0.1:9/other",
    }
    changed = keyrotor(
        "webhooks", "update", webhook_id, "--all-realms", "--all-reasons", "--json"
    ).json()
    assert (changed["realm_id"], changed["reasons"]) == (None, None)
    assert changed["url"] == "http://127.0.0.1:9/other" and changed["enabled"] is True
    assert webhook_id in keyrotor("webhooks", "update", webhook_id, "--disable").ok()

    keyrotor("webhooks", "update", webhook_id).refused("nothing to change")
    keyrotor("webhooks", "update", webhook_id, "--realm", "acme", "--all-realms").refused(
        "not both"
    )
    keyrotor("webhooks", "update", webhook_id, "--reason", "key.created", "--all-reasons").refused(
        "not both"
    )
    keyrotor("webhooks", "update", webhook_id, "--realm", "nowhere").refused("Realm 'nowhere'")
    keyrotor("webhooks", "update", "whk_0vSb3RMdQh1XYEdDoJGh4P", "--disable").refused("not found")


def test_delete_asks_first_and_then_it_is_gone(keyrotor: Keyrotor) -> None:
    webhook_id = created(keyrotor)["id"]
    keyrotor("webhooks", "delete", webhook_id).refused("--yes")  # no terminal to answer
    assert keyrotor("webhooks", "get", webhook_id).code == 0
    assert webhook_id in keyrotor("webhooks", "delete", webhook_id, "--yes").ok()
    keyrotor("webhooks", "get", webhook_id).refused(f"Webhook '{webhook_id}' not found")
    keyrotor("webhooks", "delete", webhook_id, "--yes").refused("not found")


def test_rotate_secret_prints_a_new_secret_and_says_both_sign(keyrotor: Keyrotor) -> None:
    webhook = created(keyrotor)
    printed = keyrotor(
        "webhooks", "rotate-secret", webhook["id"], KEYROTOR_WEBHOOK_SECRET_OVERLAP="2h"
    ).ok()
    secret = printed.splitlines()[1].split()[-1]
    assert SECRET.fullmatch(secret) and secret != webhook["secret"]
    assert "shown only now" in printed
    assert "Both the old and the new secret sign" in printed
    assert "2h" in printed and "KEYROTOR_WEBHOOK_SECRET_OVERLAP" in printed

    rotated = keyrotor("webhooks", "rotate-secret", webhook["id"], "--json").json()
    assert SECRET.fullmatch(rotated["secret"]) and rotated["secret"] not in (
        webhook["secret"],
        secret,
    )
    assert {k: v for k, v in rotated.items() if k != "secret"} == {
        k: v for k, v in webhook.items() if k != "secret"
    }
    keyrotor("webhooks", "rotate-secret", "whk_0vSb3RMdQh1XYEdDoJGh4P").refused("not found")


# -- the delivery log --------------------------------------------------------------------------


def test_deliveries_and_retry(keyrotor: Keyrotor) -> None:
    webhook_id = created(keyrotor)["id"]
    empty = keyrotor("webhooks", "deliveries", webhook_id, "--json").json()
    assert empty == {"more_results": False, "collection": []}

    keyrotor("realms", "create", "acme", "--algo", "es256").ok()  # realm.created, in the outbox
    svc = common.service()
    with transaction(svc.sessions) as session:  # as the relay does once the event is sent
        events = list(session.scalars(select(Event)))
        svc.queue_deliveries(session, events, {event.id: "{}" for event in events})
    (event,) = events

    (delivery,) = keyrotor("webhooks", "deliveries", webhook_id, "--json").json()["collection"]
    assert delivery["object"] == "webhook_delivery" and delivery["event_id"] == event.id
    assert delivery["state"] == "pending" and delivery["attempts"] == 0
    table = keyrotor("webhooks", "deliveries", webhook_id).ok()
    for heading in ("delivery", "event", "state", "attempts", "last status or error"):
        assert heading in table
    assert delivery["id"] in table and event.id in table and "pending" in table

    retried = keyrotor("webhooks", "retry", webhook_id, delivery["id"]).ok()
    assert delivery["id"] in retried and "pending again" in retried
    again = keyrotor("webhooks", "retry", webhook_id, delivery["id"], "--json").json()
    assert again["id"] == delivery["id"] and again["state"] == "pending"
    keyrotor("webhooks", "retry", webhook_id, "whd_0vSb3RMdQh1XYEdDoJGh4P").refused("not found")
    keyrotor("webhooks", "deliveries", "whk_0vSb3RMdQh1XYEdDoJGh4P").refused("not found")
