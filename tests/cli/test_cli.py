"""The `keyrotor` command as a user runs it.

Each test drives the CLI against a migrated, empty database of every backend under test (the
`database_url` fixture), with a fixed master key and a private working directory, and checks
what a person or a script sees: JSON on stdout, exit statuses, and one-line refusals on stderr
that leave nothing written. The `cli` fixture runs the console script's entry point in this
process (tests/support/cli.py: a new process costs about a second of imports, and these tests
make dozens of calls); `run` starts the installed command in a subprocess, for the tests of what
only a real process shows (the entry point itself, the exit status of a refusal, a warning
logged with nothing configured, the help).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import stat
import subprocess
from pathlib import Path
from typing import Any, Protocol

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.cli import KEYROTOR, keyrotor_in_process
from worker.core.sealing import MasterKeys, parse_master_keys
from worker.service import Service
from worker.store.db import make_engine, session_factory

MASTER_KEY = base64.b64encode(secrets.token_bytes(32)).decode()
OTHER_MASTER_KEY = base64.b64encode(secrets.token_bytes(32)).decode()
KEY_ID = re.compile(r"jky_[0-9A-Za-z]{22}")
REALM_ID = re.compile(r"rl_[0-9A-Za-z]{22}")


def environment(
    cwd: Path, database_url: str, master_keys: str | None, env: dict[str, str]
) -> dict[str, str]:
    """This process's environment without its KEYROTOR_ variables, and only those given here."""
    child = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
    child["KEYROTOR_DATABASE_URL"] = database_url
    child["KEYROTOR_VAR_DIR"] = str(cwd / "var")
    if master_keys is not None:
        child["KEYROTOR_MASTER_KEYS"] = master_keys
    child.update({f"KEYROTOR_{name.upper()}": value for name, value in env.items()})
    return child


