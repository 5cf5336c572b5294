"""The service: realms and keys, every read the shells need and every write there is.

Each job lives in its own module; this class only puts them together, so callers keep one
object built from the database, the master keys, the policy limits and a clock.
"""

from __future__ import annotations

from worker.service.batch import BatchRotation
from worker.service.events import EventLog
from worker.service.keys import JwtKeys
from worker.service.mass import MassRotations
from worker.service.realms import Realms
from worker.service.rewrap import Rewrapping
from worker.service.webhooks import Webhooks


class Service(Realms, JwtKeys, BatchRotation, Rewrapping, MassRotations, Webhooks, EventLog):
    """Realm and key CRUD, rotation (a realm or a batch at a time) and purge, publication
    and signing keys, rewrap, the pool of ready RSA keys, webhooks and their deliveries, and
    the kept events (who changed what)."""
