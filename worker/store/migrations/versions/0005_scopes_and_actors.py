"""Scopes on admin keys (existing keys keep everything: `admin`), who caused each event, and
an index to list one realm's events.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN with a constant default: SQLite and PostgreSQL both fill existing rows
    # without copying the table.
    op.add_column(
        "admin_keys", sa.Column("scopes", sa.JSON(), nullable=False, server_default='["admin"]')
    )
    op.add_column(
        "events", sa.Column("actor", sa.String(64), nullable=False, server_default="system")
    )
    op.create_index("ix_events_realm_id_seq", "events", ["realm_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_events_realm_id_seq", table_name="events")
    op.drop_column("events", "actor")
    op.drop_column("admin_keys", "scopes")
