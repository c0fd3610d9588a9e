"""Pacing (pure): when may the next call be sent so that no tier is ever exceeded?

Calls are counted in ledgers of time buckets, one per window length: 400 buckets per sliding window
(so a bucket is 0.25% of the window) or one bucket per calendar period for aligned tiers. A call may be
sent at `t` when, for every tier, the buckets touching `(t - window - margin, t]` hold fewer calls than
the limit; counting a partly covered bucket whole errs on the safe side. On top of that, calls are
spaced evenly at the finest tier's rate. Ledgers only grow at the right (slots are monotonic), so each
decision is O(1) amortised, whatever the backlog, the number of groups or the longest window.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from throttler.core.quotas import QuotaConfig, Tier

BUCKETS_PER_WINDOW = 400
# Ledgers kept whatever the configuration, so that a tier an operator adds later starts from a
# conservative count of the calls already made instead of from zero.
STANDING_WINDOWS_S = (60, 3600, 86400)
_EPS = 1e-9


def ledger_key(window_s: int, aligned: bool) -> str:
    return f"{window_s}{'a' if aligned else ''}"


class Ledger:
    """Calls per time bucket for one window length."""

    def __init__(self, window_s: int, aligned: bool = False):
        self.window_s = window_s
        self.aligned = aligned
        self.bucket_s = float(window_s) if aligned else window_s / BUCKETS_PER_WINDOW
        self.entries: deque[list[int]] = deque()  # [bucket index, count], ascending
        self.total = 0

    def index(self, t: float) -> int:
        return math.floor(t / self.bucket_s + _EPS)

    def add(self, t: float, n: int = 1) -> None:
        self.add_index(self.index(t), n)

    def add_index(self, idx: int, n: int) -> None:
        self.total += n
        if self.entries and self.entries[-1][0] == idx:
            self.entries[-1][1] += n
        elif not self.entries or self.entries[-1][0] < idx:
            self.entries.append([idx, n])
        else:  # out of order only when merging another ledger in: rare and small
            for entry in self.entries:
                if entry[0] == idx:
                    entry[1] += n
                    return
            self.entries.append([idx, n])
            self.entries = deque(sorted(self.entries))

    def prune(self, now: float, margin_s: float = 0.0) -> None:
        """Forget buckets that can no longer touch any window containing `now` or later."""
        horizon = now - self.window_s - margin_s - self.bucket_s
        while self.entries and (self.entries[0][0] + 1) * self.bucket_s <= horizon:
            self.total -= self.entries.popleft()[1]

    def count_at(self, idx: int) -> int:
        for entry in reversed(self.entries):
            if entry[0] == idx:
                return entry[1]
            if entry[0] < idx:
                break
        return 0

    def earliest_sliding(self, t: float, span_s: float, limit: int) -> float:
        """Earliest time >= t at which one more call keeps every `span_s` window within `limit`."""
        total = self.total
        i = 0
        entries = self.entries
        while True:
            lower = t - span_s
            while i < len(entries) and (entries[i][0] + 1) * self.bucket_s <= lower + _EPS:
                total -= entries[i][1]
                i += 1
            # Entries after t are slots already reserved ahead: they still count against t.
            if total < limit:
                return t
            t = (entries[i][0] + 1) * self.bucket_s + span_s

    def to_data(self) -> list[list[int]]:
        return [list(e) for e in self.entries]

    @classmethod
    def from_data(cls, window_s: int, aligned: bool, data: Iterable[Iterable[int]]) -> Ledger:
        ledger = cls(window_s, aligned)
        for idx, count in sorted((int(i), int(c)) for i, c in data):
            ledger.add_index(idx, count)
        return ledger

    def seeded_from(self, other: Ledger) -> None:
        """Take a coarser ledger's counts, each placed at the latest moment its bucket allows."""
        for idx, count in other.entries:
            end_t = (idx + 1) * other.bucket_s - _EPS * other.bucket_s
            self.add(end_t, count)


@dataclass
class Advisory:
    """What the API's X-RateLimit-Remaining/Reset headers said: `remaining` calls until `reset_at`."""

    observed_at: float
    reset_at: float
    remaining: int
    used: int = 0


class Usage:
    """Every ledger plus the last reserved slot: the state persisted in the usage item."""

    def __init__(self, ledgers: dict[str, Ledger] | None = None, last_slot: float | None = None):
        self.ledgers: dict[str, Ledger] = ledgers or {}
        self.last_slot = last_slot

    def ensure(self, window_s: int, aligned: bool) -> Ledger:
        key = ledger_key(window_s, aligned)
        if key not in self.ledgers:
            ledger = Ledger(window_s, aligned)
            donors = [lg for lg in self.ledgers.values() if not lg.aligned]
            wider = [lg for lg in donors if lg.window_s >= window_s]
            if wider:  # coarser buckets over a longer span: conservative
                ledger.seeded_from(min(wider, key=lambda lg: lg.window_s))
            elif donors:
                ledger.seeded_from(max(donors, key=lambda lg: lg.window_s))
            self.ledgers[key] = ledger
        return self.ledgers[key]

    def to_json(self) -> str:
        return json.dumps({k: lg.to_data() for k, lg in self.ledgers.items()}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None, last_slot: float | None) -> Usage:
        usage = cls(last_slot=last_slot)
        for key, data in (json.loads(text) if text else {}).items():
            aligned = key.endswith("a")
            usage.ledgers[key] = Ledger.from_data(int(key.rstrip("a")), aligned, data)
        return usage


