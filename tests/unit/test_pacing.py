"""Quota math in virtual time (promises 1 and 2): no sliding window over its limit, full use, even spacing."""

from __future__ import annotations

import bisect
import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from throttler.core.pacing import Meter, Pacer
from throttler.core.quotas import parse_quota_item

WINDOWS = {"second": 1, "minute": 60, "5s": 5, "10s": 10, "30s": 30, "2m": 120, "hour": 3600}


def max_in_any_window(times: list[float], window_s: float) -> int:
    """Most calls in any half-open window [t, t + window_s) — the API's sliding-window view."""
    best = 0
    for i, t in enumerate(times):
        best = max(best, bisect.bisect_left(times, t + window_s) - i)
    return best


def schedule(item: dict, demand: list[float], meter: Meter | None = None) -> list[float]:
    """Dispatch each demanded call (arrival times, sorted) at the earliest slot the pacer allows."""
    pacer = Pacer(parse_quota_item(item), meter or Meter())
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
    slots = schedule({"day": 5, "second": 100, "aligned": ["day"], "margin_ms": 2}, [start] * 10)
    before = [s for s in slots if s < 10 * day]
    after = [s for s in slots if s >= 10 * day]
    assert len(before) == 5 and len(after) == 5
    assert after[0] == 10 * day  # the quota is fresh at 00:00 UTC


def test_usage_survives_a_restart_through_its_json_form() -> None:
    pacer = Pacer(parse_quota_item({"minute": 10}), Meter())
    for _ in range(10):
        pacer.take(pacer.next_slot(0.0) or 0.0)
    restored = Meter.from_json(pacer.stage.meter.to_json())
    next_slot = Pacer(parse_quota_item({"minute": 10}), restored).next_slot(1.0)
    assert next_slot is not None and next_slot >= 60.0  # the previous run's calls still count


def test_a_tier_added_later_counts_calls_already_made() -> None:
    meter = Meter()
    pacer = Pacer(parse_quota_item({"second": 100}), meter)
    for _ in range(50):
        pacer.take(pacer.next_slot(0.0) or 0.0)
    stricter = Pacer(parse_quota_item({"second": 100, "30s": 50}), meter)
    assert (stricter.next_slot(1.0) or 0) >= 30.0


def test_a_removed_tier_is_forgotten_and_cannot_seed_a_new_one_with_a_stale_count() -> None:
    # Issue 11, break 3: a stage once had 2h; its ledger stopped counting when 2h was removed, and a
    # 90m tier added later was seeded from it: 35,794 calls in 90 minutes against a limit of 20,000.
    meter = Meter()
    had_2h = Pacer(parse_quota_item({"2h": 100_000, "second": 50}), meter)
    for _ in range(100):
        had_2h.take(had_2h.next_slot(0.0) or 0.0)
    without = Pacer(parse_quota_item({"second": 50}), meter)
    assert "7200" not in meter.ledgers
    slots = [0.0]
    t = 2.0
    for _ in range(3000):
        slot = without.next_slot(t) or 0.0
        without.take(slot)
        slots.append(slot)
        t = slot
    added = Pacer(parse_quota_item({"second": 50, "90m": 3050}), meter)
    nxt = added.next_slot(t)
    assert nxt is not None and nxt >= 90 * 60, nxt  # 3,100 calls already in the last 90 minutes


def test_a_tier_longer_than_a_day_added_later_counts_every_day_already_used() -> None:
    # Issue 11, break 3: 7d=4000 added after 3 days at day=1000 allowed 5,000 in 7 days.
    meter = Meter()
    daily = Pacer(parse_quota_item({"day": 1000}), meter)
    t = 0.0
    for _ in range(3000):
        slot = daily.next_slot(t) or 0.0
        daily.take(slot)
        t = slot
    weekly = Pacer(parse_quota_item({"day": 1000, "7d": 4000}), meter)
    sent = 0
    t += 1
    while True:
        slot = weekly.next_slot(t)
        if slot is None or slot >= 7 * 86400:
            break
        weekly.take(slot)
        sent += 1
        t = slot
    assert 3000 + sent <= 4000, sent


def test_a_zero_limit_dispatches_nothing() -> None:
    assert Pacer(parse_quota_item({"second": 0}), Meter()).next_slot(0.0) is None


def test_rate_limit_headers_slow_dispatch_before_a_429() -> None:
    from throttler.core.ratelimit import ApiWord

    pacer = Pacer(parse_quota_item({"second": 100}), Meter())
    pacer.take(pacer.next_slot(0.0) or 0.0)
    pacer.observe_api(0.0, None, 0.0, ApiWord(observed_at=0.0, remaining=2, reset_at=10.0))
    slots = []
    for _ in range(3):
        slot = pacer.next_slot(0.0) or 0.0
        pacer.take(slot)
        slots.append(slot)
    assert slots[0] >= 5.0 - 1e-9  # 2 calls left for 10 s: spread out
    assert slots[2] >= 10.0  # then nothing until the reset


# Found by the per-key and signals review (each failed before its fix).
def test_a_learned_limit_never_drops_below_one_call_of_the_jobs_cost() -> None:
    pacer = Pacer(parse_quota_item({"second": "auto:20"}), Meter())
    for _ in range(5):
        pacer.observe_429(0.0, None, 0.0)  # the learned limit falls to 1 unit per second
    slot = pacer.next_slot(1.0, cost=5)
    assert slot is not None  # one call of 5 units per window, never "no slot ever" (the stage wedged)


