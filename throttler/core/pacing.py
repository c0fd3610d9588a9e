"""Pacing (pure): when may the next call be sent so that no window of any tier is ever exceeded?

Calls (cost units) are counted in ledgers of time buckets, one per window length: 400 buckets per
sliding window (a bucket is 0.25% of the window) or one bucket per calendar period for aligned tiers.
A call of cost c may be sent at `t` when, for every tier, the buckets touching `(t - window - margin, t]`
hold at most `limit - c` units; counting a partly covered bucket whole errs on the safe side. Calls are
also spaced evenly at the finest tier's rate. Ledgers grow only at the right (slots are monotonic), so
each decision is O(1) amortised, whatever the backlog or the longest window.

A `Meter` is one scope's state (the stage's, or one key's): its ledgers, its last slot, its learned
limits and what the API said. The `Pacer` answers for a call of a key: it needs room in the stage's
meter and in the key's meter at once.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from throttler.core.quotas import DEFAULT_MARGIN_CAP_S, DEFAULT_MARGIN_FRACTION, MIN_MARGIN_MS, QuotaConfig, Tier

BUCKETS_PER_WINDOW = 400
# Ledgers the stage keeps whatever its configuration, so that a tier an operator adds later starts from
# a conservative count of the calls already made instead of from zero (the longest is the longest tier).
STANDING_WINDOWS_S = (60, 3600, 86400, 7 * 86400, 31 * 86400)
RECENT_SLOTS_KEPT = 20_000  # for counting calls sent after the call an API header describes
API_POLICY_TTL_S = 120.0  # the API's policy stays in force this long after a response last stated it
MAX_API_POLICIES = 8  # policies the API stated that are followed at once (each has a ledger in the usage item)
MAX_API_RESET_S = 86400.0
STEADY_WINDOW_S = 10  # a key's calls are spaced evenly over its windows up to this long (Scope.steady)
SLOT_RATE_WINDOW_S = 3600  # Scope.slot_rate_per_s: the windows that space a scope's slots over minutes
_EPS = 1e-9


def ledger_key(window_s: int, aligned: bool) -> str:
    return f"{window_s}{'a' if aligned else ''}"


def default_margin_s(window_s: float) -> float:
    return max(MIN_MARGIN_MS / 1000.0, min(DEFAULT_MARGIN_CAP_S, window_s * DEFAULT_MARGIN_FRACTION))


class Ledger:
    """Units per time bucket for one window length."""

    __slots__ = ("aligned", "bucket_s", "entries", "rows", "total", "window_s")

    def __init__(self, window_s: int, aligned: bool = False):
        self.window_s = window_s
        self.aligned = aligned
        self.bucket_s = float(window_s) if aligned else window_s / BUCKETS_PER_WINDOW
        self.entries: deque[list[int]] = deque()  # [bucket index, units], ascending
        self.total = 0
        # The JSON of every entry but the last, in order (None: to be written again). Entries change only at the
        # right, where slots are reserved, and leave at the left: the usage item is written after every batch, and
        # encoding hundreds of entries each time cost the throttler more than planning them.
        self.rows: deque[str] | None = deque()

    def index(self, t: float) -> int:
        return math.floor(t / self.bucket_s + _EPS)

    def add(self, t: float, n: int = 1) -> None:
        self.add_index(math.floor(t / self.bucket_s + _EPS), n)  # self.index(t), inline: once per ledger per call

    def add_index(self, idx: int, n: int) -> None:
        entries = self.entries
        last = entries[-1] if entries else None
        if last is not None and last[0] == idx:
            before = last[1]
            last[1] = max(0, before + n)
            self.total += last[1] - before
        elif last is None or last[0] < idx:
            if n > 0:
                self._append(idx, n)
        else:  # out of order: a cost correction, or a ledger seeded from another: rare and small
            self.rows = None
            for entry in entries:
                if entry[0] == idx:
                    before = entry[1]
                    entry[1] = max(0, before + n)
                    self.total += entry[1] - before
                    return
            if n > 0:
                entries.append([idx, n])
                self.total += n
                self.entries = deque(sorted(entries))

    def _append(self, idx: int, n: int) -> None:
        entries = self.entries
        if entries and self.rows is not None:
            last = entries[-1]
            self.rows.append(f"[{last[0]},{last[1]}]")  # it can no longer change in order
        entries.append([idx, n])
        self.total += n

    def count(self, slot: float, n: int, margin_s: float = 0.0) -> None:
        """A reserved call: `add(slot, n)`, then `prune(slot, margin_s)` (slots only move on), in one call: it is
        made for each ledger of each call planned."""
        idx = math.floor(slot / self.bucket_s + _EPS)
        entries = self.entries
        if n > 0 and entries and entries[-1][0] == idx:
            entries[-1][1] += n
            self.total += n
        elif n > 0 and (not entries or entries[-1][0] < idx):
            self._append(idx, n)
        else:
            self.add_index(idx, n)
            entries = self.entries  # an out-of-order add may have sorted them into a new deque
        # prune(slot, margin_s), inline
        horizon, bucket_s, rows = slot - self.window_s - margin_s - self.bucket_s, self.bucket_s, self.rows
        while (entries[0][0] + 1) * bucket_s <= horizon if entries else False:
            self.total -= entries.popleft()[1]
            if rows:
                rows.popleft()

    def prune(self, now: float, margin_s: float = 0.0) -> None:
        """Forget buckets that can no longer touch any window containing `now` or later."""
        horizon = now - self.window_s - margin_s - self.bucket_s
        entries, rows = self.entries, self.rows
        while entries and (entries[0][0] + 1) * self.bucket_s <= horizon:
            self.total -= entries.popleft()[1]
            if rows:  # rows holds all entries but the last: empty once one is left
                rows.popleft()

    def to_json(self) -> str:
        """The entries as compact JSON (what `json.dumps(list(self.entries), separators=(",", ":"))` writes)."""
        entries = self.entries
        if not entries:
            return "[]"
        if self.rows is None:
            self.rows = deque(f"[{i},{n}]" for i, n in itertools.islice(entries, len(entries) - 1))
        last = entries[-1]
        return "[" + ",".join((*self.rows, f"[{last[0]},{last[1]}]")) + "]"

    def count_at(self, idx: int) -> int:
        for entry in reversed(self.entries):
            if entry[0] == idx:
                return entry[1]
            if entry[0] < idx:
                break
        return 0

    def used(self, now: float, span_s: float) -> int:
        """Units in the buckets touching (now - span, now]."""
        lower = now - span_s
        entries, bucket_s = self.entries, self.bucket_s
        if not entries:
            return 0
        if (entries[0][0] + 1) * bucket_s > lower and entries[-1][0] * bucket_s <= now:
            return self.total  # the buckets are in order: when the first and the last touch the span, all do
        return sum(c for i, c in entries if (i + 1) * bucket_s > lower and i * bucket_s <= now)

    def earliest_sliding(self, t: float, span_s: float, limit: int, cost: int = 1) -> float:
        """Earliest time >= t at which `cost` more units keep every `span_s` window within `limit`."""
        if cost > limit:
            return math.inf
        total = self.total
        i = 0
        entries = self.entries
        bucket_s = self.bucket_s
        room = limit - cost
        while True:
            lower = t - span_s
            while i < len(entries) and (entries[i][0] + 1) * bucket_s <= lower + _EPS:
                total -= entries[i][1]
                i += 1
            # Entries after t are slots already reserved ahead: they still count against t.
            if total <= room:
                return t
            t = (entries[i][0] + 1) * bucket_s + span_s

    def earliest_aligned(self, t: float, margin_s: float, limit: int, cost: int = 1) -> float:
        """Calendar periods: the call's period (and the next one, if it may arrive there) must have room."""
        if cost > limit:
            return math.inf
        for _ in range(1000):
            here, there = self.index(t), self.index(t + margin_s)
            if self.count_at(here) + cost > limit:
                t = (here + 1) * self.bucket_s
            elif there != here and self.count_at(there) + cost > limit:
                t = (there + 1) * self.bucket_s
            else:
                return t
        return t

    @classmethod
    def from_data(cls, window_s: int, aligned: bool, data: Iterable[Iterable[int]]) -> Ledger:
        ledger = cls(window_s, aligned)
        for idx, count in sorted((int(i), int(c)) for i, c in data):
            if count > 0:
                ledger.add_index(idx, count)
        return ledger

    def seeded_from(self, other: Ledger) -> None:
        """Take another ledger's counts, each placed at the latest moment its bucket allows (conservative
        when `other` covers at least as long a window)."""
        for idx, count in other.entries:
            self.add((idx + 1) * other.bucket_s - _EPS * other.bucket_s, count)


