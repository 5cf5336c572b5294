"""Time as the shells pass it in: the core never reads a clock of its own."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(value: datetime | None) -> str | None:
    """UTC with a `Z`, microseconds kept: how every timestamp leaves keyrotor."""
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")
