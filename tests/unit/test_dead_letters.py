"""The dead-letter format and the DLQ tools (peek, redrive) on the in-memory SQS model: a dead-lettered
job keeps its body, group and id; a redrive gives it back its id and fresh attempts, and is safe to
interrupt and rerun (promise 4: nothing lost, a job keeps its id through retries and redrives)."""

from __future__ import annotations

import json

import pytest

from throttler.core.clock import FakeClock
from throttler.queue import (
    DeadLetter,
    DeadLetters,
    MemoryJobQueue,
    MemorySqs,
    MessageAttribute,
    MessageTooLarge,
    QueuedMessage,
    SqsJobQueue,
)
from throttler.queue.dead_letters import MOVED_BY_SQS, REDRIVE_VISIBILITY_S, dead_letter_message, job_id_of, with_job_id

JOBS, DLQ = "jobs.fifo", "dlq.fifo"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def model(clock: FakeClock) -> MemorySqs:
    model = MemorySqs(clock)
    model.create_queue(QueueName=DLQ, Attributes={"FifoQueue": "true", "MaximumMessageSize": "1048576"})
    policy = {"deadLetterTargetArn": f"arn:aws:sqs:us-east-1:000000000000:{DLQ}", "maxReceiveCount": 1000}
    model.create_queue(QueueName=JOBS, Attributes={"FifoQueue": "true", "RedrivePolicy": json.dumps(policy)})
    return model


@pytest.fixture
def queue(model: MemorySqs) -> MemoryJobQueue:
    return MemoryJobQueue(model, JOBS, DLQ)


def dead_letter(queue: MemoryJobQueue, jobs: list[tuple[str, str, str]], reason: str = "http 400", attempts: int = 3) -> None:
    queue.send(jobs)
    moved = 0
    while moved < len(jobs):
        batch = queue.receive(10, 60)
        queue.dead_letter([DeadLetter(m, reason, attempts) for m in batch])
        moved += len(batch)


def envelope(**extra: object) -> str:
    return json.dumps({"task": "http", "payload": {"url": "https://api.example.com/é"}, **extra}, ensure_ascii=False)


# ------------------------------------------------------------------------------------------ the format
def test_a_dead_letter_carries_the_original_deduplication_id_as_job_id() -> None:
    def letter(message: QueuedMessage) -> DeadLetter:
        return DeadLetter(message, "why", 2)

    plain = QueuedMessage("m-1", "r", envelope(id="own-id"), "g", "dedup-1", 1)
    assert dead_letter_message(letter(plain)).attributes["job_id"].value == "dedup-1"
    carried = {"job_id": MessageAttribute("String", "job-1")}
    redriven = QueuedMessage("m-2", "r", "{}", "g", "redrive-dedup", 1, attributes=carried)
    assert job_id_of(redriven) == "job-1"
    assert dead_letter_message(letter(redriven)).attributes["job_id"].value == "job-1"


def test_a_reason_is_cut_to_1000_characters_and_made_safe_for_sqs() -> None:
    message = QueuedMessage("m-1", "r", "{}", "", "dedup-1", 1)
    outgoing = dead_letter_message(DeadLetter(message, "\x00" + "x" * 5000, 0))
    reason = outgoing.attributes["error_reason"].value
    assert isinstance(reason, str) and reason.startswith("\\x00x") and len(reason) == 1003
    assert outgoing.group == "ungrouped" and outgoing.attributes["attempts"].value == "0"


def test_with_job_id_adds_the_id_and_keeps_the_rest_byte_for_byte() -> None:
    body = '{ "task": "http",\n  "payload": {"x": "\\u00e9 ü"} }\n'
    written = with_job_id(body, "job-7")
    assert written == '{ "task": "http",\n  "payload": {"x": "\\u00e9 ü"},"id":"job-7"}\n'
    assert json.loads(written)["id"] == "job-7"
    assert with_job_id("{}", "job-7") == '{"id":"job-7"}'
    assert json.loads(with_job_id('{"task": "http", "id": null}', "job-7"))["id"] == "job-7"
    assert with_job_id(envelope(id="own"), "job-7") == envelope(id="own")
    assert with_job_id("not json {", "job-7") == "not json {"
    assert with_job_id("[1, 2]", "job-7") == "[1, 2]"


