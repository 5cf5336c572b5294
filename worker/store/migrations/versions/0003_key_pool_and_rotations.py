"""The pool of ready RSA keys, and the record of each `rotate --all`.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.store.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_pool",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("algo", sa.String(10), nullable=False),
        sa.Column("rsa_bits", sa.Integer(), nullable=False),
        sa.Column("public_pem", sa.Text(), nullable=False),
        sa.Column("sealed_secret", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_key_pool"),
    )
    op.create_index("ix_key_pool_algo_rsa_bits_id", "key_pool", ["algo", "rsa_bits", "id"])
    op.create_table(
        "rotations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("algo", sa.String(10), nullable=True),
        sa.Column("realm_prefix", sa.String(100), nullable=True),
        sa.Column("before", UTCDateTime(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("batches", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("queued_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rotations"),
    )


def downgrade() -> None:
    op.drop_table("rotations")
    op.drop_index("ix_key_pool_algo_rsa_bits_id", table_name="key_pool")
    op.drop_table("key_pool")