# ------------------------------------------------------------------------------------------- learned limits
@dataclass
class Learned:
    """An `auto:MAX` tier's limit: it rises slowly while calls succeed and falls sharply on a 429.

    After a 429 at limit L the value drops to 70% of L, comes back quickly to L - 1 (the highest limit
    that has not failed), holds there for `probe_windows` windows, then tries L again; each failed try
    doubles the wait (at most an hour's worth of windows), so a steady hidden limit draws fewer and
    fewer 429s. Without any 429 yet it rises by 10% a window.
    """

    value: float
    bad: int | None = None  # the lowest limit that drew a 429
    changed_at: float = 0.0
    probe_windows: int = 60
    history: list[list[Any]] = field(default_factory=list)  # [t, limit, why], newest last

    HISTORY = 10

    @property
    def limit(self) -> int:
        return max(1, math.floor(self.value + 1e-9))

    def _note(self, now: float, why: str) -> None:
        self.history.append([round(now, 3), self.limit, why])
        del self.history[: -self.HISTORY]

    def on_success(
        self,
        now: float,
        window_s: float,
        ceiling: int,
        in_use: bool,
        sent_at: float | None = None,
        planned_at: float | None = None,
    ) -> bool:
        """A success of a call planned under the current limit and sent at least a window after it came into
        force (so a whole window at this limit passed without a 429): step up. True if it changed."""
        if planned_at is not None and planned_at < self.changed_at:
            return False
        if (sent_at if sent_at is not None else now) - self.changed_at < window_s or not in_use:
            return False
        before = self.limit
        if self.bad is not None and self.limit >= self.bad:
            self.bad = None  # a try at the failed limit held for a whole window: the API's limit rose
        if self.bad is None:
            self.value = max(self.value * 1.1, self.value + 1)
        elif self.limit < self.bad - 1:
            target = self.bad - 1
            self.value = min(float(target), self.value + max(1.0, (target - self.value) / 2))
        elif now - self.changed_at >= window_s * self.probe_windows:
            self.value = float(self.bad)  # try the limit that failed, once more
        else:
            return False
        self.value = min(self.value, float(ceiling))
        self.changed_at = now
        if self.limit != before:
            self._note(now, "raised")
        return True

    def on_429(self, now: float, limit_in_force: int, sent_at: float | None = None) -> None:
        if sent_at is not None and sent_at < self.changed_at:
            return  # sent before the last change: this burst of 429s has already lowered the limit
        if self.bad is not None and limit_in_force >= self.bad:
            self.probe_windows = min(3600, self.probe_windows * 2)  # the same limit failed again: wait longer
        elif self.bad is not None:
            self.probe_windows = 60  # a new, lower ceiling: the API's limit fell
        self.bad = max(1, limit_in_force)
        self.value = max(1.0, limit_in_force * 0.7)
        self.changed_at = now
        self._note(now, "429")

    def to_data(self) -> dict[str, Any]:
        return {"v": self.value, "b": self.bad, "t": self.changed_at, "p": self.probe_windows, "h": self.history}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Learned:
        return cls(float(data["v"]), data.get("b"), float(data.get("t", 0.0)), int(data.get("p", 60)), list(data.get("h", [])))