# ------------------------------------------------------------------------------------------ peek
def test_peek_shows_reason_attempts_job_id_and_leaves_the_jobs_where_they_are(queue: MemoryJobQueue) -> None:
    dead_letter(queue, [(envelope(), "customer-1", "job-1"), (envelope(), "customer-2", "job-2")], "attempts exhausted", 3)
    letters = DeadLetters(queue).peek()
    assert sorted((d.group, d.job_id, d.attempts, d.error_reason) for d in letters) == [
        ("customer-1", "job-1", 3, "attempts exhausted"),
        ("customer-2", "job-2", 3, "attempts exhausted"),
    ]
    assert queue.dlq_depth().visible == 2
    assert len(DeadLetters(queue).peek(limit=1)) == 1


def test_a_job_moved_by_sqs_reads_as_such_with_its_own_id(model: MemorySqs, queue: MemoryJobQueue, clock: FakeClock) -> None:
    model.set_queue_attributes(QueueUrl=JOBS, Attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": f"arn:aws:sqs:us-east-1:000000000000:{DLQ}", "maxReceiveCount": 1})})
    queue.send([(envelope(), "g", "job-1")])
    queue.receive(1, 0)
    assert queue.receive(1, 0) == []
    [letter] = DeadLetters(queue).peek()
    assert (letter.error_reason, letter.job_id, letter.attempts) == (MOVED_BY_SQS, "job-1", None)
    assert DeadLetters(queue).redrive() == 1
    [back] = queue.receive(1, 60)
    assert json.loads(back.body)["id"] == "job-1"


# ------------------------------------------------------------------------------------------ redrive
def test_a_redriven_job_keeps_its_id_where_its_envelope_had_none(queue: MemoryJobQueue) -> None:
    dead_letter(queue, [(envelope(), "g", "job-1"), (envelope(id="own"), "g", "job-2"), ("poison {", "g", "job-3")])
    assert DeadLetters(queue).redrive() == 3
    back = queue.receive(10, 60)
    assert [json.loads(m.body).get("id") for m in back[:2]] == ["job-1", "own"]
    assert back[2].body == "poison {"
    assert json.loads(back[0].body)["payload"] == json.loads(envelope())["payload"]


def test_a_redrive_resets_the_attempts_before_it_sends(queue: MemoryJobQueue) -> None:
    dead_letter(queue, [(envelope(), "g", f"job-{i}") for i in range(12)])
    calls: list[tuple[list[str], int]] = []
    moved = DeadLetters(queue).redrive(reset_attempts=lambda ids: calls.append((ids, queue.depth().total)))
    assert moved == 12
    assert sorted(i for ids, _ in calls for i in ids) == sorted(f"job-{i}" for i in range(12))
    assert calls[0][1] == 0  # nothing was sent before the first reset


def test_a_redrive_keeps_each_group_in_order_and_stops_at_its_limit(queue: MemoryJobQueue) -> None:
    jobs = [(envelope(seq=i), "A" if i < 12 else "B", f"job-{i}") for i in range(14)]
    dead_letter(queue, jobs)
    assert DeadLetters(queue).redrive(limit=5) == 5
    assert queue.dlq_depth().total == 9
    assert DeadLetters(queue).redrive() == 9
    order: dict[str, list[int]] = {}
    while batch := queue.receive(10, 60):
        for m in batch:
            order.setdefault(m.group, []).append(json.loads(m.body)["seq"])
        queue.delete([m.receipt for m in batch])
    assert order == {"A": list(range(12)), "B": [12, 13]}


def test_a_redrive_interrupted_after_sending_is_safe_to_run_again(queue: MemoryJobQueue, clock: FakeClock) -> None:
    dead_letter(queue, [(envelope(), "g", "job-1")])
    tools = DeadLetters(queue)
    real_delete = queue.delete_dead

    def interrupted(receipts: object) -> list[str]:
        raise KeyboardInterrupt  # the operator's Ctrl-C, between the send and the delete

    queue.delete_dead = interrupted  # type: ignore[method-assign,assignment]
    with pytest.raises(KeyboardInterrupt):
        tools.redrive()
    queue.delete_dead = real_delete  # type: ignore[method-assign]
    assert queue.depth().total == 1 and queue.dlq_depth().total == 1  # sent, not deleted: nothing lost
    clock.advance(REDRIVE_VISIBILITY_S)
    assert tools.redrive() == 1
    assert queue.dlq_depth().total == 0 and queue.depth().total == 1  # SQS dropped the second copy


def test_a_redriven_job_that_fails_again_reaches_the_dlq_again(queue: MemoryJobQueue) -> None:
    dead_letter(queue, [(envelope(), "g", "job-1")])
    DeadLetters(queue).redrive()
    [again] = queue.receive(1, 60)
    queue.dead_letter([DeadLetter(again, "http 409", 1)])
    assert [(d.error_reason, d.job_id) for d in DeadLetters(queue).peek()] == [("http 409", "job-1")]


def test_a_job_redriven_twice_keeps_its_id_and_gets_its_attempts_reset_each_time(queue: MemoryJobQueue) -> None:
    dead_letter(queue, [(envelope(), "g", "job-1"), ("poison {", "h", "job-2")])
    reset: list[str] = []
    for round_ in range(2):
        assert DeadLetters(queue).redrive(reset_attempts=reset.extend) == 2
        held = queue.receive(10, 60)
        assert [json.loads(m.body)["id"] for m in held if m.group == "g"] == ["job-1"]
        queue.dead_letter([DeadLetter(m, f"round {round_}", 1) for m in held])
    assert sorted(reset) == ["job-1", "job-1", "job-2", "job-2"]
    assert sorted((d.job_id, d.error_reason) for d in DeadLetters(queue).peek()) == [("job-1", "round 1"), ("job-2", "round 1")]


def test_a_job_too_large_for_the_dlq_stays_and_the_others_move(model: MemorySqs, queue: MemoryJobQueue) -> None:
    model.set_queue_attributes(QueueUrl=JOBS, Attributes={"MaximumMessageSize": "262144"})
    model.set_queue_attributes(QueueUrl=DLQ, Attributes={"MaximumMessageSize": "262144"})
    queue.send([("x" * 262_144, "big", "big"), ("small", "small", "small")])
    held = queue.receive(10, 60)
    with pytest.raises(MessageTooLarge) as raised:
        queue.dead_letter([DeadLetter(m, "why", 1) for m in held])
    assert raised.value.limit_bytes == 262_144
    assert queue.dlq_depth().total == 1 and queue.depth().total == 1


def test_dead_letters_still_takes_a_client_and_the_two_urls() -> None:
    tools = DeadLetters(object(), "https://sqs/dlq.fifo", "https://sqs/jobs.fifo")
    assert isinstance(tools.queue, SqsJobQueue)
    assert (tools.queue.dlq_url, tools.queue.queue_url) == ("https://sqs/dlq.fifo", "https://sqs/jobs.fifo")


# Found by the reliability review: a retryable job near 256 KiB could never be redriven (its copy with the id
# was 262,400 bytes, over the jobs queue's 262,144): every redrive failed with MessageTooLarge.
def _sized(total: int, **extra: object) -> str:
    base = envelope(**extra)
    pad = total - len(base.encode("utf-8")) - len(b',"pad":""')
    return json.dumps({**json.loads(base), "pad": "x" * pad}, ensure_ascii=False, separators=(",", ":"))


def test_a_job_near_the_size_limit_is_redriven_with_its_id_in_whatever_fits_or_left_in_the_dlq(
    queue: MemoryJobQueue,
) -> None:
    fits_one = _sized(262_144 - 60)  # room for the id in the body or as an attribute, not both
    no_room = _sized(262_144 - 8)
    dead_letter(queue, [(fits_one, "g1", "job-fits"), (no_room, "g2", "job-too-big")])
    letters = DeadLetters(queue)
    assert letters.redrive() == 1
    assert len(letters.too_large) == 1
    (copy,) = queue.receive(10, 60)
    assert job_id_of(copy) == "job-fits" or json.loads(copy.body)["id"] == "job-fits"
    assert [d.job_id for d in DeadLetters(queue).peek()] == ["job-too-big"]  # never lost
