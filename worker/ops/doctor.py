"""`keyrotor doctor`: is this deployment healthy, and if not, what exactly is wrong?

Each check is a function of what it inspects, returning a `Check` with a one-line detail that
names the realm, key or setting at fault and what to do. Checks that need the database or
Redis report "not checked" when that store is unusable, so one outage is one clear line and
not a cascade of confusing ones. Nothing here writes: not even a master key file or an empty
SQLite database is created.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis
from keyrotor_client.events import redis_client
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from worker import runtime
from worker.core.durations import format_duration
from worker.core.errors import ConfigError, InvalidInput, SealError
from worker.core.sealing import MasterKeys, load_or_create_key_file
from worker.ops.logs import shown_url
from worker.publish.heartbeat import last_heartbeat
from worker.publish.jwks import Publisher, compared_pages
from worker.service import Limits, check_policy, policy_of
from worker.settings import Settings
from worker.store import checks as queries
from worker.store.db import make_engine, schema_revision, session_factory
from worker.store.stats import OVERDUE_TICKS

BEAT_SILENT = timedelta(minutes=2)  # beat writes every 5 s; two minutes of silence is an outage
OUTBOX_STALE = timedelta(minutes=1)  # events go out right after commit, the sweep every 2 s
JWKS_SETTLE = timedelta(seconds=30)  # a change this fresh may still be on its way to Redis
PAGE = 500
JWKS_PAGE = 10_000  # the JWKS check reads three columns a realm: large pages, fewer round trips
SHOWN = 5  # ids named in one detail line; the count tells the rest
TIMEOUT = 5  # seconds for connecting to the database or Redis
NOT_CHECKED = "not checked"
COPY, COPIES = "published JWKS copy", "published JWKS copies"

CHECKS: tuple[str, ...] = (
    "database",
    "redis",
    "sealed_keys",
    "policies",
    "beat",
    "overdue",
    "outbox",
    "jwks",
)


@dataclass(frozen=True)
class Check:
    """One line of the checklist; `ok` False is a problem an operator must act on."""

    name: str
    ok: bool
    detail: str

    @property
    def skipped(self) -> bool:
        """Not run because a store it needs failed its own check (already reported)."""
        return self.detail.startswith(NOT_CHECKED)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _ids(found: Sequence[str]) -> str:
    shown = ", ".join(found[:SHOWN])
    return shown + (f" and {len(found) - SHOWN} more" if len(found) > SHOWN else "")


def _ago(now: datetime, then: datetime) -> str:
    return format_duration(timedelta(seconds=max(0, round((now - then).total_seconds())))) + " ago"


def _error(error: BaseException) -> str:
    """An exception as a short phrase: its class and first line, never a multi-line dump."""
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{cause.__class__.__name__}: {text}" if text else cause.__class__.__name__


# -- the checks, each a function of what it looks at --------------------------------------------


class _Row(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=_Row)


def _pages(
    fetch: Callable[..., Sequence[R]], sessions: sessionmaker[Session]
) -> Iterator[Sequence[R]]:
    """Every row `fetch` returns, a page at a time, keyset by id: memory stays flat however
    many realms and keys there are."""
    after = ""
    while page := fetch(sessions, after=after, limit=PAGE):
        yield page
        after = page[-1].id


def check_database(engine: Engine, url: str) -> Check:
    """Reachable, and the schema at the newest migration."""
    try:
        current, head = schema_revision(engine)
    except SQLAlchemyError as error:
        return Check("database", False, f"{shown_url(url)} does not answer ({_error(error)})")
    if current != head:
        return Check(
            "database",
            False,
            f"{shown_url(url)}: schema at {current or 'nothing'}, this code needs {head}"
            " (run `keyrotor migrate`)",
        )
    return Check("database", True, f"{shown_url(url)}: schema at {head} (current)")


def check_redis(client: redis.Redis, url: str) -> Check:
    try:
        info: dict[str, Any] = client.info("server")
    except (redis.RedisError, OSError) as error:
        return Check("redis", False, f"{shown_url(url)} does not answer ({_error(error)})")
    version = info.get("valkey_version") or info.get("redis_version") or "?"
    return Check("redis", True, f"{shown_url(url)} answers (server {version})")


def check_sealed_keys(sessions: sessionmaker[Session], keys: MasterKeys) -> Check:
    """Every stored private key and HMAC secret, pooled keys too, opens with the configured
    master keys."""
    total, pooled, stale, broken = 0, 0, 0, []
    for fetch in (queries.sealed_keys, queries.pooled_keys):
        for page in _pages(fetch, sessions):
            total += len(page)
            pooled += len(page) if fetch is queries.pooled_keys else 0
            for row in page:
                try:
                    keys.open(row.sealed_secret, realm_id=row.realm_id, key_id=row.id)
                except SealError:
                    broken.append(row.id)
                    continue
                stale += not keys.is_current(row.sealed_secret)
    counted = _count(total, "key") + (f" ({pooled} of them pooled)" if pooled else "")
    if broken:
        return Check(
            "sealed_keys",
            False,
            f"{len(broken)} of {counted} do not open with the configured master keys:"
            f" {_ids(broken)} (is a master key that sealed them missing from"
            " KEYROTOR_MASTER_KEYS?)",
        )
    detail = f"{counted}, every one opens with the configured master keys"
    if stale:
        detail += f"; {stale} still sealed under an older one (run `keyrotor rewrap`)"
    return Check("sealed_keys", True, detail)


def check_policies(sessions: sessionmaker[Session], limits: Limits) -> Check:
    """Every stored realm policy still passes today's rules and settings (clock skew, max-age)."""
    total, unsafe = 0, []
    for page in _pages(queries.realms, sessions):
        for realm in page:
            total += 1
            try:
                check_policy(policy_of(realm), limits)
            except InvalidInput as error:
                unsafe.append(f"{realm.name} ({realm.id}): {'; '.join(error.messages)}")
    if unsafe:
        more = f" (and {len(unsafe) - 1} more)" if len(unsafe) > 1 else ""
        return Check(
            "policies",
            False,
            f"{len(unsafe)} of {_count(total, 'realm')} with an unsafe policy: {unsafe[0]}{more}"
            " (fix with `keyrotor realms update`)",
        )
    return Check("policies", True, f"{_count(total, 'realm')}, every policy safe")


