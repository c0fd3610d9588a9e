"""The in-memory SQS model's own rules and hooks, beyond the contract suite (which checks it against
moto): what SQS refuses, what a simulation reads (receive counts, SQS's own redrive moves, arrivals,
the next visibility change), and that a receive stays cheap with thousands of waiting groups."""

from __future__ import annotations

import json

import pytest

from throttler.core.clock import FakeClock
from throttler.queue import MemoryJobQueue, MemorySqs, MessageAttribute, MessageView, OutgoingMessage
from throttler.queue.sqs_rules import SqsError

JOBS, DLQ = "jobs.fifo", "dlq.fifo"
Attributes = dict[str, MessageAttribute]
DLQ_ARN = f"arn:aws:sqs:us-east-1:000000000000:{DLQ}"


def redrive(arn: str, count: int) -> str:
    return json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": count})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def model(clock: FakeClock) -> MemorySqs:
    model = MemorySqs(clock)
    model.create_queue(QueueName=DLQ, Attributes={"FifoQueue": "true"})
    model.create_queue(QueueName=JOBS, Attributes={"FifoQueue": "true", "RedrivePolicy": redrive(DLQ_ARN, 3)})
    return model


def out(body: str, group: str = "g", dedup: str | None = None, attributes: Attributes | None = None) -> OutgoingMessage:
    return OutgoingMessage(body, group, dedup or body, attributes or {})


# ------------------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("name", "attributes"),
    [
        ("small.fifo", {"FifoQueue": "true", "MaximumMessageSize": "1023"}),
        ("large.fifo", {"FifoQueue": "true", "MaximumMessageSize": "1048577"}),
        ("misnamed", {"FifoQueue": "true"}),
        ("slow.fifo", {"FifoQueue": "true", "VisibilityTimeout": "43201"}),
        ("brief.fifo", {"FifoQueue": "true", "MessageRetentionPeriod": "59"}),
        ("never.fifo", {"FifoQueue": "true", "RedrivePolicy": redrive(DLQ_ARN, 0)}),
        ("lost.fifo", {"FifoQueue": "true", "RedrivePolicy": redrive("arn:x:gone", 5)}),
    ],
)
def test_queue_attributes_are_validated_as_sqs_validates_them(model: MemorySqs, name: str, attributes: dict[str, str]) -> None:
    with pytest.raises(SqsError):
        model.create_queue(QueueName=name, Attributes=attributes)


def test_attributes_read_back_as_sqs_reports_them(model: MemorySqs) -> None:
    attributes = model.get_queue_attributes(QueueUrl=f"https://sqs.example/000000000000/{JOBS}")["Attributes"]
    assert attributes["MaximumMessageSize"] == "262144" and attributes["VisibilityTimeout"] == "30"
    assert json.loads(attributes["RedrivePolicy"]) == {"deadLetterTargetArn": DLQ_ARN, "maxReceiveCount": 3}
    assert model.get_queue_url(QueueName=JOBS) == {"QueueUrl": JOBS}


# ------------------------------------------------------------------------------------------ what SQS refuses
def test_visibility_must_be_whole_seconds_within_12_hours(model: MemorySqs) -> None:
    model.send_message_batch(JOBS, [out("a")])
    with pytest.raises(SqsError):
        model.receive_message(JOBS, 1, 0.95)  # type: ignore[arg-type]
    with pytest.raises(SqsError):
        model.receive_message(JOBS, 1, 43_201)
    [held] = model.receive_message(JOBS, 1, 60)
    assert model.change_message_visibility_batch(JOBS, [(held.receipt, 1.5)]) == [(held.receipt, "InvalidParameterValue")]  # type: ignore[list-item]


