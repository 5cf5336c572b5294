"""One error tree: the CLI maps it to exit codes and HTTP to status codes, each in one place."""

from __future__ import annotations

# The client's errors are the base of the tree: shared classes, so an `except InvalidToken`
# catches what either side raises.
from keyrotor_client.errors import (
    DiscoveryError,
    InvalidInput,
    InvalidToken,
    InvalidWebhook,
    KeyrotorError,
    NotFound,
)

__all__ = [
    "ConfigError",
    "Conflict",
    "DiscoveryError",
    "InvalidInput",
    "InvalidToken",
    "InvalidWebhook",
    "KeyrotorError",
    "NotFound",
    "NotMigrated",
    "SealError",
    "Unauthenticated",
]


class Conflict(KeyrotorError):
    """The request clashes with the current state (a duplicate name, say)."""


class ConfigError(KeyrotorError):
    """A setting is missing or malformed; raised once, at start."""


class SealError(KeyrotorError):
    """A sealed secret does not open with any configured master key."""


class NotMigrated(KeyrotorError):
    """The database schema is missing or behind: run `keyrotor migrate`."""


class Unauthenticated(KeyrotorError):
    """A request that needs credentials carried none (no bearer token at all)."""


class Forbidden(KeyrotorError):
    """A valid admin token whose key lacks the scope the request needs (HTTP 403)."""
