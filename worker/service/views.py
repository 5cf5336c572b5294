"""What the service hands back: plain frozen values, never database rows or wire dicts.

The shells read these by attribute; `worker.service.wire` is the one place that turns them
into AuthRocket's JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from worker.core.lifecycle import Policy, State

T = TypeVar("T")


@dataclass(frozen=True)
class RealmView:
    """A realm and its policy as stored, with the version of its published key set."""

    id: str
    name: str
    policy: Policy
    jwks_version: int
    next_rotation_at: datetime
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class KeyView:
    """One key; `key` is the public PEM, or for an HMAC key the secret (as AuthRocket shows it)."""

    id: str
    realm_id: str
    algo: str
    use: str
    state: State
    key: str
    created_at: datetime
    activated_at: datetime | None
    expired_at: datetime | None
    delete_after: datetime | None

    @property
    def expired(self) -> bool:
        return self.state is State.EXPIRED


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; `more_results` says whether to ask again after the last id."""

    more_results: bool
    collection: list[T] = field(default_factory=list)


@dataclass(frozen=True)
class Change:
    """What one committed transaction did to a realm; the shells publish and log from it."""

    realm_id: str
    realm_name: str
    reason: str
    key_ids: list[str]
    jwks_version: int
    created: list[str] = field(default_factory=list)
    activated: str | None = None
    retired: str | None = None
    next_rotation_at: datetime | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class EventView:
    """One kept outbox event, as the stream carries it: what changed, and who asked (`actor`:
    an admin key id, `cli:<OS user>`, `scheduler` or `system`); never key material."""

    id: str
    event_type: str
    realm_id: str
    event_at: datetime
    reason: str
    key_ids: list[str]
    jwks_version: int
    actor: str


@dataclass(frozen=True)
class Publication:
    """A realm's JWKS as of one `jwks_version`, and when it is next scheduled to change."""

    realm_id: str
    realm_name: str
    jwks: dict[str, Any]
    jwks_version: int
    next_change_at: datetime | None


@dataclass(frozen=True)
class RotationProgress:
    """How far a `rotate --all` has got, as its batches report it (kept in Redis by
    `worker.publish.progress`; here so that `wire` can show it with the record)."""

    batches: int = 0
    rotated: int = 0
    skipped: int = 0
    failed: int = 0
    failed_realm_ids: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        """Realms with an outcome: what a progress bar counts."""
        return self.rotated + self.skipped + self.failed


@dataclass(frozen=True)
class RotationView:
    """One `rotate --all` as stored: its filters and cut-off, how many realms it covered when
    it began, and how many batches it queued (None until the fan-out has queued them all)."""

    id: str
    algo: str | None
    realm_prefix: str | None
    before: datetime
    total: int
    batches: int | None
    created_at: datetime
    queued_at: datetime | None

    def state(self, progress: RotationProgress) -> str:
        """`queued` until work starts, `running`, then `done` once every batch has reported."""
        if self.batches is not None and progress.batches >= self.batches:
            return "done"
        if self.batches is not None or progress.batches:
            return "running"
        return "queued"
