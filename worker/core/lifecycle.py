"""The rotation rules as pure functions: given a realm's policy, its keys and `now`, what is due.

No I/O and no clock reads: callers pass `now`, so tests drive simulated time. Every function
returns a plan (a list of transitions); `apply` turns a plan into the realm's next set of keys.
The service writes that result in one transaction; nothing else decides.

A key lives: pending (published, signs nothing) -> active (the one signing key) -> expired
(still published for `grace`, so tokens it signed keep verifying) -> deleted (row gone).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from worker.core import keys
from worker.core.durations import format_duration
from worker.core.errors import InvalidInput, NotFound

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class State(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Policy:
    """A realm's rotation strategy: the whole of it, like Dex's rotation strategy value."""

    algo: str = "rs256"
    rotation_period: timedelta = timedelta(days=30)
    prepublish: timedelta = timedelta(hours=1)
    grace: timedelta = timedelta(hours=6)
    max_token_ttl: timedelta = timedelta(hours=1)
    rsa_bits: int = 2048


_FIELD_WORDS = {
    "rsa_bits": "rsa bits",
    "rotation_period": "rotation period",
    "prepublish": "prepublish",
    "grace": "grace",
    "max_token_ttl": "max token ttl",
    "clock_skew": "clock skew",
    "jwks_max_age": "the JWKS max-age",
}

Names = Callable[..., str]
"""How a caller names one setting, or the sum of several: `name("grace")`."""


def _in_words(*fields: str) -> str:
    """The API's and the CLI's names: `max token ttl plus clock skew`."""
    return " plus ".join(_FIELD_WORDS[field] for field in fields)


def policy_problems(
    policy: Policy, *, clock_skew: timedelta, jwks_max_age: timedelta, name: Names = _in_words
) -> list[str]:
    """Why this policy could break a live token or a cached JWKS; empty when it is safe.

    `name` spells the settings involved, so the same rules speak the API's words here and
    the environment variables' in `worker.settings`."""
    span = format_duration
    problems = []
    if policy.rotation_period < timedelta(seconds=1):
        problems.append(f"{name('rotation_period')} must be at least 1s")
    if policy.max_token_ttl < timedelta(seconds=1):
        problems.append(f"{name('max_token_ttl')} must be at least 1s")
    if policy.rotation_period <= policy.prepublish:
        problems.append(
            f"{name('rotation_period')} ({span(policy.rotation_period)}) must be longer than"
            f" {name('prepublish')} ({span(policy.prepublish)})"
        )
    if policy.grace < policy.max_token_ttl + clock_skew:
        problems.append(
            f"{name('grace')} ({span(policy.grace)}) must be at least"
            f" {name('max_token_ttl', 'clock_skew')} ({span(policy.max_token_ttl + clock_skew)})"
        )
    if policy.prepublish < jwks_max_age:
        problems.append(
            f"{name('prepublish')} ({span(policy.prepublish)}) must be at least"
            f" {name('jwks_max_age')} ({span(jwks_max_age)})"
        )
    return [_sentence(problem) for problem in problems]


def check_policy(
    policy: Policy, *, clock_skew: timedelta, jwks_max_age: timedelta, name: Names = _in_words
) -> Policy:
    """The policy with its algo normalized, or InvalidInput naming every unsafe setting: what
    a new or changed policy, a stored one (`keyrotor doctor`) and the default one pass."""
    problems = []
    try:
        policy = replace(policy, algo=keys.check_algo(policy.algo))
    except InvalidInput as error:
        problems += error.messages
    if policy.rsa_bits not in keys.RSA_BITS:
        bits = ", ".join(map(str, keys.RSA_BITS))
        problems.append(_sentence(f"{name('rsa_bits')} must be one of {bits}"))
    problems += policy_problems(policy, clock_skew=clock_skew, jwks_max_age=jwks_max_age, name=name)
    if problems:
        raise InvalidInput(*problems)
    return policy


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class Key:
    """What the rules need to know of a key; material lives elsewhere."""

    id: str
    state: State
    created_at: datetime
    activated_at: datetime | None = None
    expired_at: datetime | None = None
    delete_after: datetime | None = None


@dataclass(frozen=True)
class Create:
    """A new key, published at once; `ACTIVE` only when no published key can take over."""

    state: State


@dataclass(frozen=True)
class Activate:
    key_id: str


@dataclass(frozen=True)
class Expire:
    key_id: str
    delete_after: datetime


@dataclass(frozen=True)
class Delete:
    key_id: str
    revoked: bool = False


Transition = Create | Activate | Expire | Delete
Plan = list[Transition]


def _active(keys: Sequence[Key]) -> Key | None:
    return next((k for k in keys if k.state is State.ACTIVE), None)


def _pending(keys: Sequence[Key]) -> Key | None:
    """The oldest pending key: the next to sign."""
    pending = [k for k in keys if k.state is State.PENDING]
    return min(pending, key=lambda k: (k.created_at, k.id)) if pending else None


def _find(keys: Sequence[Key], key_id: str) -> Key:
    for key in keys:
        if key.id == key_id:
            return key
    raise NotFound(f"Key {key_id} not found")


def _replace_active(policy: Policy, keys: Sequence[Key], now: datetime) -> Plan:
    """Retire the active key (if any) and put the pending key, or a new one, in its place."""
    active, pending = _active(keys), _pending(keys)
    plan: Plan = [Expire(active.id, now + policy.grace)] if active else []
    plan.append(Activate(pending.id) if pending else Create(State.ACTIVE))
    return plan


