"""What the benchmark found in the core, each kept as a test of the new code."""

from __future__ import annotations


def test_a_call_that_waited_for_a_worker_thread_past_its_slot_is_not_sent() -> None:
    # Given a worker with one thread, a slow call, and another group's call whose slot ends meanwhile
    import json
    import time

    from throttler.core.clock import SystemClock
    from throttler.core.protocol import BatchRequest, JobSpec
    from throttler.store import MemoryStateStore
    from throttler.tasks import default_registry
    from throttler.tasks.registry import ValidationContext
    from throttler.worker.service import WorkerConfig, WorkerService
    from throttler_tools.fakeapi import FakeApi, FakeApiAdapter

    class SlowAdapter(FakeApiAdapter):
        def send(self, request, **kwargs):  # type: ignore[no-untyped-def]
            if "slow" in (request.url or ""):
                time.sleep(0.3)
            return super().send(request, **kwargs)

    import requests

    api = FakeApi(tiers=[(1, 1000)], clock=SystemClock())

    def session(_n: int) -> requests.Session:
        s = requests.Session()
        s.mount("http://", SlowAdapter(api))
        return s

    worker = WorkerService(
        config=WorkerConfig(ValidationContext.build(("http://127.0.0.1:*",), "local"), max_parallel=1),
        records=MemoryStateStore(),
        clock=SystemClock(),
        registry=default_registry,
        secret_headers=dict,
        new_session=session,
    )

    def job(group: str, path: str, at: float, window: float) -> JobSpec:
        body = json.dumps({"task": "http", "payload": {"method": "GET", "url": f"http://127.0.0.1{path}?group={group}&seq=0"}})
        return JobSpec(f"{group}0", group, body, at, at + window)

    now = time.time()
    request = BatchRequest(
        "b1", "run", (job("a", "/ok/slow", now + 0.05, 5.0), job("b", "/ok", now + 0.06, 0.05)), planned_at=now
    )

    # When the second call's thread comes free only after its slot has passed
    response = worker.run(request)

    # Then it is not sent late (that could bunch calls past a window): skipped, for the throttler to reschedule
    by_id = {r.job_id: r for r in response.results}
    assert by_id["a0"].outcome.value == "succeeded"
    assert by_id["b0"].outcome.value == "skipped" and by_id["b0"].reason == "missed its slot"
    assert len(api.calls) == 1


# ---------------------------------------------------------------------------------------------- kept from the old
# dispatcher's findings (tests/bench/test_dispatcher_findings.py, deleted with the old dispatcher): what they
# protected still applies to the new run.
def _world(jobs: int, groups: int, quotas: dict, api: list) -> object:
    from tests.conftest import World, WorldConfig, job_body

    world = World(WorldConfig(quotas=quotas, api_tiers=api))
    world.enqueue([(job_body("/ok", f"g{i % groups}", i // groups), f"g{i % groups}", f"job-{i}") for i in range(jobs)])
    return world


def test_run_end_releases_held_messages_of_many_groups_ten_per_request() -> None:
    # Given a backlog over many groups and a run too short to send it all
    world = _world(120, 30, {"second": 10, "margin_ms": 20}, [(1, 10)])
    sizes: list[int] = []
    change = world.queue._change_visibility  # type: ignore[attr-defined]

    def counted(target, changes):  # type: ignore[no-untyped-def]
        sizes.append(len(changes))
        return change(target, changes)

    world.queue._change_visibility = counted  # type: ignore[attr-defined]

    # When the run ends holding messages of several groups
    run = world.start_run(budget_s=3.0)  # type: ignore[attr-defined]
    world.run_for(10)  # type: ignore[attr-defined]

    # Then they go back to the queue in requests of ten (not one request per group)
    released = run.summary.released
    assert released > 10
    assert len(sizes) <= -(-released // 10) + 2
    assert max(sizes) == 10


def test_run_ends_at_its_deadline_and_sends_nothing_after_it() -> None:
    # Given held messages and a run of two seconds
    world = _world(120, 30, {"second": 10, "margin_ms": 20}, [(1, 10)])
    run = world.start_run(budget_s=2.0)  # type: ignore[attr-defined]

    # When it gets there (virtual time moves only when the run waits: a run that spun would never return)
    world.run_until(world.config.start + 60, stop=lambda: world.loop.events > 50_000)  # type: ignore[attr-defined]

    # Then it ended at its deadline, having sent only within its time, and nothing is lost
    assert run.summary.end_reason == "deadline"
    assert world.loop.events < 20_000  # type: ignore[attr-defined]
    assert 0 < len(world.calls) and max(at for _, at in world.calls) <= run.deadline  # type: ignore[attr-defined]
    ok = sum(1 for c in world.api.calls if c.status == 200)  # type: ignore[attr-defined]
    assert world.depth() == 120 - ok  # type: ignore[attr-defined]
