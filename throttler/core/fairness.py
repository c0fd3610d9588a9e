"""Weighted fair sharing between quota keys (pure): start-time fair queueing over cost units.

Each key with work waiting gets a start tag `max(virtual time, its last finish tag)`; the key with the
smallest tag goes next, and its finish tag moves on by `cost / weight`. Over any stretch where keys
stay backlogged, each gets slots in proportion to its weight; a key that was idle starts at the current
virtual time (no credit hoarded while idle), so a key with one job is served within about one round of
the keys that are active.
"""

from __future__ import annotations

import heapq
import itertools

NO_KEY = ""  # jobs without a key share the stage as one more key (weight 1)


class FairShare:
    def __init__(self) -> None:
        self.vtime = 0.0
        self._finish: dict[str, float] = {}

    def start_tag(self, key: str) -> float:
        return max(self.vtime, self._finish.get(key, 0.0))

    def served(self, key: str, cost: int, weight: int) -> None:
        start = self.start_tag(key)
        self.vtime = start
        self._finish[key] = start + cost / max(1, weight)
        if len(self._finish) > 50_000:
            self._forget_idle()

    def _forget_idle(self) -> None:
        """Keys whose finish tag is behind the virtual time start from it anyway: drop them."""
        self._finish = {k: f for k, f in self._finish.items() if f > self.vtime}


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
            if current > tag + 1e-12:  # served since it was pushed: re-queue with its new tag
                heapq.heappush(self._heap, (current, next(self._order), key))
                continue
            return key
        return None

    def __len__(self) -> int:
        return len(self._heap)
