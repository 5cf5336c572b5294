"""All configuration in one object, read from `KEYROTOR_*` variables or `.env`, checked once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self, cast

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.core import keys, lifecycle
from worker.core.durations import format_duration, parse_duration
from worker.core.errors import ConfigError, InvalidInput
from worker.core.sealing import parse_master_keys

ENV_PREFIX = "KEYROTOR_"

Env = Literal["development", "production"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["auto", "json", "text"]

ENVS: tuple[Env, ...] = ("development", "production")
LOG_LEVELS: tuple[LogLevel, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "text")


def _duration(value: object) -> timedelta:
    """Turn `30d`, `1h30m` or bare seconds into a timedelta, as a pydantic-readable ValueError."""
    try:
        return parse_duration(value)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from None


Duration = Annotated[timedelta, BeforeValidator(_duration)]
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Waits = tuple[timedelta, ...]


def _choice(options: Iterable[object], normalize: Callable[[str], object]) -> BeforeValidator:
    """Accept one of `options` written loosely (any case, spaces around), refusing clearly."""
    allowed = tuple(options)

    def check(value: object) -> object:
        candidate = normalize(value.strip()) if isinstance(value, str) else value
        if candidate not in allowed or isinstance(candidate, bool):
            listed = ", ".join(str(option) for option in allowed)
            raise ValueError(f"must be one of {listed} (got {value!r})")
        return candidate

    return BeforeValidator(check)


def _rsa_bits(text: str) -> object:
    return int(text) if text.isascii() and text.isdigit() else text


def _at_least(minimum: timedelta) -> AfterValidator:
    """Refuse durations below `minimum`, naming the minimum in operator spelling."""

    def check(value: timedelta) -> timedelta:
        if value < minimum:
            raise ValueError(f"must be at least {format_duration(minimum)}")
        return value

    return AfterValidator(check)


def _between(low: int, high: int | None = None) -> AfterValidator:
    def check(value: int) -> int:
        if high is None and value < low:
            raise ValueError(f"must be at least {low}")
        if high is not None and not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return AfterValidator(check)


def _redis_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return value


def _public_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return None if value is None else value.rstrip("/")


def _durations(value: object) -> tuple[timedelta, ...]:
    """`5s,30s,5m`: a comma-separated list of durations, at least one, each at least 1s."""
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, list | tuple) or not parts:
        raise ValueError("must be a comma-separated list of durations, like 5s,30s,5m")
    waits = tuple(_duration(part.strip() if isinstance(part, str) else part) for part in parts)
    if min(waits) < timedelta(seconds=1):
        raise ValueError("every wait must be at least 1s")
    return waits


def _master_keys(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_master_keys(value)
        except ConfigError as error:
            raise ValueError(f"{error} (make one with `openssl rand -base64 32`)") from None
    return value


class Settings(BaseSettings):
    """keyrotor's settings; `load_settings` builds them and turns refusals into `ConfigError`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    database_url: NonEmpty = "sqlite:///var/keyrotor.db"
    redis_url: Annotated[str | None, AfterValidator(_redis_url)] = None
    master_keys: Annotated[str | None, AfterValidator(_master_keys)] = Field(
        default=None, repr=False
    )
    env: Annotated[Env, _choice(ENVS, str.lower)] = "development"
    var_dir: Path = Path("var")
    jwks_dir: Path = Path("var/jwks")
    jwks_max_age: Duration = timedelta(seconds=300)
    http_host: NonEmpty = "127.0.0.1"
    http_port: Annotated[int, _between(1, 65535)] = 8080
    admin_audience: NonEmpty = "keyrotor-admin"
    # Unset: admin tokens need no `iss` (a plain admin token has none); set: `iss` must match.
    admin_issuer: NonEmpty | None = None
    admin_token_max_ttl: Annotated[Duration, _at_least(timedelta(seconds=1))] = timedelta(hours=1)
    clock_skew: Duration = timedelta(seconds=60)
    tick: Annotated[Duration, _at_least(timedelta(seconds=1))] = timedelta(seconds=10)
    events_stream_maxlen: Annotated[int, _between(1000)] = 100_000
    # How long a relayed event stays in the outbox table before `keyrotor.prune_events` drops it.
    events_retention: Annotated[Duration, _at_least(timedelta(minutes=1))] = timedelta(days=7)
    # Realms per `keyrotor.rotate_realms` batch: one transaction and one publication pass each.
    rotate_batch: Annotated[int, _between(1, 1000)] = 200
    # Ready RSA keys kept for each RSA algo and size in use, so rotations need not wait; 0: off.
    key_pool_size: Annotated[int, _between(0, 1000)] = 16
    # Where clients reach this service: realms' issuers are `<public_url>/realms/<name>`.
    # Unset: `http://<http_host>:<http_port>`.
    public_url: Annotated[str | None, AfterValidator(_public_url)] = None
    # Webhooks: after a secret rotation the old secret keeps signing this long, beside the new.
    webhook_secret_overlap: Duration = timedelta(hours=24)
    # A delivery is retried this long after its first attempt; an endpoint failing for as long
    # is disabled.
    webhook_retry_for: Annotated[Duration, _at_least(timedelta(seconds=1))] = timedelta(hours=24)
    # Waits between attempts (each with up to 20% jitter); the last one repeats.
    webhook_retry_schedule: Annotated[Waits, NoDecode, BeforeValidator(_durations)] = (
        timedelta(seconds=5),
        timedelta(seconds=30),
        timedelta(minutes=5),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=5),
    )
    # How long a webhook endpoint has to answer one delivery.
    webhook_timeout: Annotated[Duration, _at_least(timedelta(seconds=1))] = timedelta(seconds=10)
    # `http://` webhook URLs (https only otherwise), and targets on private networks.
    webhook_allow_http: bool = False
    webhook_allow_private: bool = False
    log_level: Annotated[LogLevel, _choice(LOG_LEVELS, str.upper)] = "INFO"
    # auto: JSON lines when ENV=production and stderr is not a terminal, readable lines otherwise.
    log_format: Annotated[LogFormat, _choice(LOG_FORMATS, str.lower)] = "auto"

    # Defaults for the policy of a realm created without one.
    algo: Annotated[keys.Algo, _choice(keys.ALGOS, str.lower)] = "rs256"
    rotation_period: Duration = timedelta(days=30)
    prepublish: Duration = timedelta(hours=1)
    grace: Duration = timedelta(hours=6)
    max_token_ttl: Annotated[Duration, _at_least(timedelta(seconds=1))] = timedelta(hours=1)
    rsa_bits: Annotated[keys.RsaBits, _choice(keys.RSA_BITS, _rsa_bits)] = 2048

    @model_validator(mode="after")
    def _policy_is_safe(self) -> Self:
        """Refuse a default policy under which verifiers would reject valid tokens or miss new
        keys (the rules every realm's policy passes, naming the variables), and production
        without master keys."""
        problems = []
        try:
            lifecycle.check_policy(
                self.default_policy,
                clock_skew=self.clock_skew,
                jwks_max_age=self.jwks_max_age,
                name=_vars,
            )
        except InvalidInput as error:
            problems += error.messages
        if self.env == "production" and self.master_keys is None:
            problems.append(
                f"{_var('master_keys')} is required when {_var('env')}=production "
                "(comma-separated base64 32-byte keys; the first encrypts)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def default_policy(self) -> lifecycle.Policy:
        """The policy of a realm created without one."""
        return lifecycle.Policy(
            algo=self.algo,
            rotation_period=self.rotation_period,
            prepublish=self.prepublish,
            grace=self.grace,
            max_token_ttl=self.max_token_ttl,
            rsa_bits=self.rsa_bits,
        )

    @property
    def issuer_base(self) -> str:
        """The public URL realms' issuers start with."""
        return self.public_url or f"http://{self.http_host}:{self.http_port}"

    @property
    def master_key_file(self) -> Path:
        """Where development keeps its generated master key when `master_keys` is unset."""
        return self.var_dir / "master.key"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment and `.env`, overrides first; refuse with one line."""
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    try:
        return Settings(**cast("dict[str, Any]", overrides))
    except ValidationError as exc:
        # `from None`: the pydantic error echoes input values, master keys among them.
        raise ConfigError(_describe(exc)) from None


def _var(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _vars(*fields: str) -> str:
    """Settings as `lifecycle.check_policy` names them here: `KEYROTOR_GRACE`, or a sum."""
    return " + ".join(_var(field) for field in fields)


def _describe(exc: ValidationError) -> str:
    """One line naming each variable and what is wrong with it."""
    seen: list[str] = []
    for error in exc.errors(include_url=False):
        line = _describe_one(error)
        if line not in seen:
            seen.append(line)
    return "; ".join(seen).replace("\n", " ")


def _describe_one(error: ErrorDetails) -> str:
    field = str(error["loc"][0]) if error["loc"] else None
    kind = error["type"]
    if kind == "value_error":
        reason = str(error.get("ctx", {}).get("error", error["msg"]))
    elif kind == "string_too_short":
        reason = "must not be empty"
    elif kind.startswith("int_"):
        shown = "" if field == "master_keys" else f" (got {error['input']!r})"
        reason = f"must be a whole number{shown}"
    else:
        reason = error["msg"][:1].lower() + error["msg"][1:]
    return reason if field is None else f"{_var(field)}: {reason}"


def redis_url(settings: Settings) -> str | None:
    """The configured Redis, else the embedded Valkey that `keyrotor run` announced in var/."""
    if settings.redis_url is not None:
        return settings.redis_url
    try:
        return (settings.var_dir / "redis.url").read_text().strip() or None
    except FileNotFoundError:
        return None


def require_redis_url(settings: Settings) -> str:
    url = redis_url(settings)
    if url is None:
        raise ConfigError(
            "KEYROTOR_REDIS_URL is not set and no embedded Valkey is running"
            " (set it, or start everything with `keyrotor run`)"
        )
    return url
