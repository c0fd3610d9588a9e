"""The keys a run has hidden in SQS, with when their groups come back: what the run's receives cannot see.

The run shares the stage among the keys it knows to be backlogged: those it holds and those it hid. With
thousands of keys, that set is kept as a running sum of weights, and a key whose groups are all back is
forgotten lazily (a heap of return times), so that no decision scans every key.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class HiddenKeys:
    # key -> [(hidden until, messages)], the entries not yet back
    entries: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    weight: dict[str, int] = field(default_factory=dict)  # key -> its weight, while it has groups hidden
    total_weight: int = 0
    _back_at: list[tuple[float, str]] = field(default_factory=list)  # (last return of the key, key), lazily pruned

    def add(self, key: str, until: float, messages: int, weight: int, now: float) -> None:
        self.expire(now)
        entries = self.entries.setdefault(key, [])
        entries.append((until, messages))
        if key not in self.weight:
            self.weight[key] = weight
            self.total_weight += weight
        heapq.heappush(self._back_at, (until, key))

    def expire(self, now: float) -> None:
        """Forget the keys whose hidden groups are all back (each key at most once per hide)."""
        while self._back_at and self._back_at[0][0] <= now:
            _, key = heapq.heappop(self._back_at)
            entries = self.entries.get(key)
            if entries is None:
                continue
            entries[:] = [e for e in entries if e[0] > now]
            if not entries:
                del self.entries[key]
                self.total_weight -= self.weight.pop(key, 0)

    def weight_besides(self, now: float, held: dict[str, int]) -> int:
        """The weight of the keys hidden now and not among `held` (key -> weight)."""
        self.expire(now)
        return self.total_weight - sum(self.weight.get(k, 0) for k in held)

    def messages(self, key: str, now: float) -> int:
        return sum(c for until, c in self.entries.get(key, ()) if until > now)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.entries))

    def __contains__(self, key: object) -> bool:
        return key in self.entries
