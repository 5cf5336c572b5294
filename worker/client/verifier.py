"""Moved to `keyrotor_client.verifier` (the keyrotor-client distribution); this name keeps
working for this release. It is the same module object, so patching either patches both."""

from __future__ import annotations

import sys

from keyrotor_client import verifier as _moved
from keyrotor_client.verifier import *  # noqa: F403

sys.modules[__name__] = _moved