def check_beat(client: redis.Redis, now: datetime) -> Check:
    try:
        beat = last_heartbeat(client)
    except redis.RedisError as error:
        return Check("beat", False, f"{NOT_CHECKED}: Redis failed ({_error(error)})")
    if beat is None:
        return Check(
            "beat",
            False,
            "no beat has ever ticked against this Redis (start `celery -A worker beat`)",
        )
    where = f"{beat.host}, pid {beat.pid}"
    if now - beat.at > BEAT_SILENT:
        return Check(
            "beat",
            False,
            f"beat last seen {_ago(now, beat.at)} ({where}), over"
            f" {format_duration(BEAT_SILENT)}: nothing rotates while it is down",
        )
    return Check("beat", True, f"beat seen {_ago(now, beat.at)} ({where})")


def check_overdue(sessions: sessionmaker[Session], now: datetime, tick: timedelta) -> Check:
    """Realms whose scheduled key change is over three ticks late, earliest first: the ones
    `keyrotor_realms_overdue` counts, named."""
    slack = OVERDUE_TICKS * tick
    count, earliest = queries.overdue_realms(sessions, now - slack, limit=SHOWN)
    if not count:
        return Check(
            "overdue", True, f"no realm is over {format_duration(slack)} late for a key change"
        )
    late = ", ".join(
        f"{realm.name} ({realm.id}) {format_duration(now - realm.next_rotation_at)} late"
        for realm in earliest
    )
    more = f" and {count - len(earliest)} more" if count > len(earliest) else ""
    return Check(
        "overdue",
        False,
        f"{_count(count, 'realm')} over {format_duration(slack)} late for a scheduled key"
        f" change: {late}{more} (are beat and the workers running? `keyrotor rotate <realm>`"
        " rotates one by hand)",
    )


def check_outbox(sessions: sessionmaker[Session], now: datetime) -> Check:
    """Events are relayed within seconds; any unsent for over a minute means the relay is stuck."""
    stale = queries.unsent_before(sessions, now - OUTBOX_STALE)
    if stale.count and stale.oldest_at is not None:
        return Check(
            "outbox",
            False,
            f"{_count(stale.count, 'event')} unsent for over {format_duration(OUTBOX_STALE)},"
            f" the oldest from {_ago(now, stale.oldest_at)} (are Redis, a worker and beat's"
            " keyrotor.relay_events all running?)",
        )
    return Check("outbox", True, f"no event waits longer than {format_duration(OUTBOX_STALE)}")


