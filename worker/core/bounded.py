"""Moved to `keyrotor_client.bounded`, which the verifier needs without the server."""

from __future__ import annotations

from keyrotor_client.bounded import BoundedDict

__all__ = ["BoundedDict"]
