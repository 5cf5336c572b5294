"""A dict that cannot outgrow a bound, for caches keyed by what callers send."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(dict[K, V]):
    """Empties itself when a new key would pass `size`: made-up kids, headers or realm names
    cannot grow it without end, and starting over costs each live entry one reload.

    Reads are plain dict reads (no lock, no bookkeeping), which is what the hot paths need;
    writes go through `cache[key] = value` (`update` and `setdefault` skip the bound).
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: K, value: V) -> None:
        if len(self) >= self.size and key not in self:
            self.clear()
        super().__setitem__(key, value)