def test_a_learned_value_from_before_max_was_lowered_never_counts_above_the_new_max() -> None:
    meter = Meter()
    Pacer(parse_quota_item({"minute": "auto:600"}), meter).stage.meter.learned_for(
        parse_quota_item({"minute": "auto:600"}).tiers[0]).value = 600
    pacer = Pacer(parse_quota_item({"minute": "auto:60"}), meter)
    assert [lim.limit for lim in pacer.stage.limits(0.0)] == [60]


def test_of_two_policies_for_one_window_the_stricter_paces() -> None:
    from throttler.core.ratelimit import ApiQuota, ApiWord

    pacer = Pacer(parse_quota_item({"second": 100}), Meter())
    pacer.observe_api(0.0, None, 0.0, ApiWord(0.0, (ApiQuota(5, 1.0, "user"), ApiQuota(50, 1.0, "app"))))
    assert sorted(lim.limit for lim in pacer.stage.limits(0.0) if lim.name.startswith("api:")) == [5]


def test_nothing_left_until_the_reset_holds_calls_back_even_beside_a_stated_policy() -> None:
    from throttler.core.ratelimit import ApiQuota, ApiWord

    pacer = Pacer(parse_quota_item({"second": 100}), Meter())
    pacer.observe_api(0.0, None, 0.0, ApiWord(0.0, (ApiQuota(30, 60.0),), remaining=0, reset_at=40.0))
    slot = pacer.next_slot(0.0)
    assert slot is not None and slot >= 40.0


def test_an_api_naming_ever_new_windows_is_followed_for_a_bounded_number_of_them() -> None:
    from throttler.core.ratelimit import ApiQuota, ApiWord

    pacer = Pacer(parse_quota_item({"second": 100}), Meter())
    for n in range(200):
        pacer.observe_api(float(n), None, float(n), ApiWord(float(n), (ApiQuota(1000, 10.0 + n),)))
    assert len(pacer.stage.meter.api.active_policies(200.0)) <= 8


def test_a_huge_cost_correction_counts_at_most_the_largest_limit() -> None:
    pacer = Pacer(parse_quota_item({"second": 10, "hour": 3000}), Meter())
    slot = pacer.next_slot(0.0) or 0.0
    pacer.take(slot)
    pacer.correct(slot, None, 10**12)
    later = pacer.next_slot(3600.0 + 10)
    assert later is not None and later < 3600.0 + 20  # the hour tier recovers after its window
    assert pacer.stage.usage(slot + 0.5)["hour"]["used"] <= 3001


def test_a_tier_of_zero_holds_jobs_instead_of_refusing_their_cost() -> None:
    config = parse_quota_item({"second": 10, "per_key": {"minute": 0}, "keys": {"a": {"second": 0}}})
    assert config.max_cost("a") == 10 and config.max_cost("b") == 10


# A meter is written to the usage item after every batch: each ledger keeps its entries encoded (promise 1 rests on
# what the next run reads back, so the text must be exactly the entries, whatever happened to them).
ledger_ops = st.lists(
    st.tuples(
        st.sampled_from(["take", "correct", "release", "aligned"]),
        st.floats(min_value=0, max_value=5, allow_nan=False),
        st.integers(min_value=1, max_value=5),
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(ops=ledger_ops)
def test_a_meter_is_written_as_exactly_its_entries_after_any_takes_corrections_and_releases(ops: list) -> None:
    pacer = Pacer(parse_quota_item({"second": 5, "minute": 100, "day": 1000, "aligned": ["day"]}), Meter())
    slot, taken = 1.7e9 - 7.0, []
    for op, step, cost in ops:
        if op == "take" or op == "aligned" or not taken:
            # "aligned": take just before midnight, when a call may arrive in the next day and counts in both
            slot = max(slot + step, 1.7e9 + 16 * 3600 - 0.01) if op == "aligned" else slot + step
            slot = pacer.next_slot(slot, None, cost) or slot
            pacer.take(slot, None, cost)
            taken.append((slot, cost))
        elif op == "correct":
            pacer.correct(taken[-1][0], None, cost)
        else:
            released, units = taken.pop(0)
            pacer.release(released, None, units)
        meter = pacer.stage.meter
        for ledger in meter.ledgers.values():
            assert ledger.to_json() == json.dumps(list(ledger.entries), separators=(",", ":"))
        again = Meter.from_json(meter.to_json())  # (an emptied bucket is not read back: it counts nothing)
        assert {k: [e for e in lg.entries if e[1]] for k, lg in again.ledgers.items()} == {
            k: [e for e in lg.entries if e[1]] for k, lg in meter.ledgers.items()}
        assert (again.last_slot, again.last_cost) == (meter.last_slot, meter.last_cost)


def test_a_scopes_slot_rate_is_what_its_windows_of_up_to_an_hour_allow() -> None:
    # The line a key taking turns hides its groups in follows this rate (a minute tier under a 10 s one spaced it 10 s
    # apart; a day tier, counted, spaced a key of one call every 10 s a quarter of an hour apart while the day had room).
    def slot_rate(item: dict) -> float:
        return Pacer(parse_quota_item(item), Meter()).slot_rate_per_s(0.0)

    assert abs(slot_rate({"10s": 1, "minute": 1}) - 1 / 60) < 1e-3
    assert abs(slot_rate({"10s": 1, "day": 100}) - 0.1) < 1e-2
    assert abs(slot_rate({"hour": 60}) - 1 / 60) < 1e-3
    assert abs(slot_rate({"day": 100}) - 100 / 86400) < 1e-5  # a day tier alone spaces its calls over the day
    assert slot_rate({"second": 0}) == 0.0
