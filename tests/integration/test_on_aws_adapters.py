"""The same scenarios as tests/dispatch, on moto's SQS and DynamoDB (the real adapters: conditional
writes, transactions for per-key meters, SQS receipts and visibility), in virtual time."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from tests.conftest import World, job_body
from throttler_tools.fakeapi import max_in_window

MakeWorld = Callable[..., World]


def test_nothing_lost_order_kept_and_reasons_on_the_real_adapters(make_moto_world: MakeWorld) -> None:
    world = make_moto_world()
    jobs = [(job_body("/ok", f"g{i % 5}", i), f"g{i % 5}", f"job-{i}") for i in range(40)]
    jobs += [(job_body("/status/404", "bad", 0), "bad", "bad-0"), (job_body("/flaky/1", "flaky", 0), "flaky", "flaky-0")]
    world.enqueue(jobs)
    assert world.drain(timeout_s=600)
    succeeded = world.api.successes_by_key()
    assert all(succeeded[f"job-{i}"] == 1 for i in range(40)) and succeeded["flaky-0"] == 1
    assert world.api.order_violations == 0 and world.api.violations == 0
    letters = {d.job_id: d for d in world.dead_letters()}
    assert set(letters) == {"bad-0"} and letters["bad-0"].error_reason == "http 404" and letters["bad-0"].attempts == 1


def test_per_key_quotas_hold_at_both_levels_on_the_real_adapters(make_moto_world: MakeWorld) -> None:
    world = make_moto_world(
        quotas={"second": 10, "per_key": {"second": 2}, "keys": {"big": {"second": 6, "weight": 3}}, "margin_ms": 20}
    )
    keys = ["big", "k1", "k2", "k3"]
    world.enqueue([(job_body("/ok", f"{k}-g{i % 3}", i, key=k), f"{k}-g{i % 3}", f"{k}-{i}") for k in keys for i in range(30)])
    world.start_schedule()
    world.run_for(15)
    by_key: dict[str, list[float]] = defaultdict(list)
    for call in world.api.calls:
        by_key[(call.key or "").split("-")[0]].append(call.at)
    assert max_in_window([c.at for c in world.api.calls], 1) <= 10
    assert max_in_window(by_key["big"], 1) <= 6 and all(max_in_window(by_key[k], 1) <= 2 for k in ("k1", "k2", "k3"))
    assert len(world.api.calls) >= 100  # the stage was kept busy (10/s) by the keys together
