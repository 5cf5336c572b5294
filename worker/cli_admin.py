"""`keyrotor web`, `admin-keys` and `admin-token`: the HTTP issue fills these in."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `keyrotor` app."""
