"""Per-key quotas through whole runs on the SQS model (promises 1, 4 and 9): a light key is not stuck
behind a heavy one, a key without room waits hidden in SQS without being received again and again,
and overlapping runs keep both levels within their limits."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import World, job_body
from throttler.store.base import LeaseState
from throttler.store.memory import MemoryStateStore
from throttler_tools.fakeapi import max_in_window

MakeWorld = Callable[..., World]


def keyed_jobs(key: str, count: int, groups: int, prefix: str | None = None) -> list[tuple[str, str, str]]:
    name = prefix or key
    return [
        (job_body("/ok", f"{name}-g{i % groups}", i // groups, key=key), f"{name}-g{i % groups}", f"{name}-{i}")
        for i in range(count)
    ]


def test_every_light_key_is_called_within_seconds_beside_a_heavy_key_with_10000_jobs(make_world: MakeWorld) -> None:
    # (SQS cannot be searched: a key spread over G groups hides the keys behind it for about G receives;
    # a tenant's jobs in a handful of groups, as here, are passed at once.)
    world = make_world(quotas={"second": 10, "margin_ms": 20})
    world.enqueue(keyed_jobs("heavy", 10_000, groups=5))
    light_sent = world.loop.now
    world.enqueue([job for i in range(10) for job in keyed_jobs(f"light{i}", 1, groups=1)])
    world.start_schedule()
    world.run_for(20)
    first = {c.key: c.at for c in world.api.calls if c.key and c.key.startswith("light")}
    assert len(first) == 10, sorted(first)
    assert max(first.values()) - light_sent <= 6.0, {k: round(v - light_sent, 2) for k, v in first.items()}
    assert world.api.violations == 0


def test_a_key_without_room_for_a_day_waits_hidden_and_is_not_received_again_and_again(make_world: MakeWorld) -> None:
    world = make_world(quotas={"second": 10, "margin_ms": 20, "keys": {"spent": {"day": 2}}})
    world.enqueue(keyed_jobs("spent", 30, groups=3))
    world.start_schedule()
    world.run_for(60)
    world.enqueue(keyed_jobs("busy", 600, groups=10))  # other keys keep the stage busy meanwhile
    world.run_for(86400)
    spent_calls = [c for c in world.api.calls if c.key and c.key.startswith("spent-")]
    assert len(spent_calls) <= 4  # two a day
    busy = [c for c in world.api.calls if c.key and c.key.startswith("busy-")]
    assert len(busy) == 600  # the spent key held nobody back
    counts = [m.receive_count for m in world.sqs.messages(world.env["JOBS_QUEUE_URL"]) if m.group.startswith("spent")]
    assert counts and max(counts) <= 6, counts  # a few receives in a day, far from maxReceiveCount
    assert world.sqs.redrive_moves == []


def test_overlapping_runs_keep_both_levels_within_their_limits(make_world: MakeWorld) -> None:
    world = make_world(quotas={"second": 8, "per_key": {"second": 3}, "margin_ms": 20}, api_tiers=[(1, 8)])

    class LeaseAlwaysGranted(MemoryStateStore):
        def acquire_lease(self, owner: str, now: float, ttl_s: float, runs_until: float | None = None) -> LeaseState:
            return LeaseState(owner, now + ttl_s)

        def renew_lease(self, owner: str, now: float, ttl_s: float, runs_until: float | None = None) -> bool:
            return True

    assert isinstance(world.store, MemoryStateStore)
    world.store.__class__ = LeaseAlwaysGranted
    for key in ("a", "b", "c", "d"):
        world.enqueue(keyed_jobs(key, 60, groups=4))
    runs = [world.start_run(), world.start_run()]
    for run in runs:
        run.lease.check = lambda lease, now: (True, None)  # type: ignore[method-assign]
    world.run_for(60)
    assert sum(r.usage.conflicts for r in runs) > 0
    by_key: dict[str, list[float]] = defaultdict(list)
    for call in world.api.calls:
        by_key[(call.key or "?")[0]].append(call.at)
    assert world.api.violations == 0 and max_in_window([c.at for c in world.api.calls], 1) <= 8
    assert all(max_in_window(times, 1) <= 3 for times in by_key.values()), {k: max_in_window(v, 1) for k, v in by_key.items()}


def test_a_slow_key_with_many_groups_brings_them_back_one_slot_apart_not_all_at_once(make_world: MakeWorld) -> None:
    # Found by the reviews: every waiting head of a busy key came back at its next slot, all but one were hidden
    # again: 410 receives a day for a key of one call a minute with 40 groups (SQS's redrive moves at 1,000).
    world = make_world(quotas={"second": 10, "margin_ms": 20, "per_key": {"minute": 1}})
    world.enqueue(keyed_jobs("slow", 400, groups=40))
    world.start_schedule()
    world.run_for(6 * 3600)
    counts = [m.receive_count for m in world.sqs.messages(world.env["JOBS_QUEUE_URL"])]
    # Was 119 in these 6 hours, then 36: each run lined up the key's groups from the same start (the last run's
    # line was not written as it ended), so a few came back at each slot, one was called, the rest hidden again.
    assert counts and max(counts) <= 20, sorted(counts)[-5:]
    assert world.sqs.redrive_moves == []
    # The key's slots are used, not lost to the churn. 222 calls: the run brought back its hidden groups early
    # ("the queue looks empty") though the key's own tier had no slot for them, and hid them again after all the
    # others (46 minutes without a call). 251: a group back at its slot came just after the scheduled run had
    # found the queue empty and ended (latency=cost); an idle run now waits 2 s for groups due back. Now 335.
    times = [c.at for c in world.api.calls]
    assert len(times) >= 0.85 * 360
    # 17 minutes without a call early on: each step of a run whose queue looked empty recalled another of the key's
    # hidden groups for the same slot; all but one were hidden again behind the others (now 6 minutes).
    assert max(b - a for a, b in itertools.pairwise(times)) < 600


@pytest.mark.parametrize("latency", ["low", "cost"])
def test_a_key_of_one_call_every_10_s_with_a_long_backlog_gives_each_group_one_receive_per_turn(
    make_world: MakeWorld, latency: str
) -> None:
    # Review rev13: a key of one call every 10 s with 100 groups of 30 jobs cost a waiting message 28 to 32 receives
    # in 6 hours (about 120 a day: SQS's redrive moves it at 1,000). A group came back for its slot and found it
    # taken by a group served the slot before (a second message of it held here, or released at a run's end), or
    # its slot planned before it was back; it was hidden again for a whole turn of the key's groups.
    world = make_world(quotas={"second": 10, "margin_ms": 20, "per_key": {"10s": 1}}, default_latency=latency)
    world.enqueue(keyed_jobs("slow", 1500, groups=60))
    world.start_schedule()
    world.run_for(3 * 3600)
    receives = sorted(len(times) for times in world.received_at.values())
    # Each group is received once per turn: a message is received while it is among the first ten of its group (a
    # receive brings up to ten), about ten times, then called. At most the 12 receives a day of a waiting job (README,
    # promise 4), and the one its call came from. Before: 31 (latency=low), 33 (cost).
    assert receives[-1] <= 13, receives[-5:]
    assert world.sqs.redrive_moves == []
    # Every slot of the key is used (promise 2): 0.997. Before: 0.973 (low); 0.68 (cost: the run ended "idle" while the
    # key's groups waited hidden for their slots, one due back every 10 s).
    assert len(world.api.calls) >= 0.99 * 3 * 3600 / 10, len(world.api.calls)
    assert world.api.violations == 0


def test_the_line_of_a_key_taking_turns_outlives_the_run_that_hid_it(make_world: MakeWorld) -> None:
    # Review rev14: with 100 groups of 3 jobs and one call every 30 s, a run that held none of the key's groups wrote
    # the keys' summary without the line the run before had hidden. The next run hid a group for the key's next slot
    # only, among the groups still coming back: it came back at each slot after another had taken it, 50 receives.
    world = make_world(seed=7, quotas={"second": 10, "margin_ms": 20, "per_key": {"30s": 1}}, default_latency="low")
    world.enqueue(keyed_jobs("slow", 300, groups=100))
    world.start_schedule()
    world.run_for(2.6 * 3600)
    receives = sorted(len(times) for times in world.received_at.values())
    assert receives[-1] <= 6, receives[-5:]  # 3 jobs a group: received about once a turn, 3 turns (and a run's end)
    assert world.sqs.redrive_moves == [] and world.api.violations == 0


def test_a_key_whose_minute_tier_binds_under_a_10_s_tier_lines_its_groups_up_a_minute_apart(make_world: MakeWorld) -> None:
    # Review rev14: a key with `minute=1` under the default `10s=1` had its groups lined up 10 s apart (the rate of its
    # finest window) while its slots came a minute apart: five of every six came back to no slot, 80 receives.
    world = make_world(quotas={"second": 10, "margin_ms": 20, "per_key": {"10s": 1}, "keys": {"m1": {"minute": 1}}},
                       default_latency="low")
    world.enqueue(keyed_jobs("m1", 200, groups=20))
    world.start_schedule()
    world.run_for(3 * 3600)
    receives = sorted(len(times) for times in world.received_at.values())
    assert receives[-1] <= 12, receives[-5:]
    assert len(world.api.calls) >= 0.98 * 3 * 60, len(world.api.calls)
    assert world.api.violations == 0


def test_a_run_sharing_out_many_keys_sends_their_hides_ten_to_a_request(make_world: MakeWorld) -> None:
    # Each key past its share hides a group or two: one request per key cost more than the jobs it shared out
    # (1,000 keys: 0.40 visibility requests per job; 0.13 together).
    world = make_world(quotas={"second": 10, "margin_ms": 20})
    requests: list[int] = []
    send = world.queue._change_visibility

    def counted(target: Any, changes: Any) -> list[str]:
        requests.append(len(changes))
        return send(target, changes)

    world.queue._change_visibility = counted  # type: ignore[method-assign]
    world.enqueue([job for k in range(80) for job in keyed_jobs(f"k{k:02d}", 4, groups=4)])
    world.start_schedule()
    world.run_for(60)
    assert sum(requests) >= 100  # the run did share them out
    assert len(requests) <= sum(requests) / 5, requests  # at least 5 changes a request (one per key: 302 of 404)
    assert world.api.violations == 0 and world.sqs.redrive_moves == []