def run(
    *args: str,
    cwd: Path,
    database_url: str,
    master_keys: str | None = MASTER_KEY,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """The installed `keyrotor ARGS` in a subprocess, with only the KEYROTOR_ variables given
    here (none from the parent)."""
    return subprocess.run(
        [str(KEYROTOR), *args],
        cwd=cwd,
        env=environment(cwd, database_url, master_keys, env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Cli(Protocol):
    def __call__(
        self, *args: str, master_keys: str | None = ..., **env: str
    ) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture
def cli(database_url: str, tmp_path: Path) -> Cli:
    """`keyrotor ARGS` in this process, on this test's database and working directory, with
    the environment `run` would give the subprocess."""

    def bound(
        *args: str, master_keys: str | None = MASTER_KEY, **env: str
    ) -> subprocess.CompletedProcess[str]:
        child = environment(tmp_path, database_url, master_keys, env)
        return keyrotor_in_process(*args, env=child, cwd=tmp_path)

    return bound


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded."""
    assert result.returncode == 0, f"{result.args}: {result.returncode}\n{result.stderr}"
    return result.stdout


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The stdout of a successful command, parsed as the JSON it must be."""
    return json.loads(ok(result))


def refused(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """A refusal: exit status 2, nothing on stdout, one `error:` line on stderr naming it."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, f"{result.args}: {result.returncode}\n{result.stderr}"
    assert len(lines) == 1, f"{result.args}: expected one line on stderr, got {lines}"
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert result.stdout == "", result.stdout
    return lines[0]


def by_id(collection: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in collection}


def es256_private_pem() -> tuple[str, str]:
    """A fresh P-256 private key as PKCS#8 PEM, and its public key as SPKI PEM."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


# -- realms ----------------------------------------------------------------------------------


def test_realm_is_created_listed_found_by_id_and_name_updated_and_deleted(cli: Cli) -> None:
    created = ok_json(cli("realms", "create", "acme", "--algo", "es256", "--json"))
    assert REALM_ID.fullmatch(created["id"])
    assert created["name"] == "acme"
    assert created["algo"] == "es256"
    assert (created["rotation_period"], created["grace"]) == (30 * 86400, 6 * 3600)
    assert created["jwks_version"] == 1  # the realm starts with its first key

    listed = ok_json(cli("realms", "list", "--json"))
    assert listed == {"more_results": False, "collection": [created]}

    assert ok_json(cli("realms", "get", created["id"], "--json")) == created
    assert ok_json(cli("realms", "get", "acme", "--json")) == created

    updated = ok_json(
        cli("realms", "update", "acme", "--rotation-period", "7d", "--grace", "2h", "--json")
    )
    assert updated["id"] == created["id"]
    assert (updated["rotation_period"], updated["grace"]) == (7 * 86400, 2 * 3600)
    assert updated["prepublish"] == created["prepublish"]  # flags not given keep their value
    assert updated["max_token_ttl"] == created["max_token_ttl"]

    deleted = ok_json(cli("realms", "delete", created["id"], "--json"))
    assert deleted["id"] == created["id"]
    assert deleted["grace"] == 2 * 3600  # the realm as it was

    assert ok_json(cli("realms", "list", "--json")) == {"more_results": False, "collection": []}


# -- keys ------------------------------------------------------------------------------------


def test_keys_are_created_pending_or_active_imported_expired_and_revoked(
    cli: Cli, tmp_path: Path
) -> None:
    realm = ok_json(cli("realms", "create", "kr", "--algo", "es256", "--json"))

    pending = ok_json(cli("keys", "create", "kr", "--json"))
    assert KEY_ID.fullmatch(pending["id"])
    assert pending["object"] == "jwt_key"
    assert (pending["realm_id"], pending["algo"], pending["use"]) == (realm["id"], "es256", "sign")
    assert (pending["state"], pending["expired"], pending["activated_at"]) == (
        "pending",
        False,
        None,
    )
    assert pending["key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in pending["key"]

    active = ok_json(cli("keys", "create", realm["id"], "--activate", "--json"))
    assert active["state"] == "active"
    assert active["activated_at"] is not None

    page = ok_json(cli("keys", "list", "--realm", "kr", "--json"))
    assert page["more_results"] is False
    keys = by_id(page["collection"])
    assert len(keys) == 3
    (first,) = keys.keys() - {pending["id"], active["id"]}
    assert keys[first]["state"] == "expired"  # --activate retired the realm's first key
    assert keys[first]["expired"] is True
    assert keys[first]["delete_after"] is not None
    assert keys[pending["id"]] == pending  # a pending key is left alone by --activate
    assert keys[active["id"]] == active

    private_pem, public_pem = es256_private_pem()
    (tmp_path / "key.pem").write_text(private_pem)
    imported = ok_json(
        cli("keys", "create", "kr", "--algo", "es256", "--key-file", "key.pem", "--json")
    )
    assert imported["state"] == "pending"
    assert imported["key"] == public_pem

    # Delete without force: the original object is printed; the key expires and the
    # pending (imported) key takes over at once.
    assert ok_json(cli("keys", "delete", active["id"], "--json")) == active
    expired = ok_json(cli("keys", "get", active["id"], "--json"))
    assert (expired["state"], expired["expired"]) == ("expired", True)
    assert expired["delete_after"] is not None

    # Force delete (revocation) of the now-active imported key: gone from storage and JWKS.
    revoked = ok_json(cli("keys", "delete", imported["id"], "--force", "--json"))
    assert revoked["id"] == imported["id"]
    assert revoked["state"] == "active"
    refused(cli("keys", "get", imported["id"]), imported["id"], "not found")

    remaining = by_id(ok_json(cli("keys", "list", "--realm", "kr", "--json"))["collection"])
    assert imported["id"] not in remaining
    states = {key_id: key["state"] for key_id, key in remaining.items()}
    (replacement,) = [key_id for key_id, state in states.items() if state == "active"]
    assert replacement not in {first, pending["id"], active["id"]}  # made at once
    assert states == {
        first: "expired",
        pending["id"]: "expired",  # replaced by the imported key
        active["id"]: "expired",
        replacement: "active",
    }

    jwks = ok_json(cli("jwks", "kr"))
    assert {member["kid"] for member in jwks["keys"]} == set(remaining)
    for member in jwks["keys"]:
        assert set(member) == {"kty", "kid", "use", "alg", "crv", "x", "y"}  # no "d"
        assert (member["kty"], member["use"], member["alg"]) == ("EC", "sig", "ES256")


def test_rotate_activates_the_pending_key_and_listings_page_by_id(cli: Cli) -> None:
    ok(cli("realms", "create", "pg", "--algo", "es256"))
    pending = ok_json(cli("keys", "create", "pg", "--json"))

    rotated = ok_json(cli("rotate", "pg", "--json"))
    assert rotated["activated"] == pending["id"]
    assert KEY_ID.fullmatch(rotated["retired"])
    assert rotated["realm"]["name"] == "pg"
    first = rotated["retired"]

    everything = ok_json(cli("keys", "list", "--realm", "pg", "--json"))
    assert everything["more_results"] is False
    ids = [key["id"] for key in everything["collection"]]
    assert ids == sorted([first, pending["id"]], reverse=True)  # default: newest id first
    states = {key["id"]: key["state"] for key in everything["collection"]}
    assert states == {pending["id"]: "active", first: "expired"}

    page1 = ok_json(
        cli("keys", "list", "--realm", "pg", "--max-results", "1", "--direction", "asc", "--json")
    )
    assert page1["more_results"] is True
    assert [key["id"] for key in page1["collection"]] == [min(ids)]
    page2 = ok_json(
        cli(
            "keys",
            "list",
            "--realm",
            "pg",
            "--max-results",
            "1",
            "--direction",
            "asc",
            "--after",
            min(ids),
            "--json",
        )
    )
    assert page2["more_results"] is False
    assert [key["id"] for key in page2["collection"]] == [max(ids)]

    refused(cli("realms", "list", "--max-results", "0"), "Max results must be between 1 and 100")
    refused(cli("keys", "list", "--max-results", "101"), "Max results must be between 1 and 100")


# -- refusals --------------------------------------------------------------------------------


Case = tuple[tuple[str, ...], dict[str, str], tuple[str, ...]]


def assert_all_refused_and_nothing_written(cli: Cli, tmp_path: Path, cases: list[Case]) -> None:
    """Each case on a realm `acme` with one key: refused in one line, and nothing changed."""
    realm = ok_json(cli("realms", "create", "acme", "--algo", "es256", "--json"))
    (tmp_path / "bad.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n")

    for args, env, fragments in cases:
        refused(cli(*args, **env), *fragments)

    realms = ok_json(cli("realms", "list", "--json"))
    assert realms == {"more_results": False, "collection": [realm]}  # policy and version too
    keys = ok_json(cli("keys", "list", "--json"))
    assert keys["more_results"] is False
    assert [(k["realm_id"], k["state"]) for k in keys["collection"]] == [(realm["id"], "active")]


def test_refusals_that_reach_the_database_are_one_line_with_status_2_and_write_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    cases: list[Case] = [
        (("keys", "create", "nowhere"), {}, ("Realm 'nowhere' not found",)),
        (("realms", "create", "acme", "--algo", "es256"), {}, ("'acme' is already taken",)),
        (("realms", "update", "acme", "--grace", "1m"), {}, ("Grace (1m) must be at least",)),
        (("keys", "create", "acme", "--key-file", "bad.pem"), {}, ("not a valid PEM",)),
    ]
    assert_all_refused_and_nothing_written(cli, tmp_path, cases)


# Refused while parsing, before any write: the same on every backend, so run on SQLite only.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_malformed_input_is_one_line_with_status_2_and_writes_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    cases: list[Case] = [
        (("realms", "update", "acme", "--grace", "soon"), {}, ("invalid duration 'soon'",)),
        (("realms", "create", "other", "--algo", "hs512"), {}, ("Algo must be one of",)),
        (("keys", "create", "acme", "--key-file", "missing.pem"), {}, ("missing.pem",)),
        (("realms", "create", "other", "--algo", "es256"), {"grace": "soon"}, ("KEYROTOR_GRACE",)),
        (("realms", "list", "--direction", "sideways"), {}, ("--direction",)),
        (("realms", "list", "--sort", "created_at"), {}, ("--sort", "'created_at'")),
        (("keys", "list", "--sort", "name"), {}, ("--sort", "'name'")),
    ]
    assert_all_refused_and_nothing_written(cli, tmp_path, cases)


def test_a_database_that_is_not_migrated_is_refused_until_migrate_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"

    refused(run("realms", "list", cwd=tmp_path, database_url=url), "`keyrotor migrate`")

    migrated = ok(run("migrate", cwd=tmp_path, database_url=url))
    assert "database at revision" in migrated
    listed = ok_json(run("realms", "list", "--json", cwd=tmp_path, database_url=url))
    assert listed == {"more_results": False, "collection": []}


def test_without_master_keys_a_key_file_is_generated_once_with_a_warning(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    key_file = tmp_path / "var" / "master.key"

    migrated = run("migrate", cwd=tmp_path, database_url=url, master_keys=None)
    ok(migrated)
    assert not key_file.exists()  # only sealing needs a master key

    first = run(
        "realms",
        "create",
        "dev",
        "--algo",
        "es256",
        cwd=tmp_path,
        database_url=url,
        master_keys=None,
    )
    ok(first)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_text = key_file.read_text().strip()
    assert len(base64.urlsafe_b64decode(key_text + "=" * (-len(key_text) % 4))) == 32
    warnings = [line for line in first.stderr.splitlines() if "KEYROTOR_MASTER_KEYS" in line]
    assert len(warnings) == 1, first.stderr
    assert key_text not in first.stderr

    second = run(
        "realms",
        "create",
        "dev2",
        "--algo",
        "es256",
        cwd=tmp_path,
        database_url=url,
        master_keys=None,
    )
    ok(second)
    assert "KEYROTOR_MASTER_KEYS" not in second.stderr
    assert key_file.read_text().strip() == key_text


# -- master keys -------------------------------------------------------------------------------


def test_rewrap_reseals_under_the_first_master_key_so_the_old_one_can_go(cli: Cli) -> None:
    ok(cli("realms", "create", "hmac", "--algo", "hs256"))
    secret_key = ok_json(cli("keys", "create", "hmac", "--activate", "--json"))
    assert re.fullmatch(r"jsk_[0-9A-Za-z]{43}", secret_key["key"])

    both = f"{OTHER_MASTER_KEY},{MASTER_KEY}"
    assert "re-sealed 2 keys" in ok(cli("rewrap", master_keys=both))
    assert "re-sealed 0 keys" in ok(cli("rewrap", master_keys=both))  # resumable: skips done

    after = ok_json(cli("keys", "get", secret_key["id"], "--json", master_keys=OTHER_MASTER_KEY))
    assert after["key"] == secret_key["key"]

    assert ok_json(cli("jwks", "hmac")) == {"keys": []}  # HMAC keys never appear in a JWKS


def test_key_pool_shows_the_ready_keys_and_empties_only_when_confirmed(
    cli: Cli, database_url: str
) -> None:
    ok(cli("realms", "create", "acme", "--algo", "rs256"))
    assert ok_json(cli("key-pool", "--json")) == []
    assert "the key pool is empty" in ok(cli("key-pool"))
    engine = make_engine(database_url)  # the workers fill the pool; here the service does
    Service(session_factory(engine), MasterKeys(parse_master_keys(MASTER_KEY))).fill_pool(2)
    engine.dispose()

    assert ok_json(cli("key-pool", "--json")) == [{"algo": "rs256", "rsa_bits": 2048, "keys": 2}]
    refused(cli("key-pool", "empty"), "key-pool empty", "--yes")  # no terminal to ask at
    assert "deleted 2 pooled keys" in ok(cli("key-pool", "empty", "--yes"))
    assert ok_json(cli("key-pool", "--json")) == []


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path, database_url=f"sqlite:///{tmp_path / 'unused.db'}")
    shown = ok(result)
    for command in ("migrate", "realms", "keys", "rotate", "jwks", "rewrap", "key-pool"):
        assert re.search(rf"\b{command}\b", shown), command
