"""One contract suite over every JobQueue backend: the in-memory SQS FIFO model, and the SQS adapter on
moto run under `aws_sqs_rules()` (the SQS rules moto 5.2 lacks, patched in throttler_tools/moto_patches.py).
Both get their queues from serverless.yml through the same `provision_queues`, so they cannot drift.

Given a fresh stage's queues on virtual time, each test sends, receives and waits as a producer and a
throttler run would, and asserts what SQS FIFO does (the rule and its AWS source are in the docstrings
of throttler/queue/model.py and moto_patches.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from freezegun import freeze_time
from moto import mock_aws

from throttler.core.clock import FakeClock
from throttler.queue import (
    DeadLetter,
    DeadLetters,
    JobQueue,
    MemoryJobQueue,
    MemorySqs,
    MessageAttribute,
    MessageTooLarge,
    OutgoingMessage,
    QueueError,
    SqsJobQueue,
)
from throttler.queue.base import send_batches
from throttler.queue.dead_letters import MOVED_BY_SQS
from throttler_tools.moto_patches import aws_sqs_rules
from throttler_tools.provision import provision_queues

START = "2026-03-02 09:00:00"
KIB = 1024
HOUR = 3600


@dataclass
class Backend:
    """A stage's two queues on one backend, the JobQueue on them, and the clock that moves them."""

    name: str
    sqs: Any  # a boto3 SQS client, or the MemorySqs model (the same control-plane calls)
    urls: dict[str, str]  # "jobs" / "dlq" -> queue URL (the model: its name)
    clock: FakeClock
    queue: JobQueue

    def consumer(self) -> JobQueue:
        """Another JobQueue on the same queues (a second throttler run, or the CLI)."""
        if isinstance(self.sqs, MemorySqs):
            return MemoryJobQueue(self.sqs, self.urls["jobs"], self.urls["dlq"])
        return SqsJobQueue(self.sqs, self.urls["jobs"], self.urls["dlq"], clock=self.clock)

    def configure(self, target: str, **attributes: Any) -> None:
        """SetQueueAttributes, then a fresh adapter (the SQS one reads MaximumMessageSize once)."""
        self.sqs.set_queue_attributes(QueueUrl=self.urls[target], Attributes={k: str(v) for k, v in attributes.items()})
        self.queue = self.consumer()

    def attributes(self, target: str) -> dict[str, str]:
        return dict(self.sqs.get_queue_attributes(QueueUrl=self.urls[target], AttributeNames=["All"])["Attributes"])

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)


