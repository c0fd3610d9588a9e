"""An operator's pause and resume in every combination, in virtual time on the in-memory SQS model (which refuses
a visibility SQS refuses): open-ended, timed, resumed early, expiring, and under a 429's pause. Dispatch stops
within 5 s of a pause (calls already sent finish), nothing is charged an attempt, and a resume takes effect
within 5 s even when the pause outlasted the run that saw it (with latency=low the run stays, watching for the
resume; with latency=cost the next scheduled run sees it, as it sees a new job)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import World, job_body
from throttler.dispatch.control import INDEFINITE_PAUSE_S

MakeWorld = Callable[..., World]
QUOTAS = {"second": 2, "minute": 120}
EFFECT_S = 5.0  # SPEC: a pause or a resume takes effect within 5 s


def busy_world(make_world: MakeWorld, latency: str = "low", jobs: int = 90) -> World:
    """Three groups of jobs at 2 calls/s (45 s of work), EventBridge's runs every minute."""
    world = make_world(quotas=QUOTAS, default_latency=latency)
    world.enqueue([(job_body("/ok", f"g{i % 3}", i), f"g{i % 3}", f"j-{i}") for i in range(jobs)])
    world.start_schedule()
    return world


def at(world: World, offset_s: float, action: Callable[[], None]) -> float:
    when = world.config.start + offset_s
    world.loop.at(when, action)
    return when


def calls_between(world: World, start: float, end: float) -> list[float]:
    return [round(c.at - start, 2) for c in world.api.calls if start < c.at < end]


def first_call_after(world: World, t: float) -> float:
    return min(c.at for c in world.api.calls if c.at >= t) - t


def assert_clean(world: World) -> None:
    assert world.crashed == {}, world.crashed  # e.g. a visibility SQS would refuse
    assert world.dead_letters() == []
    assert world.api.violations == 0 and world.api.order_violations == 0
    assert set(world.store.get_attempts([f"j-{i}" for i in range(90)]).values()) <= {0}


@pytest.mark.parametrize("latency", ["low", "cost"])
def test_an_open_ended_pause_holds_until_resume_then_dispatch_restarts_within_5_s(make_world: MakeWorld, latency: str) -> None:
    world = busy_world(make_world, latency)
    paused = at(world, 10, lambda: world.store.set_pause(world.clock.now() + INDEFINITE_PAUSE_S, "operator", extend_only=False))
    resumed = at(world, 200, world.store.clear_pause)  # longer than a run's budget: the runs that saw it have ended
    world.run_until(resumed + 70)
    assert calls_between(world, paused, paused + 1) != [] or calls_between(world, paused - 1, paused) != []
    assert calls_between(world, paused + EFFECT_S, resumed) == []
    # latency=low: the paused run stayed and saw the resume; latency=cost: the next scheduled run (each minute,
    # as for a new job) sees it.
    assert first_call_after(world, resumed) <= (EFFECT_S if latency == "low" else 60 + EFFECT_S)
    assert world.drain()
    assert_clean(world)


def test_a_timed_pause_resumed_early_restarts_every_group_within_5_s(make_world: MakeWorld) -> None:
    world = busy_world(make_world)
    paused = at(world, 10, lambda: world.store.set_pause(world.clock.now() + 60, "operator", extend_only=False))
    resumed = at(world, 19, world.store.clear_pause)  # the case: `pause --for 1m`, `resume` 9 s later
    world.run_until(resumed + 30)
    assert calls_between(world, paused + EFFECT_S, resumed) == []
    for group in ("g0", "g1", "g2"):  # the group being dispatched when the pause began too
        assert min(c.at for c in world.api.calls if c.group == group and c.at >= resumed) - resumed <= EFFECT_S, group
    assert world.drain()
    assert_clean(world)


def test_a_timed_pause_ends_by_itself(make_world: MakeWorld) -> None:
    world = busy_world(make_world)
    paused = at(world, 10, lambda: world.store.set_pause(world.clock.now() + 150, "operator", extend_only=False))
    ends = paused + 150
    world.run_until(ends + 30)
    assert calls_between(world, paused + EFFECT_S, ends) == []
    assert first_call_after(world, ends) <= EFFECT_S
    assert world.drain()
    assert_clean(world)


def test_an_operators_pause_over_a_429s_pause_holds_until_resume_which_lifts_both(make_world: MakeWorld) -> None:
    world = make_world(quotas=QUOTAS, default_latency="low")
    jobs = [(job_body("/throttle/120", "t", 0), "t", "t-0")]
    jobs += [(job_body("/ok", f"g{i % 3}", i), f"g{i % 3}", f"j-{i}") for i in range(90)]
    world.enqueue(jobs)
    world.start_schedule()
    world.run_until(world.config.start + 30)
    throttled = [c.at for c in world.api.calls if c.status == 429]
    assert len(throttled) == 1, "the API's 429 came"
    paused = at(world, 40, lambda: world.store.set_pause(world.clock.now() + INDEFINITE_PAUSE_S, "operator", extend_only=False))
    resumed = at(world, 300, world.store.clear_pause)  # after the 429's 120 s: the operator's pause still held
    world.run_until(resumed + 30)
    assert calls_between(world, throttled[0] + 1, resumed) == []
    assert first_call_after(world, resumed) <= EFFECT_S
    assert paused < resumed
    assert world.drain()
    assert world.store.get_attempts(["t-0"]) == {"t-0": 0}
    assert_clean(world)