class Pacer:
    """Hands out send times ('slots') for calls under one quota configuration."""

    def __init__(self, config: QuotaConfig, usage: Usage):
        self.config = config
        self.usage = usage
        for window_s in STANDING_WINDOWS_S:
            usage.ensure(window_s, False)
        self._tiers = [(tier, usage.ensure(tier.window_s, tier.aligned)) for tier in config.tiers]
        finest = config.finest
        self.spacing_s = finest.span_s / finest.limit if finest.limit else math.inf
        self.blocked = any(t.limit == 0 for t in config.tiers)
        self.advisory: Advisory | None = None

    @property
    def rate_per_s(self) -> float:
        """Long-run calls per second under a backlog."""
        if self.blocked:
            return 0.0
        return min(1.0 / self.spacing_s, self.config.binding.rate_per_s)

    def next_slot(self, earliest: float) -> float | None:
        """The earliest time >= `earliest` a call may be sent, or None if a tier's limit is 0."""
        if self.blocked:
            return None
        t = earliest
        if self.usage.last_slot is not None:
            t = max(t, self.usage.last_slot + self.spacing_s)
        t = self._advised(t)
        for _ in range(10_000):
            moved = False
            for tier, ledger in self._tiers:
                allowed = self._tier_earliest(tier, ledger, t)
                if allowed > t + _EPS:
                    t, moved = allowed, True
            if not moved:
                return t
        raise RuntimeError("pacing did not converge")  # pragma: no cover - a bug, not an outcome

    def take(self, slot: float) -> None:
        """Count a call at `slot` (it must come from next_slot)."""
        for window_s in STANDING_WINDOWS_S:
            key = ledger_key(window_s, False)
            if all(ledger is not self.usage.ledgers[key] for _, ledger in self._tiers):
                self.usage.ledgers[key].add(slot)
                self.usage.ledgers[key].prune(slot)
        for tier, ledger in self._tiers:
            ledger.add(slot)
            if tier.aligned and ledger.index(slot + tier.margin_s) != ledger.index(slot):
                ledger.add(slot + tier.margin_s)  # it may arrive in the next period: count it there too
            # Every later slot is >= this one, so buckets that left this window are gone for good.
            ledger.prune(slot, tier.margin_s)
        self.usage.last_slot = slot
        if self.advisory is not None:
            self.advisory.used += 1

    def advise(self, observed_at: float, remaining: int, reset_at: float) -> None:
        """Follow the API's own count (X-RateLimit-*) until it resets."""
        if reset_at > observed_at:
            self.advisory = Advisory(observed_at, reset_at, max(0, remaining))

    def _advised(self, t: float) -> float:
        adv = self.advisory
        if adv is None:
            return t
        if t >= adv.reset_at:
            self.advisory = None
            return t
        if adv.used >= adv.remaining:
            return adv.reset_at
        spacing = (adv.reset_at - adv.observed_at) / max(1, adv.remaining)
        last = self.usage.last_slot
        return max(t, last + spacing) if last is not None else t

    @staticmethod
    def _tier_earliest(tier: Tier, ledger: Ledger, t: float) -> float:
        if not tier.aligned:
            return ledger.earliest_sliding(t, tier.span_s, tier.limit)
        for _ in range(1000):
            here, there = ledger.index(t), ledger.index(t + tier.margin_s)
            if ledger.count_at(here) >= tier.limit:
                t = (here + 1) * ledger.bucket_s
            elif there != here and ledger.count_at(there) >= tier.limit:
                t = (there + 1) * ledger.bucket_s
            else:
                return t
        return t


def usage_by_tier(config: QuotaConfig, usage: Usage, now: float) -> dict[str, dict[str, int]]:
    """Calls counted in each tier's current window (sliding: the last window_s; aligned: this period)."""
    report: dict[str, dict[str, int]] = {}
    for tier in config.tiers:
        ledger = usage.ensure(tier.window_s, tier.aligned)
        if tier.aligned:
            used = ledger.count_at(ledger.index(now))
        else:
            lower = now - tier.window_s
            used = sum(c for i, c in ledger.entries if (i + 1) * ledger.bucket_s > lower and i * ledger.bucket_s <= now)
        report[tier.name] = {"used": used, "limit": tier.limit}
    return report