@pytest.fixture(params=["memory", "moto"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        start = datetime.fromisoformat(START).replace(tzinfo=UTC).timestamp()
        clock = FakeClock(start=start)
        model = MemorySqs(clock)
        refs, _ = provision_queues(model, "local")
        urls = {"jobs": refs["JobsQueue"], "dlq": refs["DeadLetterQueue"]}
        yield Backend("memory", model, urls, clock, MemoryJobQueue(model, urls["jobs"], urls["dlq"]))
        return
    with freeze_time(START) as frozen, mock_aws(), aws_sqs_rules():
        clock = FakeClock(start=time.time(), on_advance=lambda s: frozen.tick(s))
        sqs = boto3.client("sqs", region_name="us-east-1")
        refs, _ = provision_queues(sqs, "local")
        urls = {"jobs": refs["JobsQueue"], "dlq": refs["DeadLetterQueue"]}
        yield Backend("moto", sqs, urls, clock, SqsJobQueue(sqs, urls["jobs"], urls["dlq"], clock=clock))


def bodies(messages: list[Any]) -> list[str]:
    return [m.body for m in messages]


def redrive_after(backend: Backend, receives: int) -> None:
    arn = backend.attributes("dlq")["QueueArn"]
    backend.configure("jobs", RedrivePolicy=json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": receives}))


# ------------------------------------------------------------------------------------------ the stage
def test_the_stage_queues_are_the_ones_serverless_yml_defines(backend: Backend) -> None:
    jobs, dlq = backend.attributes("jobs"), backend.attributes("dlq")
    assert jobs["FifoQueue"] == "true" and dlq["FifoQueue"] == "true"
    assert jobs["VisibilityTimeout"] == "120"
    assert dlq["MessageRetentionPeriod"] == "1209600"
    policy = json.loads(jobs["RedrivePolicy"])
    assert policy["deadLetterTargetArn"] == dlq["QueueArn"] and int(policy["maxReceiveCount"]) == 1000


def test_the_stage_dlq_takes_a_dead_lettered_job_of_the_largest_size(backend: Backend) -> None:
    jobs_max = int(backend.attributes("jobs")["MaximumMessageSize"])
    assert jobs_max == 256 * KIB and int(backend.attributes("dlq")["MaximumMessageSize"]) == 1024 * KIB
    backend.queue.send([("x" * jobs_max, "g", "largest")])
    [message] = backend.queue.receive(1, 60)
    backend.queue.dead_letter([DeadLetter(message, "r" * 5000, 10**9)])
    assert backend.queue.dlq_depth().total == 1 and backend.queue.depth().total == 0


# ------------------------------------------------------------------------------------------ receiving
def test_every_receive_counts_whoever_receives(backend: Backend) -> None:
    queue = backend.queue
    queue.send([("a", "g", "job-1")])
    [first] = queue.receive(1, 1)
    assert (first.receive_count, first.group, first.dedup_id, first.body) == (1, "g", "job-1", "a")
    backend.advance(1)
    assert [m.receive_count for m in queue.receive(1, 1)] == [2]
    backend.advance(1)
    assert [m.receive_count for m in backend.consumer().receive(1, 1)] == [3]


def test_the_redrive_policy_moves_a_message_on_the_receive_after_max_receive_count(backend: Backend) -> None:
    redrive_after(backend, 2)
    queue = backend.queue
    queue.send([("a", "g", "job-a"), ("b", "g", "job-b")])
    assert [(m.body, m.receive_count) for m in queue.receive(1, 0)] == [("a", 1)]
    assert [(m.body, m.receive_count) for m in queue.receive(1, 0)] == [("a", 2)]
    # The third receive finds `a` received twice: SQS moves it and goes on with its group.
    assert [(m.body, m.receive_count) for m in queue.receive(1, 0)] == [("b", 1)]
    [moved] = DeadLetters(queue).peek()
    assert (moved.body, moved.group, moved.job_id, moved.attempts) == ("a", "g", "job-a", None)
    assert moved.error_reason == MOVED_BY_SQS
    if isinstance(backend.sqs, MemorySqs):
        assert [(m.dedup_id, m.receive_count) for m in backend.sqs.redrive_moves] == [("job-a", 2)]


def test_a_group_waits_while_any_of_its_messages_is_in_flight(backend: Backend) -> None:
    queue = backend.queue
    queue.send([("a1", "A", "a1"), ("a2", "A", "a2"), ("a3", "A", "a3"), ("b1", "B", "b1")])
    [a1] = queue.receive(1, 60)
    assert a1.body == "a1"
    assert bodies(queue.receive(10, 60)) == ["b1"]  # A is blocked behind a1
    assert queue.delete([a1.receipt]) == []
    assert bodies(queue.receive(10, 60)) == ["a2", "a3"]  # in order, several of one group at once


def test_one_receive_returns_as_many_of_one_group_as_it_can(backend: Backend) -> None:
    queue = backend.queue
    queue.send([("a1", "A", "a1"), ("b1", "B", "b1"), ("a2", "A", "a2"), ("b2", "B", "b2")])
    assert bodies(queue.receive(2, 60)) == ["a1", "a2"]
    assert bodies(queue.receive(10, 60)) == ["b1", "b2"]


@pytest.mark.parametrize("how", ["released", "timed out"])
def test_messages_visible_again_come_back_in_group_order(backend: Backend, how: str) -> None:
    queue = backend.queue
    queue.send([(f"a{i}", "A", f"a{i}") for i in range(1, 4)])
    held = queue.receive(10, 5)
    assert bodies(held) == ["a1", "a2", "a3"]
    if how == "released":
        assert queue.change_visibility([(m.receipt, 0) for m in held]) == []
    else:
        backend.advance(5)
    assert bodies(queue.receive(1, 60)) == ["a1"]  # moto 5.2 alone answers a3 (patch_moto_fifo_order)


def test_long_polling_returns_what_is_there(backend: Backend) -> None:
    backend.queue.send([("a", "g", "a")])
    assert bodies(backend.queue.receive(10, 30, wait_s=20)) == ["a"]


def test_long_polling_an_empty_queue_returns_at_once_in_the_model(backend: Backend) -> None:
    if backend.name == "moto":
        pytest.skip("model only: moto waits in real time for a message while freezegun holds its clock")
    assert backend.queue.receive(10, 30, wait_s=20) == []


def test_depth_counts_visible_and_in_flight_messages(backend: Backend) -> None:
    queue = backend.queue
    queue.send([(f"m{i}", f"g{i}", f"m{i}") for i in range(3)])
    queue.receive(1, 60)
    depth = queue.depth()
    assert (depth.visible, depth.in_flight, depth.total) == (2, 1, 3)
    assert queue.dlq_depth().total == 0


# ------------------------------------------------------------------------------------------ visibility
def test_visibility_is_rounded_up_to_whole_seconds(backend: Backend) -> None:
    queue = backend.queue
    queue.send([("a", "g", "a")])
    assert queue.receive(1, 0.95) != []  # SQS takes whole seconds: 1, never 0 (released at once)
    backend.advance(0.9)
    assert queue.receive(1, 60) == []
    backend.advance(0.1)
    [again] = queue.receive(1, 60)
    assert again.receive_count == 2
    assert queue.change_visibility([(again.receipt, 1.2)]) == []  # hidden 2 s from now
    backend.advance(1.9)
    assert queue.receive(1, 60) == []
    backend.advance(0.1)
    assert bodies(queue.receive(1, 60)) == ["a"]


def test_a_visibility_of_zero_releases_at_once(backend: Backend) -> None:
    queue = backend.queue
    queue.send([("a", "g", "a")])
    [held] = queue.receive(1, 60)
    assert queue.change_visibility([(held.receipt, 0)]) == []
    assert [m.receive_count for m in queue.receive(1, 60)] == [2]


def test_visibility_is_held_to_12_hours_from_the_receive(backend: Backend) -> None:
    queue = backend.queue
    queue.send([("a", "g", "a")])
    backend.advance(13 * HOUR)  # older than 12 hours: the limit counts from the receive, not the send
    [held] = queue.receive(1, 2 * HOUR)
    backend.advance(HOUR)
    assert queue.change_visibility([(held.receipt, 12 * HOUR)]) == []  # asked for 12 h, given 11 h
    backend.advance(11 * HOUR - 1)
    assert queue.receive(1, 60) == []
    backend.advance(1)
    assert [m.receive_count for m in queue.receive(1, 60)] == [2]


def test_sqs_refuses_a_total_visibility_beyond_12_hours(backend: Backend) -> None:
    """The rule the adapter's clamp keeps: asked of SQS directly, the same change fails."""
    queue = backend.queue
    queue.send([("a", "g", "a")])
    [held] = queue.receive(1, 2 * HOUR)
    backend.advance(HOUR)
    assert queue._change_visibility("jobs", [(held.receipt, 12 * HOUR)]) == [held.receipt]
    assert queue._change_visibility("jobs", [(held.receipt, 11 * HOUR)]) == []


# ------------------------------------------------------------------------------------------ receipts
def test_a_receipt_from_an_earlier_receive_deletes_nothing(backend: Backend) -> None:
    queue = backend.queue
    queue.send([("a", "g", "a")])
    [first] = queue.receive(1, 1)
    backend.advance(1)
    [second] = backend.consumer().receive(1, 60)
    assert queue.delete([first.receipt]) == [first.receipt]
    assert queue.change_visibility([(first.receipt, 0)]) == [first.receipt]
    assert queue.depth().in_flight == 1  # still held by the second receive
    assert backend.consumer().delete([second.receipt]) == []
    assert queue.depth().total == 0


def test_a_fifo_receipt_expires_with_its_visibility(backend: Backend) -> None:
    queue = backend.queue
    queue.send([("a", "g", "a"), ("b", "h", "b")])
    a, b = queue.receive(10, 1)
    backend.advance(1)
    assert queue.delete([a.receipt]) == [a.receipt]
    assert queue.change_visibility([(b.receipt, 0)]) == [b.receipt]
    assert queue.depth().visible == 2


def test_a_released_receipt_is_spent(backend: Backend) -> None:
    queue = backend.queue
    queue.send([("a", "g", "a")])
    [held] = queue.receive(1, 60)
    queue.change_visibility([(held.receipt, 0)])
    assert queue.delete([held.receipt]) == [held.receipt]
    assert queue.depth().visible == 1


# ------------------------------------------------------------------------------------------ sending
def test_a_duplicate_within_5_minutes_is_accepted_and_dropped_even_after_a_delete(backend: Backend) -> None:
    queue = backend.queue
    assert queue.send([("first", "g", "job-1")]) == ["job-1"]
    assert queue.send([("second", "g", "job-1")]) == ["job-1"]
    assert queue.depth().total == 1
    [held] = queue.receive(1, 60)
    assert queue.delete([held.receipt]) == []
    backend.advance(299)
    queue.send([("third", "g", "job-1")])
    assert queue.depth().total == 0
    backend.advance(1)
    queue.send([("fourth", "g", "job-1")])
    assert bodies(queue.receive(1, 60)) == ["fourth"]


def test_send_gives_a_fresh_deduplication_id_where_none_is_given(backend: Backend) -> None:
    [job_id] = backend.queue.send([("a", "g", None)])
    [message] = backend.queue.receive(1, 60)
    assert message.dedup_id == job_id and len(job_id) == 32
    assert message.sent_at == pytest.approx(backend.clock.now(), abs=0.001)


def test_sizes_are_bytes_with_the_attributes_counted(backend: Backend) -> None:
    backend.configure("jobs", MaximumMessageSize=KIB)
    queue = backend.queue
    queue.send([("x" * KIB, "g", "exact")])
    for body in ("x" * (KIB + 1), "€" * 342):  # 342 characters, 1,026 bytes
        with pytest.raises(MessageTooLarge):
            queue.send([("small", "g", "before"), (body, "g", "too-large")])
    note = {"note": MessageAttribute("String", "y" * 18)}  # 4 + 6 + 18 bytes
    over = OutgoingMessage("x" * 1000, "g", "over", note)
    with pytest.raises(MessageTooLarge):
        queue.send_messages("jobs", [over])
    with pytest.raises(QueueError):
        queue._send("jobs", [over])  # SQS itself refuses it
    assert queue.depth().total == 1  # nothing of a refused send was sent
    queue.send_messages("jobs", [OutgoingMessage("x" * 996, "h", "fits", note)])
    [exact, fits] = queue.receive(10, 60)
    assert (exact.size_bytes, fits.size_bytes) == (KIB, KIB)
    assert fits.attributes == note


def test_batches_hold_at_most_10_entries_and_1_mib(backend: Backend) -> None:
    backend.configure("jobs", MaximumMessageSize=1024 * KIB)
    queue = backend.queue
    queue.send([(f"m{i}", "g", f"m{i}") for i in range(23)])
    assert queue.depth().total == 23
    with pytest.raises(QueueError):
        queue._send("jobs", [OutgoingMessage(f"n{i}", "g", f"n{i}") for i in range(11)])
    large = [OutgoingMessage("x" * 300 * KIB, "g", f"large-{i}") for i in range(4)]
    with pytest.raises(QueueError):
        queue._send("jobs", large)  # 1.2 MiB in one request
    assert [len(batch) for batch in send_batches(large)] == [3, 1]
    queue.send_messages("jobs", large)
    assert queue.depth().total == 27


def test_sqs_refuses_characters_outside_its_set(backend: Backend) -> None:
    with pytest.raises(QueueError):
        backend.queue._send("jobs", [OutgoingMessage("a\x00b", "g", "nul")])
    assert backend.queue.depth().total == 0


def test_retention_drops_old_messages_and_a_fifo_dlq_restarts_it(backend: Backend) -> None:
    redrive_after(backend, 1)
    backend.configure("jobs", MessageRetentionPeriod=300)
    backend.configure("dlq", MessageRetentionPeriod=120)
    queue = backend.queue
    queue.send([("a", "g", "a")])
    queue.receive(1, 0)
    backend.advance(100)
    assert queue.receive(1, 60) == []  # moved to the DLQ at t=100
    backend.advance(110)  # t=210: past the send + 120 s, not past the move + 120 s
    assert queue.dlq_depth().total == 1
    backend.advance(11)
    assert queue.dlq_depth().total == 0
    queue.send([("b", "g", "b")])
    backend.advance(301)
    assert queue.receive(1, 60) == [] and queue.depth().total == 0


# ------------------------------------------------------------------------------------------ dead letters
def test_a_dead_letter_keeps_body_and_group_and_carries_reason_attempts_and_job_id(backend: Backend) -> None:
    queue = backend.queue
    body = json.dumps({"task": "http", "payload": {"n": 1}})
    queue.send([(body, "customer-1", "job-1")])
    [held] = queue.receive(1, 60)
    queue.dead_letter([DeadLetter(held, "http 400 \x08bad", 2)])
    assert queue.depth().total == 0
    [dead] = queue.receive_dead(10, 30)
    assert (dead.body, dead.group) == (body, "customer-1")
    assert dead.attributes == {
        "error_reason": MessageAttribute("String", "http 400 \\x08bad"),
        "attempts": MessageAttribute("Number", "2"),
        "job_id": MessageAttribute("String", "job-1"),
    }


def test_a_retried_dead_lettering_is_dropped_and_a_redriven_job_that_fails_again_is_kept(backend: Backend) -> None:
    queue = backend.queue
    queue.send([(json.dumps({"task": "http", "payload": {}}), "g", "job-1")])
    [held] = queue.receive(1, 60)
    letter = DeadLetter(held, "http 400", 1)
    queue.dead_letter([letter])
    queue.dead_letter([letter])  # a run that died before learning the first one worked
    assert queue.dlq_depth().total == 1
    assert DeadLetters(queue).redrive() == 1
    [again] = queue.receive(1, 60)
    queue.dead_letter([DeadLetter(again, "http 409", 1)])
    assert [(d.error_reason, d.job_id) for d in DeadLetters(queue).peek()] == [("http 409", "job-1")]


def test_a_256_kib_job_goes_to_a_1_mib_dlq_and_would_not_fit_a_256_kib_one(backend: Backend) -> None:
    backend.configure("jobs", MaximumMessageSize=256 * KIB)
    backend.configure("dlq", MaximumMessageSize=1024 * KIB)
    queue = backend.queue
    queue.send([("x" * 256 * KIB, "g", "big-1"), ("y" * 256 * KIB, "h", "big-2")])
    first, second = queue.receive(10, 60)
    assert first.size_bytes == second.size_bytes == 256 * KIB
    queue.dead_letter([DeadLetter(first, "attempts exhausted: http 503", 3)])
    [dead] = DeadLetters(queue).peek()
    assert (dead.body, dead.attempts, dead.job_id) == (first.body, 3, "big-1")
    backend.configure("dlq", MaximumMessageSize=256 * KIB)
    with pytest.raises(MessageTooLarge):
        backend.queue.dead_letter([DeadLetter(second, "attempts exhausted: http 503", 3)])
    assert backend.queue.depth().in_flight == 1 and backend.queue.dlq_depth().total == 1
