"""The service: realms and keys, every read the shells need and every write there is.

Each job lives in its own module; this class only puts them together, so callers keep one
object built from the database, the master keys, the policy limits and a clock.
"""

from __future__ import annotations

from worker.service.keys import JwtKeys
from worker.service.publication import Publishing
from worker.service.realms import Realms
from worker.service.rewrap import Rewrapping
from worker.service.rotation import Rotation


class Service(Realms, JwtKeys, Rotation, Publishing, Rewrapping):
    """Realm and key CRUD, rotation and purge, publication and signing keys, rewrap."""
