"""The worker's batch (promises 3, 5, 6): slots, order within a group, stop on failure, 429 stops all."""

from __future__ import annotations

import json

from throttler.core.clock import FakeClock
from throttler_tools.fakeapi import FakeApi, session_for
from throttler.store import MemoryStateStore
from throttler.tasks import default_registry
from throttler.tasks import http as _http  # noqa: F401 - registers http
from throttler.worker import InlineExecutor, WorkerConfig, WorkerService


def make_worker(clock: FakeClock, api: FakeApi, store: MemoryStateStore | None = None) -> WorkerService:
    return WorkerService(
        config=WorkerConfig(("http://127.0.0.1:*",)),
        store=store or MemoryStateStore(),
        clock=clock,
        registry=default_registry,
        session=session_for(api),
        executor_factory=lambda n: InlineExecutor(),
    )


def spec(job_id: str, group: str, path: str, slot: float, seq: int = 0) -> dict:
    body = json.dumps({"task": "http", "payload": {"method": "GET", "url": f"http://127.0.0.1{path}?group={group}&seq={seq}"}})
    return {"id": job_id, "group": group, "body": body, "not_before": slot, "not_after": slot + 0.01}


def outcomes(response: dict) -> dict[str, str]:
    return {r["job_id"]: r["outcome"] for r in response["results"]}


def test_jobs_sent_at_their_slots_in_group_order_and_successes_recorded() -> None:
    clock, store = FakeClock(start=1000.0), MemoryStateStore()
    api = FakeApi(tiers=[(1, 100)], clock=clock)
    worker = make_worker(clock, api, store)
    response = worker.run_batch({"jobs": [spec("a0", "a", "/ok", 1000.5, 0), spec("b0", "b", "/ok", 1000.2),
                                          spec("a1", "a", "/ok", 1000.7, 1)]})
    assert outcomes(response) == {"a0": "succeeded", "b0": "succeeded", "a1": "succeeded"}
    assert [(c.group, round(c.at, 3)) for c in api.calls] == [("b", 1000.2), ("a", 1000.5), ("a", 1000.7)]
    assert store.done_ids(["a0", "a1", "b0", "zz"]) == {"a0", "a1", "b0"}


def test_a_group_stops_at_its_first_failure_and_other_groups_go_on() -> None:
    clock = FakeClock(start=1000.0)
    api = FakeApi(tiers=[(1, 100)], clock=clock)
    response = make_worker(clock, api).run_batch({"jobs": [
        spec("a0", "a", "/status/500", 1000.1), spec("a1", "a", "/ok", 1000.2, 1), spec("b0", "b", "/ok", 1000.3)]})
    assert outcomes(response) == {"a0": "retryable", "a1": "skipped", "b0": "succeeded"}
    assert [c.group for c in api.calls] == ["a", "b"]


def test_a_429_stops_every_chain_of_the_batch() -> None:
    clock = FakeClock(start=1000.0)
    api = FakeApi(tiers=[(1, 100)], clock=clock)
    response = make_worker(clock, api).run_batch({"jobs": [
        spec("a0", "a", "/throttle/9", 1000.1), spec("b0", "b", "/ok", 1000.2), spec("c0", "c", "/ok", 1000.3)]})
    results = {r["job_id"]: r for r in response["results"]}
    assert results["a0"]["outcome"] == "throttled" and results["a0"]["retry_after_s"] == 9.0
    assert results["b0"]["outcome"] == results["c0"]["outcome"] == "skipped"
    assert len(api.calls) == 1


def test_a_job_that_already_succeeded_is_never_called_again() -> None:
    clock, store = FakeClock(start=1000.0), MemoryStateStore()
    store.mark_done(["a0"], 9e9)
    api = FakeApi(tiers=[(1, 100)], clock=clock)
    response = make_worker(clock, api, store).run_batch({"jobs": [spec("a0", "a", "/ok", 1000.1)]})
    assert response["results"][0] == {"job_id": "a0", "outcome": "succeeded", "reason": "already succeeded", "duplicate": True}
    assert api.calls == []


def test_a_job_past_its_slot_is_not_sent() -> None:
    clock = FakeClock(start=1000.0)
    api = FakeApi(tiers=[(1, 100)], clock=clock)
    late = spec("a0", "a", "/ok", 999.0)  # its slot ended before the worker got it
    response = make_worker(clock, api).run_batch({"jobs": [late, spec("a1", "a", "/ok", 1000.5, 1)]})
    assert outcomes(response) == {"a0": "skipped", "a1": "skipped"}
    assert api.calls == []


def test_an_invalid_body_and_a_crashing_custom_task_are_reported_not_raised() -> None:
    clock = FakeClock(start=1000.0)
    api = FakeApi(tiers=[(1, 100)], clock=clock)

    def boom(payload: dict, ctx: object) -> None:
        raise ValueError("bug in user code")

    default_registry.register("unit_boom", boom)
    bad = {"id": "x", "group": "x", "body": "{", "not_before": 1000.1, "not_after": 1000.2}
    crash = {"id": "y", "group": "y", "body": json.dumps({"task": "unit_boom", "payload": {}}),
             "not_before": 1000.2, "not_after": 1000.3}
    results = {r["job_id"]: r for r in make_worker(clock, api).run_batch({"jobs": [bad, crash]})["results"]}
    assert results["x"]["outcome"] == "invalid" and "JSON" in results["x"]["reason"]
    assert results["y"]["outcome"] == "retryable" and "ValueError" in results["y"]["reason"]


def test_threaded_execution_keeps_group_order() -> None:
    from throttler.core.clock import SystemClock

    clock = SystemClock()
    api = FakeApi(tiers=[(1, 1000)], clock=clock)
    worker = WorkerService(config=WorkerConfig(("http://127.0.0.1:*",)), store=MemoryStateStore(), clock=clock,
                           registry=default_registry, session=session_for(api))
    now = clock.now()
    jobs = [spec(f"{g}{i}", g, "/ok", now + 0.01 * (i * 3 + k), i) for i in range(5) for k, g in enumerate("abc")]
    for job in jobs:
        job["not_after"] = job["not_before"] + 5.0  # generous: this test is about order, not timing
    response = worker.run_batch({"jobs": jobs})
    assert set(outcomes(response).values()) == {"succeeded"}
    assert api.order_violations == 0
