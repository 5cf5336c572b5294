"""Realms, JWT keys, the events outbox and admin API keys.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.store.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "realms",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("algo", sa.String(10), nullable=False),
        sa.Column("rsa_bits", sa.Integer(), nullable=False),
        sa.Column("rotation_period_s", sa.Integer(), nullable=False),
        sa.Column("prepublish_s", sa.Integer(), nullable=False),
        sa.Column("grace_s", sa.Integer(), nullable=False),
        sa.Column("max_token_ttl_s", sa.Integer(), nullable=False),
        sa.Column("jwks_version", sa.Integer(), nullable=False),
        sa.Column("next_rotation_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_realms"),
        sa.UniqueConstraint("name", name="uq_realms_name"),
    )
    op.create_index("ix_realms_next_rotation_at_id", "realms", ["next_rotation_at", "id"])

    op.create_table(
        "jwt_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("realm_id", sa.String(32), nullable=False),
        sa.Column("algo", sa.String(10), nullable=False),
        sa.Column("use", sa.String(10), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("public_pem", sa.Text(), nullable=True),
        sa.Column("sealed_secret", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("activated_at", UTCDateTime(), nullable=True),
        sa.Column("expired_at", UTCDateTime(), nullable=True),
        sa.Column("delete_after", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["realm_id"], ["realms.id"], name="fk_jwt_keys_realm_id_realms", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_jwt_keys"),
    )
    op.create_index("ix_jwt_keys_realm_id_id", "jwt_keys", ["realm_id", "id"])
    op.create_index("ix_jwt_keys_state_delete_after", "jwt_keys", ["state", "delete_after"])
    op.create_index(
        "uq_jwt_keys_one_active_per_realm",
        "jwt_keys",
        ["realm_id"],
        unique=True,
        sqlite_where=sa.text("state = 'active'"),
        postgresql_where=sa.text("state = 'active'"),
    )

    op.create_table(
        "events",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("realm_id", sa.String(32), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("key_ids", sa.JSON(), nullable=False),
        sa.Column("jwks_version", sa.Integer(), nullable=False),
        sa.Column("event_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_events"),
        sa.UniqueConstraint("id", name="uq_events_id"),
    )
    op.create_index(
        "ix_events_unpublished",
        "events",
        ["seq"],
        sqlite_where=sa.text("published_at IS NULL"),
        postgresql_where=sa.text("published_at IS NULL"),
    )

    op.create_table(
        "admin_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("public_pem", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_admin_keys"),
    )


def downgrade() -> None:
    op.drop_table("admin_keys")
    op.drop_index("ix_events_unpublished", table_name="events")
    op.drop_table("events")
    op.drop_index("uq_jwt_keys_one_active_per_realm", table_name="jwt_keys")
    op.drop_index("ix_jwt_keys_state_delete_after", table_name="jwt_keys")
    op.drop_index("ix_jwt_keys_realm_id_id", table_name="jwt_keys")
    op.drop_table("jwt_keys")
    op.drop_index("ix_realms_next_rotation_at_id", table_name="realms")
    op.drop_table("realms")