# ------------------------------------------------------------------------------------------- the API's word
@dataclass
class ApiPolicy:
    """A limit the API stated (`q` per `w` seconds): a temporary tier while the API keeps stating it."""

    limit: int
    window_s: float
    until: float


@dataclass
class ApiBudget:
    """`remaining` units until `reset_at`, as the API counted them when it answered the call sent at
    `observed_sent_at`; `used` counts the units reserved since that call."""

    remaining: int
    reset_at: float
    observed_sent_at: float
    used: int = 0
    spread: bool = True  # spread what is left until the reset (no policy stated: slow down before a 429)

    def exhausted(self, t: float, cost: int = 1) -> bool:
        """Before the reset, `cost` more units would go past what the API said was left."""
        return t < self.reset_at and self.used + cost > self.remaining


@dataclass
class ApiState:
    policies: list[ApiPolicy] = field(default_factory=list)
    budget: ApiBudget | None = None
    said_at: float | None = None
    summary: str = ""
    # 429s in a row with no success between them, across runs: a storm of short Retry-Afters backs off beyond
    # them, so runs stop receiving the waiting jobs again and again (SQS's redrive counts every receive).
    streak: int = 0
    streak_at: float = 0.0  # the latest 429 counted

    def note_429(self, at: float, sent_at: float | None = None) -> int:
        """Count a 429 received at `at` for a call sent at `sent_at`: once per try after the last one counted (a
        burst of 429s to calls sent before the first came back is one)."""
        if (sent_at if sent_at is not None else at) > self.streak_at:
            self.streak, self.streak_at = self.streak + 1, at
        return self.streak

    def active_policies(self, now: float) -> list[ApiPolicy]:
        return [p for p in self.policies if p.until > now]

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.policies:
            data["p"] = [[p.limit, p.window_s, p.until] for p in self.policies]
        if self.budget is not None:
            b = self.budget
            data["b"] = [b.remaining, b.reset_at, b.observed_sent_at, b.used, int(b.spread)]
        if self.said_at is not None:
            data["t"], data["s"] = self.said_at, self.summary
        if self.streak:
            data["k"] = [self.streak, self.streak_at]
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ApiState:
        state = cls([ApiPolicy(int(p[0]), float(p[1]), float(p[2])) for p in data.get("p", [])])
        if data.get("b"):
            r, reset, sent, used, *spread = data["b"]
            state.budget = ApiBudget(int(r), float(reset), float(sent), int(used), bool(spread[0]) if spread else True)
        if data.get("t") is not None:
            state.said_at, state.summary = float(data["t"]), str(data.get("s", ""))
        if data.get("k"):
            state.streak, state.streak_at = int(data["k"][0]), float(data["k"][1])
        return state