def rotation_at(policy: Policy, active: Key, pending: Key | None) -> datetime:
    """When the pending key may sign: after the period, and never before it was prepublished."""
    assert active.activated_at is not None
    due = active.activated_at + policy.rotation_period
    return max(due, pending.created_at + policy.prepublish) if pending else due


def pending_at(policy: Policy, active: Key) -> datetime:
    """When the next key must appear in the JWKS so it is cached before it signs."""
    assert active.activated_at is not None
    return active.activated_at + policy.rotation_period - policy.prepublish


def due(policy: Policy, keys: Sequence[Key], now: datetime) -> Plan:
    """The scheduled work at `now`: purge, prepublish, rotate. Empty when nothing is due."""
    plan: Plan = [
        Delete(k.id)
        for k in keys
        if k.state is State.EXPIRED and k.delete_after is not None and k.delete_after <= now
    ]
    active, pending = _active(keys), _pending(keys)
    if active is None:
        plan.append(Activate(pending.id) if pending else Create(State.ACTIVE))
    elif pending is None:
        if now >= pending_at(policy, active):
            plan.append(Create(State.PENDING))
    elif now >= rotation_at(policy, active, pending):
        plan += _replace_active(policy, keys, now)
    return plan


def next_due_at(policy: Policy, keys: Sequence[Key]) -> datetime:
    """The earliest time `due` returns work: what the realm's `next_rotation_at` index holds."""
    times = [k.delete_after for k in keys if k.state is State.EXPIRED and k.delete_after]
    active, pending = _active(keys), _pending(keys)
    if active is None:
        times.append(EPOCH)
    elif pending is None:
        times.append(pending_at(policy, active))
    else:
        times.append(rotation_at(policy, active, pending))
    return min(times)


def next_jwks_change_at(policy: Policy, keys: Sequence[Key]) -> datetime | None:
    """The next scheduled change of the published key set, so no cache outlives it."""
    times = [k.delete_after for k in keys if k.state is State.EXPIRED and k.delete_after]
    active = _active(keys)
    if active is not None and _pending(keys) is None:
        times.append(pending_at(policy, active))
    return min(times, default=None)


def rotate_now(policy: Policy, keys: Sequence[Key], now: datetime) -> Plan:
    """An operator's rotation: the pending key (or a new one) signs from now on."""
    return _replace_active(policy, keys, now)


def rotate_unless_since(
    policy: Policy, keys: Sequence[Key], now: datetime, cutoff: datetime
) -> Plan:
    """An emergency rotation: `rotate_now` unless the active key began signing at or after
    `cutoff`, so rotating "everything signing before T" twice rotates each realm once. A
    pending key made before the cut-off is as exposed as the active one (a leaked database
    holds both): it is deleted, having signed nothing, and a new key signs instead."""
    active = _active(keys)
    if active is not None and active.activated_at is not None and active.activated_at >= cutoff:
        return []
    stale = {k.id for k in keys if k.state is State.PENDING and k.created_at < cutoff}
    fresh = [k for k in keys if k.id not in stale]
    return [Delete(key_id) for key_id in sorted(stale)] + _replace_active(policy, fresh, now)


def create(policy: Policy, keys: Sequence[Key], now: datetime, *, activate: bool) -> Plan:
    """A key made or imported by hand: pending, replacing any pending one, unless `activate`."""
    active = _active(keys)
    replaced = active if activate or active is None else _pending(keys)
    plan: Plan = [Expire(replaced.id, now + policy.grace)] if replaced else []
    plan.append(Create(State.ACTIVE if replaced is active else State.PENDING))
    return plan


def delete(policy: Policy, keys: Sequence[Key], key_id: str, now: datetime, *, force: bool) -> Plan:
    """Without force a key expires (still verifying for `grace`); with force it is revoked now.

    Either way an active key is replaced at once, by the pending key when there is one.
    """
    key = _find(keys, key_id)
    others = [k for k in keys if k.id != key_id]
    if force:
        plan: Plan = [Delete(key.id, revoked=True)]
        if key.state is State.ACTIVE:
            plan += _replace_active(policy, others, now)
        return plan
    if key.state is State.EXPIRED:
        return []
    plan = [Expire(key.id, now + policy.grace)]
    if key.state is State.ACTIVE:
        plan += _replace_active(policy, others, now)
    return plan


def apply(keys: Sequence[Key], plan: Plan, now: datetime, new_ids: Iterator[str]) -> list[Key]:
    """The realm's keys after `plan`; new keys take their ids from `new_ids`."""
    result = {k.id: k for k in keys}
    for step in plan:
        match step:
            case Create(state=state):
                key_id = next(new_ids)
                activated = now if state is State.ACTIVE else None
                result[key_id] = Key(key_id, state, created_at=now, activated_at=activated)
            case Activate(key_id=key_id):
                result[key_id] = replace(result[key_id], state=State.ACTIVE, activated_at=now)
            case Expire(key_id=key_id, delete_after=delete_after):
                result[key_id] = replace(
                    result[key_id], state=State.EXPIRED, expired_at=now, delete_after=delete_after
                )
            case Delete(key_id=key_id):
                del result[key_id]
    return list(result.values())


def reason(plan: Plan) -> str:
    """The `realm.updated` reason that best names what a plan did."""
    kinds = {type(step) for step in plan}
    if any(isinstance(step, Delete) and step.revoked for step in plan):
        return "key.revoked"
    activates = Activate in kinds or Create(State.ACTIVE) in plan
    if activates and Expire in kinds:
        return "key.rotated"
    if activates:
        return "key.activated"
    if Create in kinds:
        return "key.created"
    if Expire in kinds:
        return "key.expired"
    return "key.deleted"
