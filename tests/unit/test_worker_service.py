"""The worker in production form (real clock, calls on threads) against the fake API in process:
promises 3, 5, 6 and the worker's side of 7 and 8 (claims, records, secrets)."""

from __future__ import annotations

import json
import time

from throttler.core.clock import SystemClock
from throttler.core.errors import SecretsUnavailable, StoreError
from throttler.core.protocol import BatchRequest, BatchResponse, BatchStatus, JobSpec
from throttler.store import MemoryStateStore
from throttler.store.base import ThrottleSignal
from throttler.tasks import default_registry
from throttler.tasks.registry import ValidationContext
from throttler.worker.service import WorkerConfig, WorkerService
from throttler_tools.fakeapi import FakeApi, session_for

LOCAL = ValidationContext.build(("http://127.0.0.1:*",), "local")


def make_worker(api: FakeApi, records: MemoryStateStore | None = None, secrets: object = None) -> WorkerService:
    def get_secrets() -> dict[str, str]:
        if isinstance(secrets, Exception):
            raise secrets
        return {}

    return WorkerService(
        config=WorkerConfig(LOCAL),
        records=records or MemoryStateStore(),
        clock=api.clock,
        registry=default_registry,
        secret_headers=get_secrets,
        new_session=lambda n: session_for(api),
    )


def spec(job_id: str, group: str, path: str, at: float, seq: int = 0, window: float = 5.0) -> JobSpec:
    body = json.dumps({"task": "http", "payload": {"method": "GET", "url": f"http://127.0.0.1{path}?group={group}&seq={seq}"}})
    return JobSpec(job_id, group, body, at, at + window)


def batch(*jobs: JobSpec, batch_id: str = "b1") -> BatchRequest:
    return BatchRequest(batch_id, "run", tuple(jobs), planned_at=time.time())


def outcomes(response: object) -> dict[str, str]:
    return {r.job_id: r.outcome.value for r in response.results}  # type: ignore[attr-defined]


def test_jobs_go_in_group_order_and_successes_are_recorded_before_the_worker_returns() -> None:
    api, records = FakeApi(tiers=[(1, 1000)], clock=SystemClock()), MemoryStateStore()
    now = time.time()
    response = make_worker(api, records).run(
        batch(spec("a0", "a", "/ok", now, 0), spec("b0", "b", "/ok", now + 0.01), spec("a1", "a", "/ok", now + 0.02, 1))
    )
    assert outcomes(response) == {"a0": "succeeded", "b0": "succeeded", "a1": "succeeded"}
    assert api.order_violations == 0 and len(api.calls) == 3
    record = records.read_batches(["b1"])["b1"]
    assert record.final and record.succeeded == {"a0", "a1", "b0"}


def test_a_group_stops_at_its_first_failure_and_other_groups_go_on() -> None:
    api = FakeApi(tiers=[(1, 1000)], clock=SystemClock())
    now = time.time()
    response = make_worker(api).run(
        batch(spec("a0", "a", "/status/500", now), spec("a1", "a", "/ok", now + 0.01, 1), spec("b0", "b", "/ok", now + 0.02))
    )
    assert outcomes(response) == {"a0": "retryable", "a1": "skipped", "b0": "succeeded"}


def test_a_429_stops_every_chain_and_is_published_for_every_other_worker() -> None:
    api, records = FakeApi(tiers=[(1, 1000)], clock=SystemClock()), MemoryStateStore()
    now = time.time()
    response = make_worker(api, records).run(
        batch(spec("a0", "a", "/throttle/9", now), spec("b0", "b", "/ok", now + 0.3), spec("c0", "c", "/ok", now + 0.4))
    )
    assert outcomes(response) == {"a0": "throttled", "b0": "skipped", "c0": "skipped"}
    assert response.results[0].retry_after_s == 9.0 and len(api.calls) == 1
    signal = records.read_control().throttle
    assert signal is not None and signal.retry_after_s == 9.0 and signal.batch_id == "b1"


def test_a_429_is_published_even_when_the_state_table_refuses_the_first_writes() -> None:
    # Found by the simulation (seed 15): one refused write (DynamoDB throttling, once botocore's retries were
    # spent) left every other worker blind to the 429: calls went on for 1.7 s, until the run heard of it.
    class Refusing(MemoryStateStore):
        refusals = 2

        def throttle(self, signal: ThrottleSignal, now: float | None = None) -> None:
            if self.refusals:
                self.refusals -= 1
                raise StoreError("ProvisionedThroughputExceededException")
            super().throttle(signal, now)

    api, records = FakeApi(tiers=[(1, 1000)], clock=SystemClock()), Refusing()
    now = time.time()
    make_worker(api, records).run(batch(spec("a0", "a", "/throttle/9", now), spec("b0", "b", "/ok", now + 0.3)))
    signal = records.read_control().throttle
    assert signal is not None and signal.retry_after_s == 9.0


def test_a_second_delivery_of_the_same_batch_calls_nothing() -> None:
    # Issue 11, break 6: botocore re-sent Invoke after a read timeout and 7 jobs were called twice.
    api, records = FakeApi(tiers=[(1, 1000)], clock=SystemClock()), MemoryStateStore()
    now = time.time()
    request = batch(spec("a0", "a", "/ok", now), spec("b0", "b", "/ok", now))
    first = make_worker(api, records).run(request)
    second = make_worker(api, records).run(request)
    assert first.status is BatchStatus.RAN and second.status is BatchStatus.DUPLICATE
    assert len(api.calls) == 2 and second.results == []


