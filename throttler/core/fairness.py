"""Weighted fair sharing between quota keys (pure): start-time fair queueing over cost units.

Each key with work waiting gets a start tag `max(virtual time, its last finish tag)`; the key with the
smallest tag goes next, and its finish tag moves on by `cost / weight`. Over any stretch where keys
stay backlogged, each gets slots in proportion to its weight; a key that was idle starts at the current
virtual time (no credit hoarded while idle), so a key with one job is served within about one round of
the keys that are active.

A key that stays backlogged but cannot take a slot for a moment (its own tiers space its calls, its
groups wait for their previous calls) keeps the credit it earned meanwhile, up to CREDIT_S seconds of
virtual time: without it, a heavier key paced by its own tier falls back to the tag of the lightest
keys each time it is set aside, and every key ends up with the same share whatever its weight.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterable

NO_KEY = ""  # jobs without a key share the stage as one more key (weight 1)


def fair_key(key: str | None) -> str:
    """The key a job is shared fairly under (jobs without a key share NO_KEY)."""
    return key if key is not None else NO_KEY


def quota_key(fair_key: str) -> str | None:
    """The quota key of a fair key (None: the jobs without a key, which the global tiers alone limit)."""
    return None if fair_key == NO_KEY else fair_key
# A backlogged key keeps its credit across the gaps its own tier's spacing leaves (25/s: 40 ms), not across
# a spent window: that would bunch the keys' windows and leave the stage idle (test_per_key_planning).
CREDIT_S = 0.1


class FairShare:
    def __init__(self) -> None:
        self.vtime = 0.0
        self._finish: dict[str, float] = {}
        self._backlogged: set[str] = set()
        # (slot, virtual time) as served, ascending: the credit floor is the virtual time CREDIT_S ago.
        self._marks_at: list[float] = []
        self._marks_v: list[float] = []
        self._floor = 0.0

    def backlogged(self, keys: Iterable[str]) -> None:
        """The keys with work held now; one that was not backlogged before starts at the virtual time."""
        keys = set(keys)
        for key in keys - self._backlogged:
            if key in self._finish:
                self._finish[key] = max(self._finish[key], self.vtime)
        self._backlogged = keys

    def start_tag(self, key: str) -> float:
        finish = self._finish.get(key)
        return self.vtime if finish is None else max(self._floor, finish)

    def served(self, key: str, cost: int, weight: int, at: float = 0.0) -> None:
        start = self.start_tag(key)
        self.vtime = max(self.vtime, start)
        self._finish[key] = start + cost / max(1, weight)
        self._mark(at)
        if len(self._finish) > 50_000:
            self._forget_idle()

    def _mark(self, at: float) -> None:
        if not self._marks_at or at > self._marks_at[-1]:
            self._marks_at.append(at)
            self._marks_v.append(self.vtime)
        else:
            self._marks_v[-1] = self.vtime
        i = bisect.bisect_right(self._marks_at, at - CREDIT_S)
        if i:
            self._floor = max(self._floor, self._marks_v[i - 1])
            del self._marks_at[: i - 1], self._marks_v[: i - 1]

    def _forget_idle(self) -> None:
        """Keys not backlogged whose finish tag is behind the virtual time start from it anyway: drop them."""
        self._finish = {k: f for k, f in self._finish.items() if f > self.vtime or k in self._backlogged}


class KeyQueue:
    """A min-heap of keys by start tag, with stable ties (first come, first served)."""

    def __init__(self, fair: FairShare):
        self._fair = fair
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()

    def push(self, key: str) -> None:
        heapq.heappush(self._heap, (self._fair.start_tag(key), next(self._order), key))

    def pop(self) -> str | None:
        while self._heap:
            tag, _, key = heapq.heappop(self._heap)
            current = self._fair.start_tag(key)
            if current > tag + 1e-12:  # served since it was pushed (or its credit ran out): re-queue
                heapq.heappush(self._heap, (current, next(self._order), key))
                continue
            return key
        return None

    def __len__(self) -> int:
        return len(self._heap)
