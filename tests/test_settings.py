"""Settings are checked once at start: a bad value stops keyrotor with one line naming it."""

from __future__ import annotations

import base64
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.core.errors import ConfigError
from worker.core.sealing import parse_master_keys
from worker.settings import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "keyrotor.env.example"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KEYROTOR_* from the developer's shell and no stray `.env`: each test sets its own."""
    for name in list(os.environ):
        if name.upper().startswith("KEYROTOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def master_key(seed: int = 1) -> str:
    return base64.b64encode(bytes([seed]) * 32).decode()


def refusal(**overrides: object) -> str:
    """The one-line ConfigError message for these overrides."""
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_defaults_are_valid_and_match_the_documented_ones() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite:///var/keyrotor.db"
    assert settings.redis_url is None
    assert settings.master_keys is None
    assert settings.env == "development"
    assert settings.var_dir == Path("var")
    assert settings.jwks_dir == Path("var/jwks")
    assert settings.jwks_max_age == timedelta(seconds=300)
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)
    assert settings.admin_audience == "keyrotor-admin"
    assert settings.admin_token_max_ttl == timedelta(hours=1)
    assert settings.clock_skew == timedelta(seconds=60)
    assert settings.tick == timedelta(seconds=10)
    assert settings.events_stream_maxlen == 100_000
    assert settings.events_retention == timedelta(days=7)
    assert settings.log_level == "INFO"
    assert settings.algo == "rs256"
    assert settings.rotation_period == timedelta(days=30)
    assert settings.prepublish == timedelta(hours=1)
    assert settings.grace == timedelta(hours=6)
    assert settings.max_token_ttl == timedelta(hours=1)
    assert settings.rsa_bits == 2048
    assert settings.master_key_file == Path("var/master.key")
    assert settings.master_keys is None


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "DATABASE_URL": "postgresql+psycopg://keyrotor@db/keyrotor",
        "REDIS_URL": "redis://cache:6379/1",
        "MASTER_KEYS": f"{master_key(1)},{master_key(2)}",
        "ENV": "production",
        "VAR_DIR": "/srv/keyrotor",
        "JWKS_DIR": "/srv/jwks",
        "JWKS_MAX_AGE": "2m",
        "HTTP_HOST": "0.0.0.0",
        "HTTP_PORT": "9000",
        "ADMIN_AUDIENCE": "ops",
        "ADMIN_TOKEN_MAX_TTL": "15m",
        "CLOCK_SKEW": "30",
        "TICK": "1s",
        "EVENTS_STREAM_MAXLEN": "5000",
        "EVENTS_RETENTION": "36h",
        "KEY_POOL_SIZE": "0",
        "LOG_LEVEL": "debug",
        "ALGO": "ES256",
        "ROTATION_PERIOD": "7d",
        "PREPUBLISH": "1h30m",
        "GRACE": "2h",
        "MAX_TOKEN_TTL": "20m",
        "RSA_BITS": "4096",
    }
    for name, value in values.items():
        monkeypatch.setenv(f"KEYROTOR_{name}", value)

    settings = load_settings()

    assert settings.database_url == values["DATABASE_URL"]
    assert settings.redis_url == values["REDIS_URL"]
    assert parse_master_keys(settings.master_keys or "") == [bytes([1]) * 32, bytes([2]) * 32]
    assert settings.env == "production"
    assert settings.var_dir == Path("/srv/keyrotor")
    assert settings.master_key_file == Path("/srv/keyrotor/master.key")
    assert settings.jwks_dir == Path("/srv/jwks")
    assert settings.jwks_max_age == timedelta(minutes=2)
    assert (settings.http_host, settings.http_port) == ("0.0.0.0", 9000)
    assert settings.admin_audience == "ops"
    assert settings.admin_token_max_ttl == timedelta(minutes=15)
    assert settings.clock_skew == timedelta(seconds=30)
    assert settings.tick == timedelta(seconds=1)
    assert settings.events_stream_maxlen == 5000
    assert settings.events_retention == timedelta(hours=36)
    assert settings.key_pool_size == 0
    assert settings.log_level == "DEBUG"
    assert settings.algo == "es256"
    assert settings.rotation_period == timedelta(days=7)
    assert settings.prepublish == timedelta(hours=1, minutes=30)
    assert settings.grace == timedelta(hours=2)
    assert settings.max_token_ttl == timedelta(minutes=20)
    assert settings.rsa_bits == 4096


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYROTOR_REDIS_URL", "")
    monkeypatch.setenv("KEYROTOR_GRACE", "")
    settings = load_settings()
    assert settings.redis_url is None
    assert settings.grace == timedelta(hours=6)


