"""The errors the client raises; the server's error tree (`worker.core.errors`) is built on
these same classes, so `except InvalidToken` catches either side's."""

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


class InvalidToken(KeyrotorError):
    """A token did not verify; the message says why in one line, never quoting key material."""


class InvalidWebhook(InvalidToken):
    """A webhook delivery did not verify (headers, timestamp, signature or body); the message
    says why in one line and never quotes a secret."""


class DiscoveryError(KeyrotorError):
    """An issuer's OpenID configuration could not be fetched or is not one to trust."""


class RemoteError(KeyrotorError):
    """A keyrotor server refused a request (a refused admin key, a missing scope, a fault) or
    could not be reached; `status` is its HTTP status, None when no answer came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)