@pytest.mark.parametrize(
    "entries",
    [
        [],
        [out(f"m{i}") for i in range(11)],
        [out("")],
        [out("bad \ufffe char")],
        [out("a", group="two words")],
        [OutgoingMessage("a", "g", "")],
        [out("a", attributes={f"a{i}": MessageAttribute("String", "v") for i in range(11)})],
        [out("a", attributes={"n": MessageAttribute("Number", "twelve")})],
        [out("a", attributes={"b": MessageAttribute("Binary", "text, not bytes")})],
        [out("a", attributes={"AWS.reserved": MessageAttribute("String", "v")})],
    ],
)
def test_a_request_sqs_would_refuse_is_refused_whole(model: MemorySqs, entries: list[OutgoingMessage]) -> None:
    batch = [out("fine", dedup="fine"), *entries] if entries else []
    with pytest.raises(SqsError):
        model.send_message_batch(JOBS, batch)
    assert model.depth(JOBS).total == 0


def test_a_deleted_messages_receipt_may_delete_again_and_an_unknown_one_may_not(model: MemorySqs) -> None:
    model.send_message_batch(JOBS, [out("a")])
    [held] = model.receive_message(JOBS, 1, 60)
    assert model.delete_message_batch(JOBS, [held.receipt]) == []
    assert model.delete_message_batch(JOBS, [held.receipt]) == []
    assert model.delete_message_batch(JOBS, ["made-up"]) == [("made-up", "ReceiptHandleIsInvalid")]
    with pytest.raises(SqsError):
        model.delete_message_batch(JOBS, [held.receipt, held.receipt])


# ------------------------------------------------------------------------------------------ sending
def test_a_duplicate_send_answers_with_the_original_message_id(model: MemorySqs) -> None:
    [first], _ = model.send_message_batch(JOBS, [out("a", dedup="job-1")])
    [again], _ = model.send_message_batch(JOBS, [out("b", dedup="job-1")])
    assert again == first and model.depth(JOBS).total == 1


def test_content_based_deduplication_hashes_the_body(model: MemorySqs) -> None:
    model.create_queue(QueueName="cbd.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"})
    model.send_message_batch("cbd.fifo", [OutgoingMessage("same", "g", ""), OutgoingMessage("same", "h", "")])
    assert model.depth("cbd.fifo").total == 1


def test_on_send_sees_each_arrival_and_not_the_duplicates(model: MemorySqs) -> None:
    seen: list[tuple[str, str]] = []
    model.on_send.append(lambda queue, view: seen.append((queue, view.body)))
    model.send_message_batch(JOBS, [out("a", dedup="1"), out("b", dedup="1"), out("c", dedup="2")])
    assert seen == [(JOBS, "a"), (JOBS, "c")]


def test_a_queue_delay_holds_its_group_back(model: MemorySqs, clock: FakeClock) -> None:
    model.create_queue(QueueName="late.fifo", Attributes={"FifoQueue": "true", "DelaySeconds": "5"})
    model.send_message_batch("late.fifo", [out("a")])
    assert model.receive_message("late.fifo", 10, 30) == []
    assert model.depth("late.fifo").delayed == 1
    assert model.next_visible_at("late.fifo") == clock.now() + 5
    clock.advance(5)
    assert [m.body for m in model.receive_message("late.fifo", 10, 30)] == ["a"]


# ------------------------------------------------------------------------------------------ hooks
def test_a_checker_sees_receive_counts_and_what_sqs_redrive_moved(model: MemorySqs) -> None:
    queue = MemoryJobQueue(model, JOBS, DLQ)
    queue.send([("a", "g", "job-a"), ("b", "h", "job-b")])
    for _ in range(3):
        queue.change_visibility([(m.receipt, 0) for m in queue.receive(10, 30)])
    assert queue.receive(10, 30) == []  # both received 3 times: moved on the 4th receive
    views = model.messages(DLQ)
    assert sorted((v.dedup_id, v.receive_count, v.moved_from) for v in views) == [("job-a", 3, JOBS), ("job-b", 3, JOBS)]
    assert {m.dedup_id for m in model.redrive_moves} == {"job-a", "job-b"}
    assert model.messages(JOBS) == []


def test_messages_show_what_is_in_flight(model: MemorySqs) -> None:
    model.send_message_batch(JOBS, [out("a"), out("b", group="h")])
    model.receive_message(JOBS, 1, 30)
    views = {v.body: v for v in model.messages(JOBS)}
    assert isinstance(views["a"], MessageView)
    assert (views["a"].in_flight, views["a"].receive_count, views["b"].in_flight) == (True, 1, False)


