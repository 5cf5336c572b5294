"""SQLAlchemy models; the Alembic migrations create exactly these (a test checks)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite keeps no zone), always handed back timezone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Realm(Base):
    __tablename__ = "realms"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    algo: Mapped[str] = mapped_column(String(10))
    rsa_bits: Mapped[int] = mapped_column(Integer)
    rotation_period_s: Mapped[int] = mapped_column(Integer)
    prepublish_s: Mapped[int] = mapped_column(Integer)
    grace_s: Mapped[int] = mapped_column(Integer)
    max_token_ttl_s: Mapped[int] = mapped_column(Integer)
    jwks_version: Mapped[int] = mapped_column(Integer)
    next_rotation_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        # rotate_due walks due realms in (next_rotation_at, id) order: keyset pagination.
        Index("ix_realms_next_rotation_at_id", "next_rotation_at", "id"),
    )


class JwtKey(Base):
    __tablename__ = "jwt_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    realm_id: Mapped[str] = mapped_column(ForeignKey("realms.id", ondelete="CASCADE"))
    algo: Mapped[str] = mapped_column(String(10))
    use: Mapped[str] = mapped_column(String(10))
    state: Mapped[str] = mapped_column(String(10))
    public_pem: Mapped[str | None] = mapped_column(Text)
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delete_after: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_jwt_keys_realm_id_id", "realm_id", "id"),
        # purge_expired finds keys past their grace window without scanning live ones.
        Index("ix_jwt_keys_state_delete_after", "state", "delete_after"),
        # The database itself refuses a second active key in a realm, whatever the code does.
        Index(
            "uq_jwt_keys_one_active_per_realm",
            "realm_id",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
    )


class Event(Base):
    """The outbox: written in the same transaction as the change it describes."""

    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    realm_id: Mapped[str] = mapped_column(String(32))
    event_type: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(32))
    key_ids: Mapped[list[str]] = mapped_column(JSON)
    jwks_version: Mapped[int] = mapped_column(Integer)
    event_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Who asked: an admin key id, `cli:<OS user>`, `scheduler` or `system`.
    actor: Mapped[str] = mapped_column(String(64), server_default="system")
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index(
            "ix_events_unpublished",
            "seq",
            sqlite_where=text("published_at IS NULL"),
            postgresql_where=text("published_at IS NULL"),
        ),
        # GET /v1/events?realm_id=: a realm's retained events in order, not the whole outbox.
        Index("ix_events_realm_id_seq", "realm_id", "seq"),
        # prune_events finds the oldest relayed events without reading the unsent or the rest.
        Index(
            "ix_events_published_at",
            "published_at",
            sqlite_where=text("published_at IS NOT NULL"),
            postgresql_where=text("published_at IS NOT NULL"),
        ),
    )


class PooledKey(Base):
    """An RSA key made ahead of need, sealed under the master key; a realm takes each once.

    RSA generation takes 40 ms to over a second, so a pool filled in the background lets a
    rotation or a revocation store a key at once. Pooled keys belong to no realm: they are in
    no JWKS, event or API answer until taken.
    """

    __tablename__ = "key_pool"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    algo: Mapped[str] = mapped_column(String(10))
    rsa_bits: Mapped[int] = mapped_column(Integer)
    public_pem: Mapped[str] = mapped_column(Text)
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_key_pool_algo_rsa_bits_id", "algo", "rsa_bits", "id"),)


class MassRotation(Base):
    """One `rotate --all`: which realms it covers and its cut-off, so running it again resumes.

    A realm is covered when it matches the filters and its active key began signing before
    `before`; rotating it moves its active key past the cut-off, so it is never rotated twice.
    """

    __tablename__ = "rotations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    algo: Mapped[str | None] = mapped_column(String(10))
    realm_prefix: Mapped[str | None] = mapped_column(String(100))
    before: Mapped[datetime] = mapped_column(UTCDateTime())
    total: Mapped[int] = mapped_column(Integer)
    batches: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Webhook(Base):
    """An HTTP endpoint that receives events, signed with its secret (sealed like keys).

    After a secret rotation the previous secret keeps signing, beside the new one, until
    `previous_until`. `failing_since` is the first failed attempt since the last success.
    """

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    realm_id: Mapped[str | None] = mapped_column(String(32))
    reasons: Mapped[list[str] | None] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean)
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    previous_sealed_secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """One event for one webhook, written when the relay sends the event, so a crash or a
    Redis outage loses none. A sender holds it under `lease` until `next_attempt_at`; an
    entry without an event records the webhook being disabled."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[str | None] = mapped_column(String(32))
    # The event's place in the outbox: a webhook's deliveries go out in commit order.
    event_seq: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_response: Mapped[str | None] = mapped_column(Text)
    lease: Mapped[str | None] = mapped_column(String(32))
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    first_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id"),
        Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", "id"),
        # The sweep finds due deliveries, and /metrics the oldest, without reading the rest.
        Index(
            "ix_webhook_deliveries_pending",
            "next_attempt_at",
            sqlite_where=text("state = 'pending'"),
            postgresql_where=text("state = 'pending'"),
        ),
    )


class AdminKey(Base):
    """A public key that may sign admin API tokens; the private half is never stored."""

    __tablename__ = "admin_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    public_pem: Mapped[str] = mapped_column(Text)
    # What its tokens may do (worker.core.scopes); keys made before scopes have `admin`.
    scopes: Mapped[list[str]] = mapped_column(JSON, server_default='["admin"]')
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
