"""Scopes on admin keys (existing keys keep everything: `admin`), and who caused each event.

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
    with op.batch_alter_table("admin_keys") as table:
        table.add_column(sa.Column("scopes", sa.JSON(), nullable=False, server_default='["admin"]'))
    with op.batch_alter_table("events") as table:
        table.add_column(sa.Column("actor", sa.String(64), nullable=False, server_default="system"))


def downgrade() -> None:
    with op.batch_alter_table("events") as table:
        table.drop_column("actor")
    with op.batch_alter_table("admin_keys") as table:
        table.drop_column("scopes")
