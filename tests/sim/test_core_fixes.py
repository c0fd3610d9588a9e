"""Bugs the simulation found in the core, each with the smallest scenario that shows it (see the commits
whose message starts with "core fix:")."""

from __future__ import annotations

from tests.conftest import World, WorldConfig, job_body

MAX_EVENTS = 5000  # a run wakes a few times a second at most; far more means it spins at one instant


def test_a_run_with_nothing_held_sleeps_instead_of_spinning() -> None:
    """A key without room has its message hidden; the next receive finds nothing and waits 0.5 s. The run
    used to wake at the same instant for ever (`min(stage_next - ahead, receive_after)` picked the past),
    a busy loop in Lambda and a hang in virtual time (found by the simulation, profile `keys`)."""
    world = World(WorldConfig(quotas={"second": 10, "per_key": {"day": 1}, "margin_ms": 50}, api_tiers=[(1, 10)]))
    world.enqueue([(job_body("/ok", group="g", seq=i, key="k"), "g", f"j{i}") for i in range(2)])
    world.start_run()
    world.run_until(world.loop.now + 60, stop=lambda: world.loop.events > MAX_EVENTS)
    assert world.loop.events <= MAX_EVENTS, "the run spins at one instant"
    assert len(world.api.calls) == 1  # the key's day is spent: the second job waits, hidden in SQS