# ------------------------------------------------------------------------------------------- one scope
@dataclass
class Limit:
    """One window in force for a scope: a configured tier (its limit resolved) or the API's policy."""

    name: str
    window_s: int
    span_s: float
    limit: int
    aligned: bool
    margin_s: float
    ledger: Ledger
    learned: bool = False  # an auto tier: never below one call per window, whatever the call's cost


class _InForce:
    """The limits in force for one state of the learned limits and the API's policies, with what pacing derives
    from them alone: built once per change of that state (the planner asks several times per slot)."""

    __slots__ = ("counted", "key", "learned", "ledger_ids", "limits", "lowest", "rate_per_s", "spacing_s")

    def __init__(self, key: tuple[Any, ...], limits: list[Limit], steady: bool = False):
        self.key = key
        self.limits = limits
        self.spacing_s = Scope._spacing(limits, steady)
        self.learned = any(lim.learned for lim in limits)
        self.lowest = min((lim.limit for lim in limits), default=None)
        self.ledger_ids = frozenset(id(lim.ledger) for lim in limits)
        # Each ledger once (a configured tier and the API's policy of the same window share one): the first
        # limit's period rule, and pruned at the widest margin of the limits counted in it.
        counted: dict[int, tuple[Ledger, bool, float, float]] = {}
        for lim in limits:
            if id(lim.ledger) not in counted:
                widest = max(m.margin_s for m in limits if m.ledger is lim.ledger)
                counted[id(lim.ledger)] = (lim.ledger, lim.aligned, lim.margin_s, widest)
        self.counted = tuple(counted.values())
        if not limits:
            self.rate_per_s = math.inf
        elif self.lowest is not None and self.lowest <= 0:
            self.rate_per_s = 0.0
        else:
            self.rate_per_s = min(min(lim.limit / lim.span_s for lim in limits), 1.0 / self.spacing_s)


_NOTHING_LEARNED_OR_SAID = ((), ())  # the key of the limits in force without auto tiers or the API's policies


class Meter:
    """One scope's pacing state: ledgers, the last slot and its cost, learned limits, the API's word."""

    def __init__(self, ledgers: dict[str, Ledger] | None = None):
        self.ledgers: dict[str, Ledger] = ledgers or {}
        self.last_slot: float | None = None
        self.last_cost = 1
        self.learned: dict[str, Learned] = {}
        self.api = ApiState()
        self.recent: deque[tuple[float, int]] = deque(maxlen=RECENT_SLOTS_KEPT)
        self.dirty = False

    def ensure(self, window_s: int, aligned: bool, donors: Iterable[Ledger] = ()) -> Ledger:
        """The ledger of a window length, created on first use and seeded from the narrowest ledger that
        covers at least that long (kept for every window in use, so its counts are current)."""
        key = ledger_key(window_s, aligned)
        ledger = self.ledgers.get(key)
        if ledger is None:
            ledger = Ledger(window_s, aligned)
            pool = [lg for lg in (*self.ledgers.values(), *donors) if not lg.aligned]
            wider = [lg for lg in pool if lg.window_s >= window_s]
            if wider:
                ledger.seeded_from(min(wider, key=lambda lg: lg.window_s))
            elif pool:  # nothing covers that long: the longest we have (documented limit for keys)
                ledger.seeded_from(max(pool, key=lambda lg: lg.window_s))
            self.ledgers[key] = ledger
        return ledger

    def forget_except(self, keep: set[str]) -> None:
        """Drop the ledgers of windows no longer in use: a stale count must never seed a new tier."""
        for key in [k for k in self.ledgers if k not in keep]:
            del self.ledgers[key]
            self.dirty = True

    def learned_for(self, tier: Tier) -> Learned:
        found = self.learned.get(tier.name)
        if found is None:
            found = self.learned[tier.name] = Learned(max(1.0, (tier.auto_max or 4) / 4))
        return found

    def to_json(self) -> str:
        # {"l": {window: entries, ...}, the rest}: each ledger writes its own entries (it keeps them encoded).
        data: dict[str, Any] = {}
        if self.last_slot is not None:
            data["s"], data["c"] = self.last_slot, self.last_cost
        if self.learned:
            data["a"] = {name: lv.to_data() for name, lv in self.learned.items()}
        api = self.api.to_data()
        if api:
            data["api"] = api
        ledgers = ",".join(f"{json.dumps(k)}:{lg.to_json()}" for k, lg in self.ledgers.items())
        rest = json.dumps(data, separators=(",", ":"))
        return '{"l":{' + ledgers + "}" + ("," + rest[1:] if data else "}")

    @classmethod
    def from_json(cls, text: str | None) -> Meter:
        meter = cls()
        if not text:
            return meter
        data = json.loads(text)
        for key, entries in data.get("l", {}).items():
            meter.ledgers[key] = Ledger.from_data(int(key.rstrip("a")), key.endswith("a"), entries)
        if data.get("s") is not None:
            meter.last_slot, meter.last_cost = float(data["s"]), int(data.get("c", 1))
        meter.learned = {name: Learned.from_data(v) for name, v in data.get("a", {}).items()}
        meter.api = ApiState.from_data(data.get("api", {}))
        return meter


