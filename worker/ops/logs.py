"""Log lines for machines and for people: one JSON object per line in production, readable
lines in a terminal, the same for keyrotor's own loggers, Celery's and everything else.

Ids travel as fields (`log.info("rotated", extra={"realm_id": ..., "key_id": ...})`), so a log
search needs no regular expressions. Nothing that looks like key material is ever written: the
code logs ids only, and a last filter blanks PEM private keys and `jsk_` secrets regardless.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from worker.settings import Settings

# Every attribute a plain LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRIBUTES = frozenset(
    set(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
    | {"message", "asctime", "taskName"}
    | {"color_message"}  # uvicorn's copy of the message with terminal colours
)
_PRIVATE_PEM = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(-----END \1PRIVATE KEY-----|\Z)", re.DOTALL
)
_HMAC_SECRET = re.compile(r"jsk_[0-9A-Za-z]{43}")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# Celery's routine lines, word for word (tests/ops/test_logs.py compares them with Celery's
# own, so an upgrade that rewords one fails there): beat sends a sweep every two seconds and
# the worker receives and finishes it, three INFO lines that bury the few that matter. What
# changed a realm is logged by keyrotor.tasks itself, so these go to DEBUG.
CELERY_RECEIVED = "Task %(name)s[%(id)s] received"
CELERY_SUCCEEDED = "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s"
BEAT_SENDING = "Scheduler: Sending due task %s (%s)"
# A failed attempt that Celery will retry is logged at INFO; it is a failure, so WARNING.
CELERY_RETRY = "Task %(name)s[%(id)s] retry: %(exc)s"
_NEW_LEVEL = {
    ("celery.worker.strategy", CELERY_RECEIVED): logging.DEBUG,
    ("celery.app.trace", CELERY_SUCCEEDED): logging.DEBUG,
    ("celery.beat", BEAT_SENDING): logging.DEBUG,
    ("celery.app.trace", CELERY_RETRY): logging.WARNING,
}


def redact(text: str) -> str:
    """Blank private keys and HMAC secrets that reached a log line by mistake."""
    if "PRIVATE KEY" in text:
        text = _PRIVATE_PEM.sub("[private key redacted]", text)
    if "jsk_" in text:
        text = _HMAC_SECRET.sub("jsk_[redacted]", text)
    return text


def shown_url(url: str) -> str:
    """A database or Redis URL to print: the password as ***, the rest as configured (a URL
    that does not even parse shows its scheme only)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url.split("://", 1)[0] + "://…"
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra=` fields of a record, and the Celery task it ran in (if any)."""
    found = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}
    if "celery" in sys.modules:
        from celery._state import get_current_task

        task = get_current_task()
        if task is not None and getattr(task, "request", None) is not None:
            found.setdefault("task_id", task.request.id)
            found.setdefault("task_name", task.name)
    return found


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _scrub(item) for key, item in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", ...fields, "exc"?}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name, value in fields(record).items():
            entry.setdefault(name, _scrub(value))
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message  realm_id=… key_id=…` for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = fields(record)
        if record.name.startswith("celery."):
            extra.pop("data", None)  # Celery's copy of the message's own arguments (traceback too)
        if extra:
            line += "  " + " ".join(f"{name}={_scrub(value)}" for name, value in extra.items())
        return redact(line)


class RoutineFilter(logging.Filter):
    """Re-level Celery's routine lines (per-task receipts and successes, beat's sends) to
    DEBUG and its retries to WARNING, then keep a record only if its logger still wants it at
    the new level: an idle service is quiet at INFO, and every failure still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            return True
        level = _NEW_LEVEL.get((record.name, record.msg))
        if level is None or level == record.levelno:
            return True
        record.levelno, record.levelname = level, logging.getLevelName(level)
        return logging.getLogger(record.name).isEnabledFor(level)


def wants_json(settings: Settings, stream: IO[str]) -> bool:
    """`auto` means JSON in production unless a person is watching the terminal."""
    if settings.log_format != "auto":
        return settings.log_format == "json"
    isatty = getattr(stream, "isatty", None)
    return settings.env == "production" and not (callable(isatty) and isatty())


def configure_logging(settings: Settings, *, stream: IO[str] | None = None) -> logging.Handler:
    """Send every logger's records to one handler on `stream` (stderr), replacing the root
    logger's handlers, at `KEYROTOR_LOG_LEVEL`, with Celery's routine lines at DEBUG
    (`RoutineFilter`). Returns the handler (tests read it)."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if wants_json(settings, stream) else TextFormatter())
    handler.addFilter(RoutineFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)
    return handler
