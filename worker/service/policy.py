"""A realm's rotation policy: the limits it is checked against and how a row stores it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from typing import Any

from worker.core import lifecycle
from worker.core.errors import InvalidInput
from worker.core.lifecycle import Policy
from worker.store.models import Realm


@dataclass(frozen=True)
class Limits:
    """The settings a policy is checked against, and the defaults a new realm starts from."""

    default_policy: Policy = field(default_factory=Policy)
    clock_skew: timedelta = timedelta(seconds=60)
    jwks_max_age: timedelta = timedelta(seconds=300)


def check_policy(policy: Policy, limits: Limits) -> Policy:
    """The policy with its algo normalized, or InvalidInput naming every unsafe setting (also
    what `keyrotor doctor` applies to the policies already stored)."""
    return lifecycle.check_policy(
        policy, clock_skew=limits.clock_skew, jwks_max_age=limits.jwks_max_age
    )


def policy_of(realm: Realm) -> Policy:
    return Policy(
        algo=realm.algo,
        rotation_period=timedelta(seconds=realm.rotation_period_s),
        prepublish=timedelta(seconds=realm.prepublish_s),
        grace=timedelta(seconds=realm.grace_s),
        max_token_ttl=timedelta(seconds=realm.max_token_ttl_s),
        rsa_bits=realm.rsa_bits,
    )


def set_policy(realm: Realm, policy: Policy) -> None:
    """Store the policy on the row; durations are kept as whole seconds."""
    realm.algo = policy.algo
    realm.rsa_bits = policy.rsa_bits
    realm.rotation_period_s = int(policy.rotation_period.total_seconds())
    realm.prepublish_s = int(policy.prepublish.total_seconds())
    realm.grace_s = int(policy.grace.total_seconds())
    realm.max_token_ttl_s = int(policy.max_token_ttl.total_seconds())


def changed(policy: Policy, changes: dict[str, Any]) -> Policy:
    """`policy` with the fields a caller gave replaced; a name that is no field is refused."""
    unknown = sorted(set(changes) - {f.name for f in fields(Policy)})
    if unknown:
        raise InvalidInput(f"Unknown policy field: {', '.join(unknown)}")
    return replace(policy, **changes)