class Scope:
    """A meter bound to the tiers that apply to it under one configuration."""

    def __init__(
        self,
        meter: Meter,
        tiers: tuple[Tier, ...],
        standing: tuple[int, ...] = (),
        donors: Iterable[Ledger] = (),
        steady: bool = False,
    ):
        self.meter = meter
        # A key's calls are spaced at the rate of its slowest window of up to STEADY_WINDOW_S, not in bursts at
        # its finest: keys bursting through `second` together would all wait out their `5s` at once and leave
        # the stage idle (test_per_key_planning). Longer windows (a minute, a day) do not slow a key's bursts:
        # a light key's few jobs still go at its finest rate. The stage's own calls burst as its finest tier allows.
        self.steady = steady
        self.tiers = tiers
        self.standing = standing
        donor_list = list(donors)
        for window_s in standing:
            meter.ensure(window_s, False, donor_list)
        self._configured = [(t, meter.ensure(t.window_s, t.aligned, donor_list)) for t in tiers]
        keep = {ledger_key(w, False) for w in standing} | {ledger_key(t.window_s, t.aligned) for t in tiers}
        keep |= {ledger_key(int(p.window_s), False) for p in meter.api.policies}
        meter.forget_except(keep)
        self._auto = [t for t in tiers if t.limit is None]
        self._standing_keys = tuple(ledger_key(w, False) for w in standing)
        # The limits in force only change with a learned limit or the API's policies: built once per change.
        self._in_force_cache: _InForce | None = None

    def limits(self, now: float) -> list[Limit]:
        """Every window in force: configured tiers (learned limits resolved) and the API's policies."""
        return self._in_force(now).limits

    def _in_force(self, now: float) -> _InForce:
        api = self.meter.api
        policies = api.active_policies(now) if api.policies else []
        if self._auto or policies:
            key = (tuple(self.meter.learned_for(t).limit for t in self._auto), tuple((p.limit, p.window_s) for p in policies))
        else:
            key = _NOTHING_LEARNED_OR_SAID
        cached = self._in_force_cache
        if cached is not None and cached.key == key:
            return cached
        self._in_force_cache = _InForce(key, self._build_limits(policies), self.steady)
        return self._in_force_cache

    def _build_limits(self, policies: list[ApiPolicy]) -> list[Limit]:
        out = []
        margins = [tier.margin_s for tier, _ in self._configured]
        for tier, ledger in self._configured:
            if tier.limit is not None:
                limit = tier.limit
            else:  # a learned value from before MAX was lowered never counts above the new MAX
                limit = min(self.meter.learned_for(tier).limit, tier.auto_max or 0)
            out.append(Limit(tier.name, tier.window_s, tier.span_s, limit, tier.aligned, tier.margin_s, ledger,
                             learned=tier.limit is None))
        strictest: dict[int, int] = {}  # several policies of one window: the stricter one wins
        for policy in policies:
            window_s = max(1, math.ceil(policy.window_s))
            strictest[window_s] = min(strictest.get(window_s, policy.limit), policy.limit)
        for window_s, limit in sorted(strictest.items()):
            # At least the stage's own margin (its finest tier's: margin_ms when set): the API's window sees the
            # same jitter as ours.
            margin = max(default_margin_s(window_s), min(margins, default=0.0))
            ledger = self.meter.ensure(window_s, False)
            out.append(Limit(f"api:{window_s}s", window_s, window_s + margin, limit, False, margin, ledger))
        return out

    def spacing_s(self, limits: list[Limit]) -> float:
        """Seconds per unit at the finest window's rate (even spacing); 0 without limits."""
        cached = self._in_force_cache
        if cached is not None and limits is cached.limits:
            return cached.spacing_s
        return self._spacing(limits, self.steady)

    @staticmethod
    def _spacing(limits: list[Limit], steady: bool = False) -> float:
        if not limits:
            return 0.0
        if any(lim.limit <= 0 for lim in limits):
            return math.inf
        short = [lim for lim in limits if lim.window_s <= STEADY_WINDOW_S]
        if steady and short:
            return max(lim.span_s / lim.limit for lim in short)
        finest = min(limits, key=lambda lim: (lim.window_s, lim.limit))
        return finest.span_s / finest.limit

    def earliest(self, t: float, cost: int) -> float:
        """The earliest time >= t this scope allows a call of `cost` units (inf: never, at these limits)."""
        force = self._in_force(t)
        limits = force.limits
        if force.learned:
            limits = [replace(lim, limit=max(lim.limit, cost)) if lim.learned else lim for lim in limits]
            if any(lim.limit < cost for lim in limits):
                return math.inf
        elif force.lowest is not None and cost > force.lowest:
            return math.inf
        meter = self.meter
        if meter.last_slot is not None:
            spacing_s = self._spacing(limits, self.steady) if force.learned else force.spacing_s
            t = max(t, meter.last_slot + meter.last_cost * spacing_s)
        t = self._api_budget(t, cost)
        for _ in range(10_000):
            moved = False
            for lim in limits:
                if lim.ledger.total + cost <= lim.limit:
                    continue  # the whole ledger has room for it: so has every window (and period) it holds
                if lim.aligned:
                    allowed = lim.ledger.earliest_aligned(t, lim.margin_s, lim.limit, cost)
                else:
                    allowed = lim.ledger.earliest_sliding(t, lim.span_s, lim.limit, cost)
                if allowed > t + _EPS:
                    if math.isinf(allowed):
                        return math.inf
                    t, moved = allowed, True
            if not moved:
                return t
        raise RuntimeError("pacing did not converge")  # pragma: no cover - a bug, not an outcome

    def _api_budget(self, t: float, cost: int) -> float:
        budget = self.meter.api.budget
        if budget is None or t >= budget.reset_at:
            return t
        if budget.exhausted(t, cost):
            return budget.reset_at + default_margin_s(1)  # nothing left until the reset, policy or not
        if self.meter.api.active_policies(t):
            # The API stated its policy (q per w): that paces. Its remaining count and reset are only upper
            # bounds (the draft's `t` is whole seconds), which would hold calls back a second at every turn.
            return t
        if not budget.spread:
            return t  # the API stated its policy: that paces; what is left is only a bound
        # Spread what is left until the reset, so the API's count runs out no sooner than it resets.
        spacing = (budget.reset_at - budget.observed_sent_at) / max(1, budget.remaining)
        last = self.meter.last_slot
        return max(t, last + spacing) if last is not None else t

    def take(self, slot: float, cost: int) -> None:
        meter = self.meter
        force = self._in_force(slot)
        for key in self._standing_keys:
            ledger = meter.ledgers[key]
            if id(ledger) not in force.ledger_ids:
                ledger.count(slot, cost)
        for ledger, aligned, margin_s, widest_margin_s in force.counted:
            if aligned and ledger.index(slot + margin_s) != ledger.index(slot):
                ledger.add(slot, cost)
                ledger.add(slot + margin_s, cost)  # it may arrive in the next period: count it there too
                ledger.prune(slot, widest_margin_s)
            else:
                ledger.count(slot, cost, widest_margin_s)
        meter.last_slot, meter.last_cost = slot, cost
        meter.recent.append((slot, cost))
        if meter.api.budget is not None:
            meter.api.budget.used += cost
        meter.dirty = True

    def correct(self, slot: float, delta: int) -> None:
        """The API says a call used `delta` more (or fewer) units than reserved: count it where it went. An
        upward correction counts at most the largest limit in force (a hostile or broken header cannot fill
        the month's ledger)."""
        ceiling = max((lim.limit for lim in self.limits(slot)), default=0)
        delta = min(delta, max(ceiling, 1))
        if delta == 0:
            return
        for ledger in self.meter.ledgers.values():
            ledger.add(slot, delta)
        self.meter.dirty = True

    def rate_per_s(self, now: float) -> float:
        return self._in_force(now).rate_per_s

    def slot_rate_per_s(self, now: float) -> float:
        """Calls per second that its windows of up to an hour allow: how far apart its slots come over minutes (a
        day tier spaces nothing until it is spent; then no slot comes for hours)."""
        force = self._in_force(now)
        if force.rate_per_s <= 0 or math.isinf(force.rate_per_s):
            return force.rate_per_s
        hourly = [lim.limit / lim.span_s for lim in force.limits if lim.window_s <= SLOT_RATE_WINDOW_S]
        return min([*hourly, 1.0 / force.spacing_s]) if hourly else force.rate_per_s

    def burst_rate_per_s(self, now: float) -> float:
        """Calls per second while the finest window has room (a minute tier may go at the second tier's rate
        for a while, then wait); inf without limits."""
        spacing = self._in_force(now).spacing_s
        return 1.0 / spacing if spacing > 0 else math.inf

    def wait_for(self, now: float, calls: int) -> float:
        """About how long until `calls` more calls can all have gone (how long a message received now may
        wait): at the fastest rate, and for each window whose room they exceed, whole windows more."""
        rate = self.rate_per_s(now)
        if rate <= 0:
            return math.inf
        longest = calls / rate if not math.isinf(rate) else 0.0
        for lim in self.limits(now):
            ledger = lim.ledger
            # Slots already reserved ahead of now count too: they will use this window's room first.
            used = ledger.count_at(ledger.index(now)) if lim.aligned else ledger.used(now + lim.span_s, 2 * lim.span_s)
            over = calls - max(0, lim.limit - used)
            if over > 0:
                longest = max(longest, lim.span_s * math.ceil(over / lim.limit))
        return longest

    def usage(self, now: float) -> dict[str, dict[str, Any]]:
        """Units counted in each window's current span (aligned: this period), with the limit in force."""
        report: dict[str, dict[str, Any]] = {}
        for lim in self.limits(now):
            used = lim.ledger.count_at(lim.ledger.index(now)) if lim.aligned else lim.ledger.used(now, lim.window_s)
            report[lim.name] = {"used": used, "limit": lim.limit, "window_s": lim.window_s}
        return report


