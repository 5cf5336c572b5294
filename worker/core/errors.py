"""One error tree: the CLI maps it to exit codes and HTTP to status codes, each in one place."""

from __future__ import annotations


class KeyrotorError(Exception):
    """Base of every error keyrotor raises on purpose; its message is one line for a person."""


class InvalidInput(KeyrotorError):
    """The caller asked for something malformed or unsafe; nothing was changed."""

    def __init__(self, *messages: str) -> None:
        self.messages = list(messages) or ["Invalid input"]
        super().__init__("; ".join(self.messages))


class NotFound(KeyrotorError):
    """No realm, key or admin key with that id or name."""


class Conflict(KeyrotorError):
    """The request clashes with the current state (a duplicate name, say)."""


class ConfigError(KeyrotorError):
    """A setting is missing or malformed; raised once, at start."""


class SealError(KeyrotorError):
    """A sealed secret does not open with any configured master key."""


class NotMigrated(KeyrotorError):
    """The database schema is missing or behind: run `keyrotor migrate`."""


class InvalidToken(KeyrotorError):
    """A token did not verify; the message says why in one line, never quoting key material."""


class Unauthenticated(KeyrotorError):
    """A request that needs credentials carried none (no bearer token at all)."""
