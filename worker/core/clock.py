"""Time as the shells pass it in: the core never reads a clock of its own."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from worker.core.errors import InvalidInput

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(value: datetime | None) -> str | None:
    """UTC with a `Z`, microseconds kept: how every timestamp leaves keyrotor."""
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 timestamp with its offset (`2026-11-30T12:00:00Z`), as UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
        if value.tzinfo is not None:
            return value.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: an offset moves it out of range
        pass
    raise InvalidInput(
        "Before must be an RFC 3339 timestamp with an offset, like 2026-01-31T12:00:00Z"
    )
