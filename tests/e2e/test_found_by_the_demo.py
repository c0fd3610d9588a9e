"""Three faults the demo found on wall-clock time, each pinned down here deterministically.

1. The worker lost the result of a group's job that finished while the next job of the group slept
   until its slot (the batch then crashed with KeyError, and the group's order broke on the retry).
2. The dispatcher planned send times from the clock reading at the start of its turn, before the
   receive and settle calls of that turn, so a batch's first slots were already past when it went out.
3. moto delivered a FIFO group's last message first when several became visible again together.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import boto3
from freezegun import freeze_time
from moto import mock_aws

from throttler.core.clock import FakeClock
from throttler.dispatcher import BATCH_LEAD_S, ThrottlerRun
from throttler.core.errors import PermanentTaskError
from throttler.invoker import InProcessInvoker
from throttler_tools.moto_patches import patch_moto_fifo_order
from throttler.core.outcome import JobResult, Outcome
from throttler.queue import QueuedMessage
from throttler.settings import Settings
from throttler.store import MemoryStateStore
from throttler.tasks.registry import TaskContext, TaskRegistry, TaskResult
from throttler.worker import WorkerConfig, WorkerService


class DeferredExecutor:
    """Runs a submitted call when the clock moves or when someone waits for its result: a call that
    'finishes while the worker sleeps until the next slot'."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], JobResult], Future[JobResult]]] = []

    def submit(self, fn: Callable[[], JobResult]) -> Future[JobResult]:
        executor = self

        class Deferred(Future):  # type: ignore[type-arg]
            def result(self, timeout: float | None = None) -> JobResult:
                executor.run_pending()
                return super().result(timeout)

        future: Future[JobResult] = Deferred()
        self.pending.append((fn, future))
        return future

    def run_pending(self, _seconds: float = 0.0) -> None:
        pending, self.pending = self.pending, []
        for fn, future in pending:
            future.set_result(fn())

    def shutdown(self) -> None:
        self.run_pending()


def worker_with(task: Callable[[dict[str, Any], TaskContext], TaskResult | None]) -> tuple[WorkerService, FakeClock]:
    executor = DeferredExecutor()
    clock = FakeClock(on_advance=executor.run_pending)
    registry = TaskRegistry()
    registry.register("step", task)
    worker = WorkerService(
        config=WorkerConfig(allowed_hosts=("http://127.0.0.1:*",)),
        store=MemoryStateStore(),
        clock=clock,
        registry=registry,
        executor_factory=lambda n: executor,
    )
    return worker, clock


def chain(clock: FakeClock, *payloads: dict[str, Any]) -> dict[str, Any]:
    start = clock.now()
    return {
        "jobs": [
            {
                "id": f"j{i}",
                "group": "g",
                "body": json.dumps({"task": "step", "payload": p}),
                "not_before": start + 0.1 * (i + 1),
                "not_after": start + 0.1 * (i + 1) + 0.02,
            }
            for i, p in enumerate(payloads)
        ]
    }


def test_worker_keeps_the_result_of_a_job_that_finished_while_the_next_one_waited() -> None:
    calls: list[int] = []

    def step(payload: dict[str, Any], ctx: TaskContext) -> TaskResult:
        calls.append(payload["n"])
        return TaskResult(200)

    worker, clock = worker_with(step)
    response = worker.run_batch(chain(clock, {"n": 1}, {"n": 2}, {"n": 3}))
    assert [r["outcome"] for r in response["results"]] == ["succeeded"] * 3
    assert calls == [1, 2, 3]


def test_worker_stops_the_group_when_a_job_that_finished_while_the_next_one_waited_failed() -> None:
    calls: list[int] = []

    def step(payload: dict[str, Any], ctx: TaskContext) -> TaskResult:
        calls.append(payload["n"])
        if payload["n"] == 1:
            raise PermanentTaskError("http 400", 400)
        return TaskResult(200)

    worker, clock = worker_with(step)
    response = worker.run_batch(chain(clock, {"n": 1}, {"n": 2}))
    assert [r["outcome"] for r in response["results"]] == ["permanent", "skipped"]
    assert calls == [1]  # the group's next job never overtook the failed one


class SlowReceiveQueue:
    """A jobs queue whose receive takes `receive_s` of the run's clock, as a real one takes real time."""

    def __init__(self, clock: FakeClock, bodies: list[str], receive_s: float):
        self.clock = clock
        self.receive_s = receive_s
        self.messages = [
            QueuedMessage(message_id=f"m{i}", receipt=f"r{i}", body=b, group=f"g{i}", dedup_id=f"d{i}", receive_count=1)
            for i, b in enumerate(bodies)
        ]

    def receive(self, max_messages: int, visibility_s: int, wait_s: int = 0) -> list[QueuedMessage]:
        self.clock.sleep(self.receive_s)
        taken, self.messages = self.messages[:max_messages], self.messages[max_messages:]
        return taken

    def delete(self, receipts: list[str]) -> list[str]:
        return []

    def change_visibility(self, changes: list[tuple[str, float]]) -> None:
        return None

    def dead_letter(self, letters: list[Any]) -> None:
        return None


def test_dispatcher_plans_send_times_after_the_turns_receive_not_before_it() -> None:
    clock = FakeClock()
    store = MemoryStateStore()
    store.put_quotas({"second": 10})
    requests: list[tuple[float, dict[str, Any]]] = []

    def worker(request: dict[str, Any]) -> dict[str, Any]:
        requests.append((clock.now(), request))
        return {"results": [JobResult(j["id"], Outcome.SUCCEEDED).to_dict() for j in request["jobs"]]}

    settings = Settings(
        stage="t", jobs_queue_url="q", dlq_url="d", state_table="s", worker_function="w", allowed_hosts=("http://127.0.0.1:*",)
    )
    body = json.dumps({"task": "http", "payload": {"method": "GET", "url": "http://127.0.0.1/ok"}})
    queue = SlowReceiveQueue(clock, [body] * 3, receive_s=0.4)
    run = ThrottlerRun(
        settings=settings,
        store=store,
        queue=queue,
        invoker=InProcessInvoker(worker),
        clock=clock,  # type: ignore[arg-type]
        known_tasks=frozenset({"http"}),
    )
    run.run(clock.now() + 5)
    invoked_at, first = requests[0]
    first_slot = min(j["not_before"] for j in first["jobs"])
    # Invoked ahead of its first slot by the planned lead, even though receiving took 0.4 s.
    assert first_slot - invoked_at >= BATCH_LEAD_S - 1e-6  # epoch floats: micro-second precision


def test_moto_fifo_delivers_a_group_in_order_after_its_messages_become_visible_again() -> None:
    patch_moto_fifo_order()
    with freeze_time("2026-03-02 09:00:00") as frozen, mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="order.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
        for body in "ABC":
            sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId="g", MessageDeduplicationId=body)
        received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30)["Messages"]
        assert [m["Body"] for m in received] == ["A", "B", "C"]
        # Released together (a run's pause or its end): they are in flight until visible again.
        sqs.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 1} for i, m in enumerate(received)],
        )
        assert sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1).get("Messages", []) == []
        frozen.tick(1.1)
        again = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1)["Messages"]
        assert [m["Body"] for m in again] == ["A"]
