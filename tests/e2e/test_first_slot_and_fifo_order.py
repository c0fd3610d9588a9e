"""Two faults the demo once found on wall-clock time, pinned down here deterministically.

1. A run planned send times from the clock reading at the start of its turn, before the turn's receive, so a
   batch's first slots were already past when it went out (and every job in them missed its slot).
2. moto (the local stack's emulator) delivered a FIFO group's last message first when several became visible
   again together (a run's release at its end or at a pause): the local stack would break a group's order.

(A third, the worker losing the result of a job that finished while the next job of its group waited for its
slot, is now covered where the worker lives: tests/unit/test_worker_service.py and test_worker_batch.py.)
"""

from __future__ import annotations

import json
from concurrent.futures import Future
from typing import Any

import boto3
from freezegun import freeze_time
from moto import mock_aws

from throttler.core.clock import FakeClock
from throttler.core.envelope import parse_job
from throttler.core.outcome import JobResult, Outcome
from throttler.core.protocol import BatchRequest, BatchResponse, BatchStatus
from throttler.dispatch.run import ThrottlerRun
from throttler.dispatch.summary import RunSettings
from throttler.queue import MemoryJobQueue, MemorySqs, QueuedMessage
from throttler.store.memory import MemoryStateStore
from throttler.tasks import default_registry
from throttler.tasks.registry import ValidationContext
from throttler_tools.moto_patches import patch_moto_fifo_order
from throttler_tools.provision import provision

BATCH_LEAD_S = RunSettings().batch_lead_s


class SlowReceiveQueue(MemoryJobQueue):
    """The in-memory SQS model whose receive takes `receive_s` of the run's clock, as a real one takes real time."""

    receive_s = 0.4

    def receive(self, max_messages: int, visibility_s: float, wait_s: float = 0) -> list[QueuedMessage]:
        self.model.clock.sleep(self.receive_s)
        return super().receive(max_messages, visibility_s, wait_s)


class RecordingInvoker:
    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.requests: list[tuple[float, BatchRequest]] = []

    def submit(self, request: BatchRequest) -> Future[BatchResponse]:
        self.requests.append((self.clock.now(), request))
        future: Future[BatchResponse] = Future()
        future.set_result(BatchResponse(request.batch_id, BatchStatus.RAN,
                                        [JobResult(j.id, Outcome.SUCCEEDED, sent_at=j.not_before) for j in request.jobs]))
        return future

    def shutdown(self) -> None:
        return None


def test_a_run_plans_send_times_after_its_receive_not_before_it() -> None:
    clock = FakeClock()
    sqs = MemorySqs(clock)
    env = provision(sqs, None, "t")
    queue = SlowReceiveQueue(sqs, env["JOBS_QUEUE_URL"], env["DLQ_URL"])
    store = MemoryStateStore()
    store.put_quotas({"second": 10})
    validation = ValidationContext.build(("http://127.0.0.1:*",), "t")

    def parse(message: QueuedMessage) -> Any:
        return parse_job(message.body, message.group, message.dedup_id, tasks=default_registry, validation=validation)

    body = json.dumps({"task": "http", "payload": {"method": "GET", "url": "http://127.0.0.1/ok"}})
    queue.send([(body, f"g{i}", f"d{i}") for i in range(3)])
    invoker = RecordingInvoker(clock)
    run = ThrottlerRun(settings=RunSettings(default_latency="cost"), store=store, queue=queue, invoker=invoker,
                       clock=clock, parse=parse, owner="run-1")
    run.start(clock.now() + 5)
    wake = run.step(clock.now())
    while wake is not None:
        clock.sleep(max(0.0, wake.at - clock.now()))
        wake = run.step(clock.now())
    invoked_at, first = invoker.requests[0]
    first_slot = min(j.not_before for j in first.jobs)
    # Handed to the worker ahead of its first slot by the planned lead, even though receiving took 0.4 s.
    assert first_slot - invoked_at >= BATCH_LEAD_S - 1e-6
    assert run.summary.succeeded == 3


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