# ------------------------------------------------------------------------------------------- the pacer
class Pacer:
    """Hands out send times ('slots') under one quota configuration, for the stage and its keys.

    `key_meter(key)` gives a key's meter (the run loads it from the state table before planning).
    """

    def __init__(self, config: QuotaConfig, stage_meter: Meter, key_meter: Callable[[str], Meter] | None = None):
        self.config = config
        self.stage = Scope(stage_meter, config.tiers, _standing(config))
        overrides = (t for quota in config.keys.values() for t in quota.tiers)
        self._learns = any(t.is_auto for t in (*config.tiers, *config.per_key, *overrides))  # an auto tier anywhere
        self._key_meter = key_meter
        self._key_scopes: dict[str, Scope] = {}

    def needs_key_meter(self, key: str | None) -> bool:
        return key is not None and (bool(self.config.key_quota(key).tiers) or self.config.signals_scope == "key")

    def key_scope(self, key: str | None) -> Scope | None:
        if not self.needs_key_meter(key) or self._key_meter is None:
            return None
        assert key is not None
        scope = self._key_scopes.get(key)
        if scope is None:
            scope = self._key_scopes[key] = Scope(self._key_meter(key), self.config.key_quota(key).tiers, steady=True)
        return scope

    def forget_key(self, key: str) -> None:
        self._key_scopes.pop(key, None)

    def signal_scope(self, key: str | None) -> Scope:
        """Where the API's word about a call of this key is kept (signals_scope=key: the key's meter)."""
        if self.config.signals_scope == "key":
            scope = self.key_scope(key)
            if scope is not None:
                return scope
        return self.stage

    def next_slot(self, earliest: float, key: str | None = None, cost: int = 1) -> float | None:
        """The earliest time >= `earliest` a call of this key and cost may be sent; None: never at these limits."""
        return self.next_slot_and_stage(earliest, key, cost)[0]

    def next_slot_and_stage(self, earliest: float, key: str | None = None, cost: int = 1) -> tuple[float | None, float]:
        """`next_slot`, and the earliest time >= `earliest` the stage alone allows (the planner sets a key aside
        when its own tiers hold the call later than that): one pass instead of asking the stage twice."""
        t = earliest
        key_scope = self.key_scope(key)
        stage_alone: float | None = None
        for _ in range(10_000):
            t_stage = self.stage.earliest(t, cost)
            if stage_alone is None:
                stage_alone = t_stage
            if math.isinf(t_stage):
                return None, stage_alone
            if key_scope is None:
                return t_stage, stage_alone
            t_key = key_scope.earliest(t_stage, cost)
            if math.isinf(t_key):
                return None, stage_alone
            if t_key <= t_stage + _EPS:
                return t_stage, stage_alone
            t = t_key
        raise RuntimeError("pacing did not converge")  # pragma: no cover

    def take(self, slot: float, key: str | None = None, cost: int = 1) -> None:
        """Count a call at `slot` (it must come from next_slot for the same key and cost)."""
        self.stage.take(slot, cost)
        key_scope = self.key_scope(key)
        if key_scope is not None:
            key_scope.take(slot, cost)

    def correct(self, slot: float, key: str | None, delta: int) -> None:
        self.stage.correct(slot, delta)
        key_scope = self.key_scope(key)
        if key_scope is not None:
            key_scope.correct(slot, delta)

    def release(self, slot: float, key: str | None, cost: int) -> None:
        """A reserved call that was never sent (skipped): its units no longer count. (The next slots still
        follow the last reserved one: a slot placed before it could meet windows whose older counts are
        already pruned.)"""
        self.correct(slot, key, -cost)
        api = self.signal_scope(key).meter.api
        if api.budget is not None and slot > api.budget.observed_sent_at:
            api.budget.used = max(0, api.budget.used - cost)

    def rate_per_s(self, now: float, key: str | None = None) -> float:
        rate = self.stage.rate_per_s(now)
        key_scope = self.key_scope(key)
        return min(rate, key_scope.rate_per_s(now)) if key_scope is not None else rate

    def slot_rate_per_s(self, now: float, key: str | None = None) -> float:
        """How many slots a second this key gets over minutes (see Scope.slot_rate_per_s)."""
        rate = self.stage.slot_rate_per_s(now)
        key_scope = self.key_scope(key)
        return min(rate, key_scope.slot_rate_per_s(now)) if key_scope is not None else rate

    # -------------------------------------------------------------------------------- what calls taught
    def observe_success(self, now: float, key: str | None, sent_at: float | None = None, planned_at: float | None = None) -> None:
        """Raise learned limits that have had a window of successes in use."""
        if not self._learns:
            return  # no auto tier anywhere: nothing to raise (asked for every success)
        for scope in (self.stage, self.key_scope(key)):
            if scope is None:
                continue
            for tier in scope.tiers:
                if tier.is_auto:
                    learned = scope.meter.learned_for(tier)
                    ledger = scope.meter.ensure(tier.window_s, tier.aligned)
                    # The ledger holds the window up to the last reserved slot (earlier buckets are pruned).
                    latest = max(now, scope.meter.last_slot or now)
                    in_use = ledger.used(latest, tier.span_s) >= learned.limit  # the window was used in full
                    if learned.on_success(now, tier.span_s, tier.ceiling, in_use, sent_at, planned_at):
                        scope.meter.dirty = True

    def observe_429(self, now: float, key: str | None, sent_at: float | None = None) -> float | None:
        """Lower learned limits after a 429; returns the longest window of an auto tier that applies (a 429
        without Retry-After pauses for at most that), or None when no auto tier applies."""
        longest: float | None = None
        for scope in (self.stage, self.key_scope(key)):
            if scope is None:
                continue
            limits = {lim.name: lim.limit for lim in scope.limits(now)}
            for tier in scope.tiers:
                if tier.is_auto:
                    scope.meter.learned_for(tier).on_429(now, limits[tier.name], sent_at)
                    scope.meter.dirty = True
                    longest = max(longest or 0.0, float(tier.window_s))
        return longest

    def observe_api(self, now: float, key: str | None, sent_at: float, word: Any) -> None:
        """Follow what the API said about its limits (a throttler.core.ratelimit.ApiWord) until it resets."""
        scope = self.signal_scope(key)
        api = scope.meter.api
        changed = False
        for policy in getattr(word, "policies", ()) or ():
            limit, window_s = int(policy.limit), float(policy.window_s)
            if limit < 0 or not 0 < window_s <= 31 * 86400:
                continue
            found = next((p for p in api.policies if p.window_s == window_s and p.limit == limit), None)
            if found is None and len(api.active_policies(now)) >= MAX_API_POLICIES:
                continue  # an API naming ever new windows cannot grow the usage item without bound
            if found is None:
                api.policies.append(ApiPolicy(limit, window_s, now + max(API_POLICY_TTL_S, 2 * window_s)))
            else:
                found.limit, found.until = limit, now + max(API_POLICY_TTL_S, 2 * window_s)
            changed = True
        remaining, reset_at = getattr(word, "remaining", None), getattr(word, "reset_at", None)
        if remaining is not None and reset_at is not None and now < reset_at <= now + MAX_API_RESET_S:
            current = api.budget
            if current is None or current.observed_sent_at <= sent_at or now >= current.reset_at:
                used = sum(c for s, c in scope.meter.recent if s > sent_at)
                policies = bool(getattr(word, "policies", ()))
                api.budget = ApiBudget(max(0, int(remaining)), float(reset_at), sent_at, used, spread=not policies)
                changed = True
        if changed:
            api.said_at = now
            describe = getattr(word, "describe", None)
            api.summary = describe() if callable(describe) else ""
            scope.meter.dirty = True

    def expire(self, now: float) -> None:
        """Forget the API's word that no longer applies."""
        for scope in (self.stage, *self._key_scopes.values()):
            api = scope.meter.api
            if api.budget is not None and now >= api.budget.reset_at:
                api.budget = None
                scope.meter.dirty = True
            alive = api.active_policies(now)
            if len(alive) != len(api.policies):
                api.policies = alive
                scope.meter.dirty = True


def _standing(config: QuotaConfig) -> tuple[int, ...]:
    """Standing windows of the stage: the fixed ones plus every window any tier (stage or key) uses."""
    windows = set(STANDING_WINDOWS_S)
    windows |= {t.window_s for t in config.tiers if not t.aligned}
    return tuple(sorted(windows))
