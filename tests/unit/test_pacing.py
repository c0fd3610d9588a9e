"""Quota math in virtual time (promises 1 and 2): no sliding window over its limit, full use, even spacing."""

from __future__ import annotations

import bisect
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from throttler.core.pacing import Pacer, Usage
from throttler.core.quotas import parse_quota_item

WINDOWS = {"second": 1, "minute": 60, "5s": 5, "10s": 10, "30s": 30, "2m": 120, "hour": 3600}


def max_in_any_window(times: list[float], window_s: float) -> int:
    """Most calls in any half-open window [t, t + window_s) — the API's sliding-window view."""
    best = 0
    for i, t in enumerate(times):
        best = max(best, bisect.bisect_left(times, t + window_s) - i)
    return best


def schedule(item: dict, demand: list[float], usage: Usage | None = None) -> list[float]:
    """Dispatch each demanded call (arrival times, sorted) at the earliest slot the pacer allows."""
    pacer = Pacer(parse_quota_item(item), usage or Usage())
    slots: list[float] = []
    for wanted in demand:
        slot = pacer.next_slot(wanted)
        assert slot is not None and slot >= wanted
        pacer.take(slot)
        slots.append(slot)
    return slots


tier_sets = st.dictionaries(
    st.sampled_from(sorted(WINDOWS)), st.integers(min_value=1, max_value=50), min_size=1, max_size=4
)
demands = st.lists(st.floats(min_value=0, max_value=400, allow_nan=False), min_size=1, max_size=400).map(sorted)


@settings(max_examples=150, deadline=None)
@given(tiers=tier_sets, demand=demands)
def test_quota_never_exceeded_in_any_sliding_window_for_random_tiers_and_demand(tiers: dict, demand: list[float]) -> None:
    slots = schedule(tiers, demand)
    assert slots == sorted(slots)
    for name, limit in tiers.items():
        assert max_in_any_window(slots, WINDOWS[name]) <= limit, (name, limit)


@settings(max_examples=60, deadline=None)
@given(tiers=tier_sets)
def test_full_use_of_the_binding_tier_under_a_backlog(tiers: dict) -> None:
    config = parse_quota_item(tiers)
    binding = config.binding
    rate = binding.limit / binding.window_s
    # A backlog long enough that the binding tier's long-run rate decides: many of its windows.
    duration = max(20 * binding.window_s, 2000 / rate)
    count = int(duration * rate)
    slots = schedule(tiers, [0.0] * count)
    achieved = (count - 1) / (slots[-1] - slots[0])
    assert achieved >= 0.99 * rate, (tiers, achieved, rate)


def test_calls_spaced_evenly_within_the_finest_tier() -> None:
    slots = schedule({"minute": 600}, [0.0] * 600)
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(slots)}
    assert len(gaps) == 1 and 0.1 <= gaps.pop() <= 0.101  # one call every 100 ms, not 600 at once
    assert max_in_any_window(slots, 1) <= 10


def test_no_burst_over_the_limit_at_a_window_edge() -> None:
    # Demand arrives in bursts straddling minute boundaries: the classic fixed-window failure.
    demand = sorted([59.9] * 100 + [60.0] * 100 + [119.9] * 100 + [120.1] * 100)
    slots = schedule({"second": 50, "minute": 100}, demand)
    assert max_in_any_window(slots, 60) <= 100
    assert max_in_any_window(slots, 1) <= 50


def test_safety_margin_widens_every_window() -> None:
    slots = schedule({"second": 10, "margin_ms": 100}, [0.0] * 30)
    # any 1.1 s of send times holds at most 10 calls, so jitter up to 100 ms cannot bunch arrivals
    assert max_in_any_window(slots, 1.1) <= 10


def test_calendar_aligned_tier_resets_at_the_period_boundary() -> None:
    day = 86400.0
    start = 10 * day - 30  # 30 s before midnight UTC
    slots = schedule({"day": 5, "second": 100, "aligned": ["day"], "margin_ms": 0}, [start] * 10)
    before = [s for s in slots if s < 10 * day]
    after = [s for s in slots if s >= 10 * day]
    assert len(before) == 5 and len(after) == 5
    assert after[0] == 10 * day  # the quota is fresh at 00:00 UTC


def test_usage_survives_a_restart_through_its_json_form() -> None:
    pacer = Pacer(parse_quota_item({"minute": 10}), Usage())
    for _ in range(10):
        pacer.take(pacer.next_slot(0.0) or 0.0)
    restored = Usage.from_json(pacer.usage.to_json(), pacer.usage.last_slot)
    next_slot = Pacer(parse_quota_item({"minute": 10}), restored).next_slot(1.0)
    assert next_slot is not None and next_slot >= 60.0  # the previous run's calls still count


def test_a_tier_added_later_counts_calls_already_made() -> None:
    usage = Usage()
    pacer = Pacer(parse_quota_item({"second": 100}), usage)
    for _ in range(50):
        pacer.take(pacer.next_slot(0.0) or 0.0)
    stricter = Pacer(parse_quota_item({"second": 100, "30s": 50}), usage)
    assert (stricter.next_slot(1.0) or 0) >= 30.0


def test_a_zero_limit_dispatches_nothing() -> None:
    assert Pacer(parse_quota_item({"second": 0}), Usage()).next_slot(0.0) is None


def test_rate_limit_headers_slow_dispatch_before_a_429() -> None:
    pacer = Pacer(parse_quota_item({"second": 100}), Usage())
    pacer.take(pacer.next_slot(0.0) or 0.0)
    pacer.advise(observed_at=0.0, remaining=2, reset_at=10.0)
    slots = []
    for _ in range(3):
        slot = pacer.next_slot(0.0) or 0.0
        pacer.take(slot)
        slots.append(slot)
    assert slots[0] >= 5.0 - 1e-9  # 2 calls left for 10 s: spread out
    assert slots[2] >= 10.0  # then nothing until the reset
