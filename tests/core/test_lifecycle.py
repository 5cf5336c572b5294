"""The rotation rules, driven through simulated time with random policies and operations."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core import lifecycle
from worker.core.errors import InvalidInput, NotFound
from worker.core.lifecycle import (
    Activate,
    Create,
    Delete,
    Expire,
    Key,
    Policy,
    State,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SKEW = timedelta(seconds=5)
POLICY = Policy(
    algo="es256",
    rotation_period=timedelta(days=30),
    prepublish=timedelta(hours=1),
    grace=timedelta(hours=6),
    max_token_ttl=timedelta(hours=1),
)


def at(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


def fresh_ids() -> itertools.count[int]:
    return itertools.count()


def settle(policy: Policy, keys: list[Key], now: datetime, ids: itertools.count[int]) -> list[Key]:
    """Run `due` until nothing is due, as the beat would over successive ticks."""
    for _ in range(5):
        plan = lifecycle.due(policy, keys, now)
        if not plan:
            return keys
        keys = lifecycle.apply(keys, plan, now, (f"k{n}" for n in ids))
    raise AssertionError("due() never settles")


def test_a_new_realm_gets_one_active_key_at_once() -> None:
    assert lifecycle.due(POLICY, [], T0) == [Create(State.ACTIVE)]


def test_the_next_key_is_published_prepublish_before_it_signs() -> None:
    ids = fresh_ids()
    keys = settle(POLICY, [], T0, ids)
    (k0,) = keys
    assert lifecycle.next_due_at(POLICY, keys) == at(days=30) - timedelta(hours=1)
    assert lifecycle.due(POLICY, keys, at(days=30, hours=-1, seconds=-1)) == []
    keys = settle(POLICY, keys, at(days=30, hours=-1), ids)
    pending = [k for k in keys if k.state is State.PENDING]
    assert len(pending) == 1
    assert lifecycle.next_due_at(POLICY, keys) == at(days=30)
    keys = settle(POLICY, keys, at(days=30), ids)
    states = {k.id: k.state for k in keys}
    assert states == {k0.id: State.EXPIRED, pending[0].id: State.ACTIVE}
    old = next(k for k in keys if k.id == k0.id)
    assert old.delete_after == at(days=30, hours=6)


def test_a_late_scheduler_still_prepublishes_before_activation() -> None:
    ids = fresh_ids()
    keys = settle(POLICY, [], T0, ids)
    late = at(days=31)
    keys = settle(POLICY, keys, late, ids)
    assert sorted(k.state for k in keys) == [State.ACTIVE, State.PENDING]
    assert lifecycle.next_due_at(POLICY, keys) == late + POLICY.prepublish


def test_expired_keys_are_deleted_after_grace() -> None:
    ids = fresh_ids()
    keys = settle(POLICY, [], T0, ids)
    keys = settle(POLICY, keys, at(days=30, hours=-1), ids)
    keys = settle(POLICY, keys, at(days=30), ids)
    assert len(keys) == 2
    assert lifecycle.due(POLICY, keys, at(days=30, hours=6, seconds=-1)) == []
    keys = settle(POLICY, keys, at(days=30, hours=6), ids)
    assert [k.state for k in keys] == [State.ACTIVE]


def test_force_delete_of_the_active_key_promotes_the_pending_one() -> None:
    ids = fresh_ids()
    keys = settle(POLICY, settle(POLICY, [], T0, ids), at(days=30, hours=-1), ids)
    active = next(k for k in keys if k.state is State.ACTIVE)
    pending = next(k for k in keys if k.state is State.PENDING)
    plan = lifecycle.delete(POLICY, keys, active.id, at(days=29), force=True)
    assert plan == [Delete(active.id, revoked=True), Activate(pending.id)]
    assert lifecycle.reason(plan) == "key.revoked"


def test_force_delete_without_a_pending_key_creates_an_active_one() -> None:
    keys = settle(POLICY, [], T0, fresh_ids())
    plan = lifecycle.delete(POLICY, keys, keys[0].id, at(days=1), force=True)
    assert plan == [Delete(keys[0].id, revoked=True), Create(State.ACTIVE)]


def test_delete_without_force_expires_and_replaces_at_once() -> None:
    keys = settle(POLICY, [], T0, fresh_ids())
    plan = lifecycle.delete(POLICY, keys, keys[0].id, at(days=1), force=False)
    assert plan == [Expire(keys[0].id, at(days=1, hours=6)), Create(State.ACTIVE)]
    assert lifecycle.reason(plan) == "key.rotated"


def test_deleting_an_expired_key_without_force_changes_nothing() -> None:
    ids = fresh_ids()
    keys = settle(POLICY, [], T0, ids)
    keys = lifecycle.apply(
        keys, lifecycle.rotate_now(POLICY, keys, at(days=1)), at(days=1), iter(["n"])
    )
    expired = next(k for k in keys if k.state is State.EXPIRED)
    assert lifecycle.delete(POLICY, keys, expired.id, at(days=1), force=False) == []


def test_an_emergency_rotation_replaces_keys_made_before_its_cut_off_once() -> None:
    ids = fresh_ids()
    keys = settle(POLICY, settle(POLICY, [], T0, ids), at(days=30, hours=-1), ids)
    active = next(k for k in keys if k.state is State.ACTIVE)
    pending = next(k for k in keys if k.state is State.PENDING)
    cutoff, now = at(days=29, hours=23, minutes=30), at(days=29, hours=23, minutes=40)

    plan = lifecycle.rotate_unless_since(POLICY, keys, now, cutoff)

    # The pending key was made before the cut-off: as exposed as the active one, so it goes.
    assert plan == [Delete(pending.id), Expire(active.id, now + POLICY.grace), Create(State.ACTIVE)]
    assert lifecycle.reason(plan) == "key.rotated"
    after = lifecycle.apply(keys, plan, now, iter(["new"]))
    assert (
        lifecycle.rotate_unless_since(POLICY, after, at(days=29, hours=23, minutes=50), cutoff)
        == []
    )


def test_an_emergency_rotation_promotes_a_pending_key_made_after_its_cut_off() -> None:
    ids = fresh_ids()
    keys = settle(POLICY, settle(POLICY, [], T0, ids), at(days=30, hours=-1), ids)
    active = next(k for k in keys if k.state is State.ACTIVE)
    pending = next(k for k in keys if k.state is State.PENDING)
    plan = lifecycle.rotate_unless_since(POLICY, keys, at(days=29, hours=23), at(days=1))
    assert plan == [Expire(active.id, at(days=29, hours=23) + POLICY.grace), Activate(pending.id)]


def test_delete_of_an_unknown_key_is_not_found() -> None:
    with pytest.raises(NotFound):
        lifecycle.delete(POLICY, [], "jky_nope", T0, force=False)


def test_a_key_created_by_hand_is_pending_and_replaces_the_pending_one() -> None:
    ids = fresh_ids()
    keys = settle(POLICY, settle(POLICY, [], T0, ids), at(days=30, hours=-1), ids)
    pending = next(k for k in keys if k.state is State.PENDING)
    plan = lifecycle.create(POLICY, keys, at(days=30, minutes=-30), activate=False)
    assert plan == [Expire(pending.id, at(days=30, minutes=-30, hours=6)), Create(State.PENDING)]
    assert lifecycle.reason(plan) == "key.created"


def test_a_key_created_with_activate_signs_at_once() -> None:
    keys = settle(POLICY, [], T0, fresh_ids())
    plan = lifecycle.create(POLICY, keys, at(days=1), activate=True)
    assert plan == [Expire(keys[0].id, at(days=1, hours=6)), Create(State.ACTIVE)]


def test_next_jwks_change_is_the_pending_creation_or_a_deletion() -> None:
    ids = fresh_ids()
    keys = settle(POLICY, [], T0, ids)
    assert lifecycle.next_jwks_change_at(POLICY, keys) == at(days=30, hours=-1)
    keys = settle(POLICY, keys, at(days=30, hours=-1), ids)
    assert lifecycle.next_jwks_change_at(POLICY, keys) is None
    keys = settle(POLICY, keys, at(days=30), ids)
    assert lifecycle.next_jwks_change_at(POLICY, keys) == at(days=30, hours=6)


def test_policy_problems_name_what_is_unsafe() -> None:
    bad = Policy(grace=timedelta(minutes=30), prepublish=timedelta(seconds=10))
    problems = lifecycle.policy_problems(bad, clock_skew=SKEW, jwks_max_age=timedelta(minutes=5))
    assert problems == [
        "Grace (30m) must be at least max token ttl plus clock skew (1h5s)",
        "Prepublish (10s) must be at least the JWKS max-age (5m)",
    ]
    assert lifecycle.policy_problems(POLICY, clock_skew=SKEW, jwks_max_age=timedelta(0)) == []


def test_check_policy_normalizes_the_algo_and_refuses_every_problem_at_once() -> None:
    checked = lifecycle.check_policy(
        Policy(algo=" ES256 "), clock_skew=SKEW, jwks_max_age=timedelta(0)
    )
    assert checked.algo == "es256"
    with pytest.raises(InvalidInput) as caught:
        lifecycle.check_policy(
            Policy(algo="md5", rsa_bits=1024, grace=timedelta(0)),
            clock_skew=SKEW,
            jwks_max_age=timedelta(0),
        )
    assert [message.split(" ")[0] for message in caught.value.messages] == ["Algo", "Rsa", "Grace"]


def test_check_policy_speaks_the_callers_names() -> None:
    def env(*fields: str) -> str:
        return " + ".join(f"ENV_{field.upper()}" for field in fields)

    with pytest.raises(InvalidInput) as caught:
        lifecycle.check_policy(
            Policy(grace=timedelta(minutes=30)),
            clock_skew=SKEW,
            jwks_max_age=timedelta(0),
            name=env,
        )
    assert caught.value.messages == [
        "ENV_GRACE (30m) must be at least ENV_MAX_TOKEN_TTL + ENV_CLOCK_SKEW (1h5s)"
    ]


# -- simulated time: random policies, random operations -----------------------------------------


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    ttl = draw(st.integers(1, 50))
    prepublish = draw(st.integers(0, 50))
    return Policy(
        algo="es256",
        rotation_period=timedelta(seconds=prepublish + draw(st.integers(1, 200))),
        prepublish=timedelta(seconds=prepublish),
        grace=timedelta(seconds=ttl + SKEW.seconds + draw(st.integers(0, 50))),
        max_token_ttl=timedelta(seconds=ttl),
    )


operations = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.integers(1, 120)),
        st.tuples(st.just("sign"), st.integers(0, 1000)),
        st.tuples(st.just("create"), st.booleans()),
        st.tuples(st.just("delete"), st.integers(0, 5), st.booleans()),
        st.tuples(st.just("rotate")),
    ),
    max_size=60,
)


@dataclass
class World:
    """A realm under simulated time, with a record of what verifiers could have seen."""

    policy: Policy
    now: datetime = T0
    keys: list[Key] = field(default_factory=list)
    published_at: dict[str, datetime] = field(default_factory=dict)
    signed_by: dict[str, datetime] = field(default_factory=dict)  # kid -> latest token exp
    revoked: set[str] = field(default_factory=set)
    exempt: set[str] = field(default_factory=lambda: {"k0"})  # the first key, and operators' picks
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def run(self, plan: lifecycle.Plan, *, by_operator: bool = False) -> None:
        before = {k.id for k in self.keys}
        was_active = self.active().id if self.keys else None
        for step in plan:
            if isinstance(step, Delete) and step.revoked:
                self.revoked.add(step.key_id)
        self.keys = lifecycle.apply(self.keys, plan, self.now, (f"k{n}" for n in self.ids))
        for key in self.keys:
            if key.id not in before:
                self.published_at[key.id] = self.now
        if by_operator and self.active().id != was_active:
            self.exempt.add(self.active().id)  # an operator's revoke or rotate signs at once
        self.check()

    def active(self) -> Key:
        (active,) = [k for k in self.keys if k.state is State.ACTIVE]
        return active

    def check(self) -> None:
        active = self.active()  # exactly one active key
        if active.id not in self.exempt:
            assert active.activated_at is not None
            assert active.activated_at - self.published_at[active.id] >= self.policy.prepublish
        live = {k.id for k in self.keys}
        for kid, exp in self.signed_by.items():
            if kid not in self.revoked and exp > self.now:
                assert kid in live, f"{kid} deleted while a token it signed was still valid"
        for key in self.keys:
            if key.state is State.EXPIRED:
                assert key.delete_after is not None and key.expired_at is not None
                assert key.delete_after - key.expired_at >= self.policy.grace


@settings(max_examples=300, deadline=None)
@given(policies(), operations)
def test_invariants_hold_through_random_operations(
    policy: Policy, ops: list[tuple[Any, ...]]
) -> None:
    world = World(policy)
    world.run(lifecycle.due(policy, [], T0))
    for op in ops:
        match op:
            case ("tick", seconds):
                # the beat runs every second over the interval, as rotate_due would
                for _ in range(seconds):
                    world.now += timedelta(seconds=1)
                    world.run(lifecycle.due(policy, world.keys, world.now))
            case ("sign", millis):
                ttl = policy.max_token_ttl * (millis / 1000)
                kid = world.active().id
                world.signed_by[kid] = max(world.signed_by.get(kid, T0), world.now + ttl)
            case ("create", activate):
                plan = lifecycle.create(policy, world.keys, world.now, activate=activate)
                created = len(world.keys)
                world.run(plan, by_operator=True)
                assert len(world.keys) >= created
            case ("delete", index, force):
                if world.keys:
                    key = sorted(world.keys, key=lambda k: k.id)[index % len(world.keys)]
                    plan = lifecycle.delete(policy, world.keys, key.id, world.now, force=force)
                    world.run(plan, by_operator=True)
            case ("rotate",):
                world.run(lifecycle.rotate_now(policy, world.keys, world.now), by_operator=True)
        assert lifecycle.next_due_at(policy, world.keys) > world.now or lifecycle.due(
            policy, world.keys, world.now
        )


@settings(max_examples=200, deadline=None)
@given(policies(), st.integers(1, 5000))
def test_scheduled_rotation_keeps_to_the_period(policy: Policy, seconds: int) -> None:
    """Left to the scheduler alone, no key signs longer than its period plus prepublish slack."""
    world = World(policy)
    world.run(lifecycle.due(policy, [], T0))
    for _ in range(seconds):
        world.now += timedelta(seconds=1)
        world.run(lifecycle.due(policy, world.keys, world.now))
        active = world.active()
        assert active.activated_at is not None
        assert world.now - active.activated_at <= policy.rotation_period
