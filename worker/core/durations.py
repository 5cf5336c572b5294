"""Durations written the way operators write them: `30d`, `6h`, `5m`, `90s`."""

from __future__ import annotations

import re
from datetime import timedelta

from worker.core.errors import InvalidInput

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"([0-9]+)([dhms])")
_WHOLE = re.compile(r"(?:[0-9]{1,12}[dhms])+")
_SECONDS = re.compile(r"[0-9]{1,12}")
MAX = timedelta(days=3650)


def parse_duration(text: object) -> timedelta:
    """Parse `30d`, `6h`, `1h30m`, `90s`, a number of seconds or a timedelta; anything else
    (a bool, a list, `1.5h`) is InvalidInput, the one refusal every caller shows."""
    raw = text.strip().lower() if isinstance(text, str) else ""
    seconds: float
    if isinstance(text, timedelta):
        seconds = text.total_seconds()
    elif isinstance(text, int | float) and not isinstance(text, bool):
        seconds = text  # an int stays one: float() of a 400-digit number overflows
    elif _SECONDS.fullmatch(raw):
        seconds = int(raw)
    elif len(raw) <= 40 and _WHOLE.fullmatch(raw):
        seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(raw))
    else:
        raise InvalidInput(f"invalid duration {text!r} (use e.g. 30d, 6h, 5m, 90s)")
    if not 0 <= seconds <= MAX.total_seconds():  # also refuses nan
        raise InvalidInput(f"duration {text} is out of range (0s to {format_duration(MAX)})")
    return timedelta(seconds=seconds)


def field_problem(label: str) -> str:
    """How the admin API refuses a policy field that is no duration."""
    return (
        f"{label} must be seconds or a duration such as 30d, 6h, 5m or 90s"
        f" (at most {format_duration(MAX)})"
    )


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling: 30d, 1h30m, 90s -> 1m30s, 0 -> 0s."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return f"{seconds}s"
    parts = []
    for unit, size in _UNITS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
