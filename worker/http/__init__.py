"""The HTTP shell: JWKS, the admin API, health and metrics (`create_app`, `serve`)."""

from __future__ import annotations