def check_jwks(
    sessions: sessionmaker[Session], publisher: Publisher, now: datetime, *, files: bool
) -> Check:
    """Each realm's published JWKS (Redis, and the file when `files`) is the database's version.

    Behind for more than JWKS_SETTLE: publication failed and reconcile has not caught up. Ahead:
    the database went back in time (a restored backup), and the newer copy will not be replaced.
    A large keyset page at a time: one query, one Redis read, a look per file; names are read
    only for the realms the detail shows: ~10 s for 1,000,000 realms and their files.
    """
    total = 0
    ahead, behind = _Found(), _Found()
    settled_by = now - JWKS_SETTLE

    def fetch(after: str) -> list[tuple[str, int, bool]]:
        return queries.realm_versions(sessions, settled_by, after=after, limit=JWKS_PAGE)

    for page, in_redis, on_disk in compared_pages(fetch, publisher, files=files):
        total += len(page)
        copies = [("redis", in_redis), ("file", on_disk)] if files else [("redis", in_redis)]
        for realm_id, version, settled in page:
            for where, versions in copies:
                published = versions[realm_id]
                if published > version:
                    ahead.add(realm_id, where, published, version)
                elif published < version and settled:
                    behind.add(realm_id, where, published, version)
    names = queries.realm_names(sessions, {shown[0] for shown in ahead.shown + behind.shown})
    where = "Redis and files" if files else "Redis (no JWKS files on this host)"
    if ahead.count:
        return Check(
            "jwks",
            False,
            f"{_count(ahead.count, COPY, COPIES)} newer than the database: {ahead.lines(names)}"
            " (restored from a backup? delete the published copies so they are republished;"
            " see the database restore runbook in docs/operations.md)",
        )
    if behind.count:
        return Check(
            "jwks",
            False,
            f"{_count(behind.count, COPY, COPIES)} behind the database for over"
            f" {format_duration(JWKS_SETTLE)}: {behind.lines(names)} (reconcile_jwks republishes"
            " them once Redis and a worker are up)",
        )
    return Check(
        "jwks", True, f"{_count(total, 'realm')}, each published at its current version ({where})"
    )


@dataclass
class _Found:
    """Copies found out of step: how many, and the first SHOWN (realm id, where, published
    version, database version), so a million of them cost a counter, not a list."""

    count: int = 0
    shown: list[tuple[str, str, int, int]] = field(default_factory=list)

    def add(self, realm_id: str, where: str, published: int, version: int) -> None:
        self.count += 1
        if len(self.shown) < SHOWN:
            self.shown.append((realm_id, where, published, version))

    def lines(self, names: dict[str, str]) -> str:
        lines = [
            f"{names.get(realm_id, '?')} ({realm_id}) {where}"
            f" {'missing' if published < 0 else f'v{published}'}, database v{version}"
            for realm_id, where, published, version in self.shown
        ]
        more = self.count - len(lines)
        return ", ".join(lines) + (f" and {more} more" if more else "")


# -- wiring: settings -> the stores, each opened once, lazily -----------------------------------


