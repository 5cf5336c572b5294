"""The service, the only writer of realms and keys, and the typed values it hands back.

One module per job: `realms`, `keys`, `rotation`, `batch` (many realms in one transaction),
`publication`, `rewrap`, `pool` (ready RSA keys), `mass` (`rotate --all`); every write of key
state goes through `writer` (or, for a batch, its shared steps). `views` holds the values
returned, `wire` their AuthRocket JSON.
"""

from __future__ import annotations

from worker.service.base import MAX_RESULTS
from worker.service.policy import Limits, check_policy, policy_of
from worker.service.service import Service
from worker.service.views import (
    Change,
    KeyView,
    Page,
    Publication,
    RealmView,
    RotationProgress,
    RotationView,
)

__all__ = [
    "MAX_RESULTS",
    "Change",
    "KeyView",
    "Limits",
    "Page",
    "Publication",
    "RealmView",
    "RotationProgress",
    "RotationView",
    "Service",
    "check_policy",
    "policy_of",
]