def test_a_dotenv_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "KEYROTOR_HTTP_PORT=9100\nKEYROTOR_GRACE=12h\nKEYROTOR_NOT_A_SETTING=1\nOTHER=ignored\n"
    )
    settings = load_settings()
    assert settings.http_port == 9100
    assert settings.grace == timedelta(hours=12)


def test_the_environment_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("KEYROTOR_HTTP_PORT=9100\n")
    monkeypatch.setenv("KEYROTOR_HTTP_PORT", "9200")
    assert load_settings().http_port == 9200


def test_a_bad_value_in_dotenv_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("KEYROTOR_TICK=soon\n")
    with pytest.raises(ConfigError, match=r"^KEYROTOR_TICK: invalid duration 'soon'"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("GRACE", "abc", "KEYROTOR_GRACE: invalid duration 'abc' (use e.g. 30d, 6h, 5m, 90s)"),
        ("ROTATION_PERIOD", "-5s", "KEYROTOR_ROTATION_PERIOD: invalid duration '-5s'"),
        ("PREPUBLISH", "3651d", "KEYROTOR_PREPUBLISH: duration 3651d is out of range"),
        ("CLOCK_SKEW", "9" * 30 + "d", "KEYROTOR_CLOCK_SKEW: invalid duration"),
        ("HTTP_PORT", "0", "KEYROTOR_HTTP_PORT: must be between 1 and 65535"),
        ("HTTP_PORT", "65536", "KEYROTOR_HTTP_PORT: must be between 1 and 65535"),
        ("HTTP_PORT", "http", "KEYROTOR_HTTP_PORT: must be a whole number (got 'http')"),
        ("TICK", "0", "KEYROTOR_TICK: must be at least 1s"),
        ("MAX_TOKEN_TTL", "0s", "KEYROTOR_MAX_TOKEN_TTL: must be at least 1s"),
        ("ADMIN_TOKEN_MAX_TTL", "0s", "KEYROTOR_ADMIN_TOKEN_MAX_TTL: must be at least 1s"),
        ("EVENTS_STREAM_MAXLEN", "999", "KEYROTOR_EVENTS_STREAM_MAXLEN: must be at least 1000"),
        ("EVENTS_RETENTION", "59s", "KEYROTOR_EVENTS_RETENTION: must be at least 1m"),
        ("EVENTS_RETENTION", "soon", "KEYROTOR_EVENTS_RETENTION: invalid duration 'soon'"),
        ("KEY_POOL_SIZE", "-1", "KEYROTOR_KEY_POOL_SIZE: must be between 0 and 1000"),
        ("KEY_POOL_SIZE", "1001", "KEYROTOR_KEY_POOL_SIZE: must be between 0 and 1000"),
        ("ENV", "staging", "KEYROTOR_ENV: must be one of development, production (got 'staging')"),
        ("LOG_LEVEL", "TRACE", "KEYROTOR_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR"),
        ("ALGO", "rs512", "KEYROTOR_ALGO: must be one of hs256, rs256, ps256, es256, eddsa"),
        ("RSA_BITS", "1024", "KEYROTOR_RSA_BITS: must be one of 2048, 3072, 4096 (got '1024')"),
        ("REDIS_URL", "localhost:6379", "KEYROTOR_REDIS_URL: must be a redis://, rediss://"),
        ("DATABASE_URL", "  ", "KEYROTOR_DATABASE_URL: must not be empty"),
        ("ADMIN_AUDIENCE", " ", "KEYROTOR_ADMIN_AUDIENCE: must not be empty"),
    ],
)
def test_a_bad_variable_is_refused_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(f"KEYROTOR_{name}", value)
    assert refusal().startswith(expected)


def test_several_bad_variables_are_reported_together_on_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYROTOR_HTTP_PORT", "0")
    monkeypatch.setenv("KEYROTOR_GRACE", "abc")
    message = refusal()
    assert "KEYROTOR_HTTP_PORT: must be between 1 and 65535" in message
    assert "KEYROTOR_GRACE: invalid duration 'abc'" in message
    assert "; " in message


def test_grace_shorter_than_token_lifetime_plus_skew_is_refused() -> None:
    assert refusal(grace="30m") == (
        "KEYROTOR_GRACE (30m) must be at least KEYROTOR_MAX_TOKEN_TTL + KEYROTOR_CLOCK_SKEW (1h1m)"
    )