def test_secrets_that_cannot_be_read_are_the_workers_failure_not_the_jobs() -> None:
    api = FakeApi(tiers=[(1, 1000)], clock=SystemClock())
    records = MemoryStateStore()
    request = batch(spec("a0", "a", "/ok", time.time()))
    response = make_worker(api, records, SecretsUnavailable("cannot read SSM parameter '/x'")).run(request)
    assert response.status is BatchStatus.SECRETS_UNAVAILABLE and api.calls == []
    # Claimed first (chaos seed 822): the run takes this answer for "not run" and sends the job again in its next
    # batch, so a second delivery of the same invoke, whose secrets read, must not run it (the API had it twice).
    assert make_worker(api, records).run(request).status is BatchStatus.DUPLICATE and api.calls == []


def test_an_invalid_body_and_a_crashing_custom_task_are_results_not_crashes() -> None:
    api = FakeApi(tiers=[(1, 1000)], clock=SystemClock())

    def boom(payload: dict, ctx: object) -> None:
        raise ValueError("bug in user code")

    default_registry.register("unit_boom", boom)
    now = time.time()
    bad = JobSpec("x", "x", "{", now, now + 5)
    crash = JobSpec("y", "y", json.dumps({"task": "unit_boom", "payload": {}}), now, now + 5)
    results = {r.job_id: r for r in make_worker(api).run(batch(bad, crash)).results}
    assert results["x"].outcome.value == "invalid" and "JSON" in results["x"].reason
    assert results["y"].outcome.value == "retryable" and "ValueError" in results["y"].reason


def test_a_job_whose_slot_has_passed_is_not_sent() -> None:
    api = FakeApi(tiers=[(1, 1000)], clock=SystemClock())
    now = time.time()
    late = spec("a0", "a", "/ok", now - 2.0, window=0.5)
    response = make_worker(api).run(batch(late, spec("a1", "a", "/ok", now + 0.01, 1)))
    assert outcomes(response) == {"a0": "skipped", "a1": "skipped"} and api.calls == []


def test_many_groups_in_parallel_keep_their_order() -> None:
    api = FakeApi(tiers=[(1, 10_000)], clock=SystemClock())
    now = time.time()
    jobs = [spec(f"{g}{i}", g, "/ok", now + 0.002 * (i * 8 + k), i) for i in range(6) for k, g in enumerate("abcdefgh")]
    response = make_worker(api).run(batch(*jobs))
    assert set(outcomes(response).values()) == {"succeeded"} and api.order_violations == 0


class FailingRecords(MemoryStateStore):
    """A state table that refuses the batch record's writes while `failing` is set."""

    failing = True

    def record(self, *args: object, **kwargs: object) -> None:
        if self.failing:
            raise StoreError("ProvisionedThroughputExceededException (simulated)")
        super().record(*args, **kwargs)  # type: ignore[arg-type]


def test_successes_whose_record_writes_all_failed_are_in_the_answer_as_unrecorded() -> None:
    api, records = FakeApi(tiers=[(1, 1000)], clock=SystemClock()), FailingRecords()
    now = time.time()
    response = make_worker(api, records).run(
        batch(spec("a0", "a", "/ok", now, 0), spec("a1", "a", "/ok", now + 1.2, 1), spec("b0", "b", "/ok", now + 0.01))
    )
    assert outcomes(response) == {"a0": "succeeded", "a1": "succeeded", "b0": "succeeded"}
    # a0 and b0 went in the first (failed) periodic write: they are not dropped from the later ones
    assert sorted(response.unrecorded) == ["a0", "a1", "b0"]
    assert BatchResponse.from_dict(json.loads(response.to_json())).unrecorded == response.unrecorded  # as invoked
    assert records.read_batches(["b1"])["b1"].succeeded == frozenset()  # the claim only


def test_a_failed_periodic_record_write_goes_again_with_the_next_one() -> None:
    api, records = FakeApi(tiers=[(1, 1000)], clock=SystemClock()), FailingRecords()
    now = time.time()
    worker = make_worker(api, records)
    original = worker._record

    def fail_once(*args: object) -> bool:
        ok = original(*args)  # type: ignore[arg-type]
        records.failing = False
        return ok

    worker._record = fail_once  # type: ignore[method-assign]
    response = worker.run(batch(spec("a0", "a", "/ok", now, 0), spec("a1", "a", "/ok", now + 1.2, 1)))
    assert response.unrecorded == ()
    record = records.read_batches(["b1"])["b1"]
    assert record.final and record.succeeded == {"a0", "a1"}


def test_a_state_table_out_of_reach_is_a_store_error_so_the_worker_still_answers() -> None:
    # botocore raises a BotoCoreError, not a ClientError, once its retries run out on a dropped connection: the
    # worker raised, the run read a record without the successes and called them again (review rev7)
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    from throttler.store.dynamo import DynamoWorkerRecords

    class Unreachable:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def put_item(self, **kwargs: object) -> dict[str, object]:
            return {}  # the claim got through

        def update_item(self, **kwargs: object) -> None:
            raise self.error

    for error in (EndpointConnectionError(endpoint_url="https://dynamodb"), ReadTimeoutError(endpoint_url="https://dynamodb")):
        api = FakeApi(tiers=[(1, 1000)], clock=SystemClock())
        worker = make_worker(api)
        worker.records = DynamoWorkerRecords(Unreachable(error), "table")
        now = time.time()
        response = worker.run(batch(spec("a0", "a", "/ok", now, 0), spec("a1", "a", "/ok", now + 1.2, 1)))
        assert outcomes(response) == {"a0": "succeeded", "a1": "succeeded"}
        assert sorted(response.unrecorded) == ["a0", "a1"]
