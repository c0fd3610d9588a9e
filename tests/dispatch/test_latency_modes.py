"""SPEC "Latency": with latency=low an idle stage calls a new job within 2 s while its quotas have room
(a run long-polls until the next one takes over); with latency=cost an idle run ends early and a job
waits for the next scheduled run."""

from __future__ import annotations

import random
from collections.abc import Callable

from tests.conftest import World, job_body

MakeWorld = Callable[..., World]


def waits_after_enqueue(world: World, count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    sent_at: dict[str, float] = {}
    t = world.loop.now + 5.0
    for i in range(count):
        t += rng.uniform(3.0, 40.0)
        job_id = f"lat-{i}"
        sent_at[job_id] = t
        world.enqueue_at(t, [(job_body("/ok"), f"g{i}", job_id)])
    world.start_schedule()
    world.run_until(t + 120)
    arrived = {c.key: c.at for c in world.api.calls if c.key is not None}
    assert set(arrived) == set(sent_at)
    return sorted(arrived[j] - sent_at[j] for j in sent_at)


def test_low_latency_calls_a_new_job_within_two_seconds_on_an_idle_stage(make_world: MakeWorld) -> None:
    world = make_world(default_latency="low")
    waits = waits_after_enqueue(world, 40, seed=7)
    assert waits[-1] <= 2.0, waits[-5:]
    # and runs hand over to each other: one dispatcher at a time, no gap
    assert sum(1 for s in world.summaries if s.handed_over_to) >= 3


def test_cost_mode_lets_an_idle_run_end_and_a_job_wait_for_the_next_run(make_world: MakeWorld) -> None:
    world = make_world(default_latency="cost")
    waits = waits_after_enqueue(world, 20, seed=7)
    assert waits[-1] > 10.0 and waits[-1] <= 61.0
    assert all(s.end_reason in ("idle", "deadline", "successor") for s in world.summaries)
    assert max(s.ended_at - s.started_at for s in world.summaries if s.end_reason == "idle") < 5.0


def test_with_low_latency_resume_after_an_open_ended_pause_takes_effect_within_five_seconds(make_world: MakeWorld) -> None:
    # Found by the operator review: a run paused past its deadline ended, and `resume` then waited for the next
    # scheduled run (up to a minute on AWS).
    world = make_world(default_latency="low", quotas={"second": 5, "latency": "low"})
    world.enqueue([(job_body("/ok", f"g{i % 3}", i), f"g{i % 3}", f"q-{i}") for i in range(400)])
    world.start_schedule()
    world.run_for(10)
    world.store.set_pause(world.loop.now + 10 * 365 * 86400, "maintenance")
    world.run_for(150)  # past the runs' deadline: the next scheduled run starts paused too
    paused_calls = len(world.api.calls)
    resumed_at = world.loop.now
    world.store.clear_pause()
    world.run_for(6)
    after = [c.at for c in world.api.calls[paused_calls:]]
    assert after and min(after) <= resumed_at + 5
