"""Caches keyed by what callers send stay within their bound."""

from __future__ import annotations

from worker.core.bounded import BoundedDict


def test_a_new_key_past_the_bound_starts_over() -> None:
    cache: BoundedDict[str, int] = BoundedDict(2)
    cache["a"], cache["b"] = 1, 2
    cache["b"] = 3  # replacing an entry is no growth
    assert cache == {"a": 1, "b": 3}
    cache["c"] = 4
    assert cache == {"c": 4}


def test_many_made_up_keys_never_pass_the_bound() -> None:
    cache: BoundedDict[int, None] = BoundedDict(100)
    for key in range(10_000):
        cache[key] = None
        assert len(cache) <= 100
