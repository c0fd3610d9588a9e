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

    worker = WorkerService(config=WorkerConfig(ValidationContext.build(("http://127.0.0.1:*",), "local"), max_parallel=1),
                           records=MemoryStateStore(), clock=SystemClock(), registry=default_registry,
                           secret_headers=dict, new_session=session)

    def job(group: str, path: str, at: float, window: float) -> JobSpec:
        body = json.dumps({"task": "http", "payload": {"method": "GET", "url": f"http://127.0.0.1{path}?group={group}&seq=0"}})
        return JobSpec(f"{group}0", group, body, at, at + window)

    now = time.time()
    request = BatchRequest("b1", "run", (job("a", "/ok/slow", now + 0.05, 5.0), job("b", "/ok", now + 0.06, 0.05)),
                           planned_at=now)

    # When the second call's thread comes free only after its slot has passed
    response = worker.run(request)

    # Then it is not sent late (that could bunch calls past a window): skipped, for the throttler to reschedule
    by_id = {r.job_id: r for r in response.results}
    assert by_id["a0"].outcome.value == "succeeded"
    assert by_id["b0"].outcome.value == "skipped" and by_id["b0"].reason == "missed its slot"
    assert len(api.calls) == 1