class Examination:
    """One doctor run: opens the database and Redis at most once and closes them after."""

    def __init__(self, settings: Settings, now: datetime) -> None:
        self.settings = settings
        self.now = now
        self.shown: set[str] = set(CHECKS)
        self.engine: Engine | None = None
        self.client: redis.Redis | None = None

    @cached_property
    def _database(self) -> tuple[Check, sessionmaker[Session] | None]:
        url = self.settings.database_url
        backend = make_url(url).get_backend_name() if "://" in url else ""
        if backend == "sqlite":
            path = make_url(url).database
            if path and path != ":memory:" and not Path(path).exists():
                return (
                    Check("database", False, f"{path} does not exist (run `keyrotor migrate`)"),
                    None,
                )
        connect = {"connect_timeout": TIMEOUT} if backend.startswith("postgres") else {}
        try:
            self.engine = engine = make_engine(url, connect_args=connect)
        except Exception as error:  # a URL SQLAlchemy cannot even load a driver for
            return Check("database", False, f"{shown_url(url)}: {_error(error)}"), None
        check = check_database(engine, url)
        return check, session_factory(engine) if check.ok else None

    @cached_property
    def _redis(self) -> tuple[Check, redis.Redis | None]:
        try:
            url = runtime.require_redis_url(self.settings)
        except ConfigError as error:
            return Check("redis", False, str(error)), None
        client = redis_client(url, timeout=TIMEOUT, fail_fast=True)  # its own: closed after
        self.client = client
        check = check_redis(client, url)
        return check, client if check.ok else None

    def _needs(self, name: str, *stores: str) -> Check | None:
        """A 'not checked' line when a store this check needs is unusable."""
        for store in stores:
            check, usable = self._database if store == "database" else self._redis
            if usable is None and store in self.shown:  # its own line says what is wrong
                return Check(name, False, f"{NOT_CHECKED}, {store} not usable: {check.detail}")
            if usable is None:
                return Check(name, False, f"{store} not usable: {check.detail}")
        return None

    def _master_keys(self) -> MasterKeys | str:
        """The configured master keys, or why there are none; never creates the key file."""
        if self.settings.master_keys is not None:
            return MasterKeys.from_text(self.settings.master_keys)
        path = self.settings.master_key_file
        if not path.exists():
            return f"KEYROTOR_MASTER_KEYS is not set and {path} does not exist"
        try:
            return MasterKeys.from_text(load_or_create_key_file(path)[0])
        except (ConfigError, OSError) as error:
            return f"{path}: {_error(error)}"

    def database(self) -> Check:
        return self._database[0]

    def redis(self) -> Check:
        return self._redis[0]

    def sealed_keys(self) -> Check:
        skipped = self._needs("sealed_keys", "database")
        if skipped:
            return skipped
        keys = self._master_keys()
        if isinstance(keys, str):
            return Check("sealed_keys", False, f"no master keys: {keys}")
        assert self._database[1] is not None
        return check_sealed_keys(self._database[1], keys)

    def policies(self) -> Check:
        skipped = self._needs("policies", "database")
        if skipped:
            return skipped
        assert self._database[1] is not None
        return check_policies(self._database[1], runtime.limits(self.settings))

    def beat(self) -> Check:
        skipped = self._needs("beat", "redis")
        if skipped:
            return skipped
        assert self._redis[1] is not None
        return check_beat(self._redis[1], self.now)

    def overdue(self) -> Check:
        skipped = self._needs("overdue", "database")
        if skipped:
            return skipped
        assert self._database[1] is not None
        return check_overdue(self._database[1], self.now, self.settings.tick)

    def outbox(self) -> Check:
        skipped = self._needs("outbox", "database")
        if skipped:
            return skipped
        assert self._database[1] is not None
        return check_outbox(self._database[1], self.now)

    def jwks(self) -> Check:
        skipped = self._needs("jwks", "database", "redis")
        if skipped:
            return skipped
        assert self._database[1] is not None and self._redis[1] is not None
        publisher = Publisher(self._redis[1], self.settings.jwks_dir)
        files = self.settings.jwks_dir.is_dir()
        return check_jwks(self._database[1], publisher, self.now, files=files)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
        if self.client is not None:
            self.client.close()


def examine(
    settings: Settings, *, only: Iterable[str] | None = None, now: datetime | None = None
) -> list[Check]:
    """Run the named checks (default: all, in CHECKS order) and return their results."""
    wanted = list(CHECKS) if only is None else [name for name in CHECKS if name in set(only)]
    run = Examination(settings, now or datetime.now(UTC))
    run.shown = set(wanted)
    steps: dict[str, Callable[[], Check]] = {name: getattr(run, name) for name in CHECKS}
    try:
        return [_guarded(name, steps[name]) for name in wanted]
    finally:
        run.close()


def _guarded(name: str, step: Callable[[], Check]) -> Check:
    """A check that fails unexpectedly (a store dropping mid-run) is that check's problem."""
    try:
        return step()
    except (SQLAlchemyError, redis.RedisError, OSError) as error:
        return Check(name, False, f"failed while checking: {_error(error)}")
