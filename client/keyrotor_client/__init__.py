"""keyrotor's client libraries: verify its tokens, follow its key events, check its webhooks,
and sign through its HTTP API.

    from keyrotor_client import KeyCache, Subscriber
    cache = KeyCache.from_issuer("https://keys.example/realms/acme")
    claims = cache.verify("acme", token)

Depends on PyJWT, cryptography and redis-py only: none of the server's stack.
"""

from __future__ import annotations

from keyrotor_client.discovery import discover
from keyrotor_client.errors import (
    DiscoveryError,
    InvalidInput,
    InvalidToken,
    InvalidWebhook,
    KeyrotorError,
    NotFound,
    RemoteError,
)
from keyrotor_client.remote_signer import RemoteSigner, SignedToken
from keyrotor_client.subscriber import Subscriber
from keyrotor_client.verifier import KeyCache
from keyrotor_client.webhooks import verify_webhook

__version__ = "0.1.0"
__all__ = [
    "DiscoveryError",
    "InvalidInput",
    "InvalidToken",
    "InvalidWebhook",
    "KeyCache",
    "KeyrotorError",
    "NotFound",
    "RemoteError",
    "RemoteSigner",
    "SignedToken",
    "Subscriber",
    "discover",
    "verify_webhook",
]