def test_grace_equal_to_token_lifetime_plus_skew_is_enough() -> None:
    assert load_settings(grace="1h1m").grace == timedelta(hours=1, minutes=1)


def test_prepublish_below_jwks_max_age_is_refused() -> None:
    assert refusal(prepublish="2m") == (
        "KEYROTOR_PREPUBLISH (2m) must be at least KEYROTOR_JWKS_MAX_AGE (5m)"
    )


def test_rotation_period_must_outlast_prepublish() -> None:
    assert refusal(rotation_period="1h") == (
        "KEYROTOR_ROTATION_PERIOD (1h) must be longer than KEYROTOR_PREPUBLISH (1h)"
    )


def test_all_policy_problems_are_named_at_once() -> None:
    message = refusal(grace="1m", prepublish="1m")
    assert message.count("; ") == 1
    assert "KEYROTOR_GRACE (1m)" in message
    assert "KEYROTOR_PREPUBLISH (1m)" in message


def test_the_events_retention_may_be_as_short_as_a_minute() -> None:
    assert load_settings(events_retention="1m").events_retention == timedelta(minutes=1)
    assert load_settings(events_retention=90).events_retention == timedelta(seconds=90)


def test_production_without_master_keys_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYROTOR_ENV", "production")
    assert refusal().startswith("KEYROTOR_MASTER_KEYS is required when KEYROTOR_ENV=production")


def test_production_with_master_keys_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYROTOR_ENV", "Production")
    monkeypatch.setenv("KEYROTOR_MASTER_KEYS", master_key())
    assert load_settings().env == "production"


def test_master_keys_accept_urlsafe_unpadded_and_spaced_lists() -> None:
    first, second = bytes(range(32)), bytes(range(100, 132))
    urlsafe = base64.urlsafe_b64encode(first).decode().rstrip("=")
    standard = base64.b64encode(second).decode()
    settings = load_settings(master_keys=f" {urlsafe} , {standard} ")
    assert parse_master_keys(settings.master_keys or "") == [first, second]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hunter2-not-a-key", "Master key #1 is not valid base64"),
        (base64.b64encode(b"\x07" * 16).decode(), "Master key #1 decodes to 16 bytes"),
        (
            f"{master_key()},{base64.b64encode(b'shortsecret').decode()}",
            "Master key #2 decodes to 11 bytes",
        ),
        (" , ", "Master key #1 is blank"),
    ],
)
def test_bad_master_keys_are_refused_without_echoing_them(value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(master_keys=value)
    message = str(caught.value)
    assert message.startswith("KEYROTOR_MASTER_KEYS: ")
    assert expected in message
    for piece in value.split(","):
        if piece.strip():
            assert piece.strip() not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_master_keys_stay_out_of_repr() -> None:
    key = master_key(9)
    settings = load_settings(master_keys=key)
    assert key not in repr(settings)
    assert key not in str(settings)


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYROTOR_TICK", "30s")
    monkeypatch.setenv("KEYROTOR_HTTP_PORT", "9000")
    settings = load_settings(tick="1s", rotation_period=timedelta(minutes=20), prepublish=300)
    assert settings.tick == timedelta(seconds=1)
    assert settings.rotation_period == timedelta(minutes=20)
    assert settings.prepublish == timedelta(minutes=5)
    assert settings.http_port == 9000


def test_an_unknown_override_is_refused_rather_than_ignored() -> None:
    with pytest.raises(ConfigError, match=r"^unknown setting\(s\): graec$"):
        load_settings(graec="1h")


def test_a_bad_override_is_refused_by_variable_name() -> None:
    with pytest.raises(ConfigError, match=r"^KEYROTOR_HTTP_PORT: must be between 1 and 65535$"):
        load_settings(http_port=70000)


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.http_port = 1


def test_the_example_file_lists_every_setting_with_its_default(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    listed = re.findall(r"^# (KEYROTOR_[A-Z_]+)=(.*)$", text, flags=re.MULTILINE)
    names = [name for name, _ in listed]
    assert sorted(names) == sorted(f"KEYROTOR_{field.upper()}" for field in Settings.model_fields)
    assert len(names) == len(set(names))

    (tmp_path / ".env").write_text("".join(f"{name}={value}\n" for name, value in listed))
    assert load_settings() == Settings.model_construct()