def test_next_visible_at_is_the_end_of_the_earliest_visibility_timeout(model: MemorySqs, clock: FakeClock) -> None:
    assert model.next_visible_at(JOBS) is None
    model.send_message_batch(JOBS, [out("a"), out("b", group="h")])
    model.receive_message(JOBS, 1, 30)
    clock.advance(10)
    model.receive_message(JOBS, 1, 5)
    assert model.next_visible_at(JOBS) == clock.now() + 5


def test_retention_drops_messages_in_flight_too(model: MemorySqs, clock: FakeClock) -> None:
    model.set_queue_attributes(QueueUrl=JOBS, Attributes={"MessageRetentionPeriod": "60"})
    model.send_message_batch(JOBS, [out("a")])
    [held] = model.receive_message(JOBS, 1, 600)
    clock.advance(60)
    assert model.depth(JOBS).total == 0
    assert model.delete_message_batch(JOBS, [held.receipt]) == [(held.receipt, "ReceiptHandleIsInvalid")]


def test_a_receive_finds_the_one_free_group_among_ten_thousand_waiting(model: MemorySqs, clock: FakeClock) -> None:
    busy = "busy.fifo"  # no redrive policy: the free message is received again and again
    model.create_queue(QueueName=busy, Attributes={"FifoQueue": "true"})
    for start in range(0, 10_000, 10):
        model.send_message_batch(busy, [out(f"m{i}", group=f"k{i}") for i in range(start, start + 10)])
    for _ in range(1000):
        model.receive_message(busy, 10, 3600)
    assert model.receive_message(busy, 10, 3600) == []
    model.send_message_batch(busy, [out("late", group="fresh")])
    for _ in range(1000):  # each receive walks only the groups it can deliver
        assert [m.body for m in model.receive_message(busy, 10, 0)] == ["late"]
    clock.advance(3600)
    assert len(model.receive_message(busy, 10, 60)) == 10


def test_a_standard_queue_does_not_hold_messages_back_by_group(clock: FakeClock) -> None:
    model = MemorySqs(clock)
    model.create_queue(QueueName="plain")
    model.send_message_batch("plain", [OutgoingMessage("a", "", ""), OutgoingMessage("b", "", "")])
    assert [m.body for m in model.receive_message("plain", 1, 30)] == ["a"]
    assert [m.body for m in model.receive_message("plain", 1, 30)] == ["b"]


# ------------------------------------------------------------------------------------------ FIFO quotas
def test_nothing_more_is_delivered_while_the_in_flight_quota_is_used_up(clock: FakeClock) -> None:
    model = MemorySqs(clock, in_flight_quota=3)  # SQS: 120,000, and no error when reached
    model.create_queue(QueueName=JOBS, Attributes={"FifoQueue": "true"})
    model.send_message_batch(JOBS, [out(f"m{i}", group=f"g{i}") for i in range(5)])
    held = model.receive_message(JOBS, 10, 60)
    assert len(held) == 3 and model.receive_message(JOBS, 10, 60) == []
    assert model.delete_message_batch(JOBS, [held[0].receipt]) == []
    assert [m.body for m in model.receive_message(JOBS, 10, 60)] == ["m3"]
    clock.advance(60)
    assert len(model.receive_message(JOBS, 10, 60)) == 3


def test_a_backlog_in_one_group_hides_later_groups_beyond_the_fifo_scan(clock: FakeClock) -> None:
    model = MemorySqs(clock, scan_depth=5)  # SQS scans the first 120,000 messages for free groups
    model.create_queue(QueueName=JOBS, Attributes={"FifoQueue": "true"})
    model.send_message_batch(JOBS, [out(f"a{i}", group="A") for i in range(5)])
    model.send_message_batch(JOBS, [out("b0", group="B")])
    held = model.receive_message(JOBS, 10, 60)
    assert [m.body for m in held] == ["a0", "a1", "a2", "a3", "a4"]
    assert model.receive_message(JOBS, 10, 60) == []  # B lies beyond the scan while A's backlog stays
    model.delete_message_batch(JOBS, [held[0].receipt])
    assert [m.body for m in model.receive_message(JOBS, 10, 60)] == ["b0"]
