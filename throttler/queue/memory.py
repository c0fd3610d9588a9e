"""An in-memory model of SQS FIFO queues, traps included, on an injected clock; and the JobQueue
contract on it, for unit tests and the virtual-time simulation.

What it keeps as SQS does (each rule with its source in the docstrings below, and checked against
SQS on moto by tests/contract/test_job_queue_contract.py): message groups that block while any of
their messages is in flight, in-order delivery within a group (several of one group per receive
when possible), visibility in whole seconds 0..43200 and at most 12 hours from a receive, FIFO
receipts that expire with their visibility or a later receive, ApproximateReceiveCount, the redrive
policy at maxReceiveCount, retention (reset by a move to a FIFO DLQ), deduplication for 5 minutes,
and sizes in bytes with attributes against each queue's MaximumMessageSize and the 1 MiB batch.
Long polling returns at once: a virtual-time driver does the waiting (`on_send` tells it when a
message arrives).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from throttler.core.clock import Clock
from throttler.queue.base import (
    JobQueue,
    MessageTooLarge,
    OutgoingMessage,
    QueueDepth,
    QueuedMessage,
    QueueError,
    SendFailure,
    Target,
)
from throttler.queue.model import FIFO_IN_FLIGHT_QUOTA, FIFO_SCAN_DEPTH, Message, ModelQueue
from throttler.queue.sqs_rules import QueueConfig, SqsError, validate_batch


@dataclass(frozen=True)
class MessageView:
    """A message as a checker sees it: where it is and how often it was received."""

    queue: str
    message_id: str
    group: str
    dedup_id: str
    body: str
    receive_count: int
    in_flight: bool
    sent_at: float
    moved_from: str | None  # the source queue, when SQS's redrive policy moved it here


@dataclass(frozen=True)
class RedriveMove:
    """One message that SQS's redrive policy moved (not one the throttler dead-lettered)."""

    message_id: str
    dedup_id: str
    group: str
    source: str
    target: str
    receive_count: int
    at: float


def _queue_name(url_or_name: str) -> str:
    return url_or_name.rstrip("/").rsplit("/", 1)[-1]


class MemorySqs:
    """Named SQS queues in memory. The control plane is boto3-shaped (`create_queue(QueueName=...,
    Attributes=...)`, `get_queue_attributes`, `set_queue_attributes`, `get_queue_url`) so that the
    stage's queues can be built from serverless.yml exactly as in moto; the data plane takes plain
    arguments. Times come from `clock`; the FIFO quotas default to SQS's (a test may lower them)."""

    ACCOUNT = "000000000000"
    REGION = "us-east-1"

    def __init__(self, clock: Clock, in_flight_quota: int = FIFO_IN_FLIGHT_QUOTA, scan_depth: int = FIFO_SCAN_DEPTH):
        self.clock = clock
        self.in_flight_quota = in_flight_quota
        self.scan_depth = scan_depth
        self.on_send: list[Callable[[str, MessageView], None]] = []
        self.redrive_moves: list[RedriveMove] = []
        self._queues: dict[str, ModelQueue] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ control plane
    def create_queue(self, QueueName: str, Attributes: Mapping[str, Any] | None = None, **_: Any) -> dict[str, str]:
        attributes = dict(Attributes or {})
        if QueueName not in self._queues:
            arn = f"arn:aws:sqs:{self.REGION}:{self.ACCOUNT}:{QueueName}"
            config = QueueConfig.from_attributes(QueueName, arn, attributes, self._dlq_name)
            self._queues[QueueName] = ModelQueue(config, self.in_flight_quota, self.scan_depth)
        return {"QueueUrl": QueueName}

    def set_queue_attributes(self, QueueUrl: str, Attributes: Mapping[str, Any]) -> None:
        queue = self._queue(QueueUrl)
        queue.config = queue.config.updated(dict(Attributes), self._dlq_name)

    def get_queue_attributes(self, QueueUrl: str, AttributeNames: Sequence[str] = ("All",)) -> dict[str, dict[str, str]]:
        queue = self._queue(QueueUrl)
        depth = self.depth(QueueUrl)
        values = {
            **queue.config.attributes(),
            "ApproximateNumberOfMessages": str(depth.visible),
            "ApproximateNumberOfMessagesNotVisible": str(depth.in_flight),
            "ApproximateNumberOfMessagesDelayed": str(depth.delayed),
        }
        wanted = values if "All" in AttributeNames else {k: v for k, v in values.items() if k in AttributeNames}
        return {"Attributes": wanted}

    def get_queue_url(self, QueueName: str) -> dict[str, str]:
        self._queue(QueueName)
        return {"QueueUrl": QueueName}

    def _queue(self, url_or_name: str) -> ModelQueue:
        queue = self._queues.get(_queue_name(url_or_name))
        if queue is None:
            raise SqsError("AWS.SimpleQueueService.NonExistentQueue", f"queue {url_or_name} does not exist")
        return queue

    def _dlq_name(self, arn: str) -> str:
        name = arn.rsplit(":", 1)[-1]
        if name not in self._queues:
            raise SqsError("AWS.SimpleQueueService.NonExistentQueue", f"dead-letter target {arn} does not exist")
        return name

    # ------------------------------------------------------------------ data plane
    def send_message_batch(self, queue: str, entries: Sequence[OutgoingMessage]) -> tuple[list[str], list[SendFailure]]:
        """SendMessageBatch: 1..10 entries, 1 MiB in all, each within the queue's MaximumMessageSize
        (a request that breaks one of these is refused whole). A FIFO entry whose deduplication id
        was accepted in the last 5 minutes succeeds and enqueues nothing. Returns the message ids."""
        target = self._queue(queue)
        now = self.clock.now()
        validate_batch(target.config, entries)
        ids: list[str] = []
        for entry in entries:
            dedup_id = entry.dedup_id
            if not dedup_id and target.config.content_based_deduplication:
                dedup_id = hashlib.sha256(entry.body.encode("utf-8")).hexdigest()
            original = target.duplicate_of(dedup_id, now)
            if original is not None:
                ids.append(original)
                continue
            message = Message(
                message_id=self._new_id(),
                body=entry.body,
                group=entry.group,
                dedup_id=dedup_id,
                attributes=dict(entry.attributes),
                sent_at=now,
                enqueued_at=now,
                seq=0,
            )
            target.enqueue(message, now)
            ids.append(message.message_id)
            view = self._view(target, message, now)
            for callback in list(self.on_send):
                callback(target.config.name, view)
        return ids, []

    def receive_message(
        self, queue: str, max_messages: int = 1, visibility_timeout: int | None = None, wait_s: int = 0
    ) -> list[QueuedMessage]:
        """ReceiveMessage. `wait_s` (long polling) is checked but never waits."""
        source = self._queue(queue)
        _check_int("MaxNumberOfMessages", max_messages, 1, 10)
        _check_int("WaitTimeSeconds", wait_s, 0, 20)
        timeout = source.config.visibility_timeout_s if visibility_timeout is None else visibility_timeout
        _check_int("VisibilityTimeout", timeout, 0, 43_200)
        now = self.clock.now()
        received, moved = source.receive(max_messages, timeout, now, lambda: f"rh-{self._new_id()}")
        for message in moved:
            self._move_to_dlq(source, message, now)
        return received

    def _move_to_dlq(self, source: ModelQueue, message: Message, now: float) -> None:
        """SQS's redrive: "When the ReceiveCount for a message exceeds the maxReceiveCount for a queue,
        Amazon SQS moves the message to the dead-letter queue" (sqs-dead-letter-queues.html). The message
        keeps its id, body, attributes, group and deduplication id (no deduplication on the way); "For
        FIFO queues, the enqueue timestamp resets when the message is moved to a dead-letter queue"
        (setting-up-dead-letter-queue-retention.html), which restarts its retention."""
        assert source.config.redrive is not None
        target = self._queues[source.config.redrive[0]]
        moved = Message(
            message_id=message.message_id,
            body=message.body,
            group=message.group,
            dedup_id=message.dedup_id,
            attributes=message.attributes,
            sent_at=message.sent_at,
            enqueued_at=now if target.config.fifo else message.enqueued_at,
            seq=0,
            receive_count=message.receive_count,
            moved_from=source.config.name,
        )
        target.enqueue(moved, now, from_send=False)
        self.redrive_moves.append(
            RedriveMove(message.message_id, message.dedup_id, message.group, source.config.name, target.config.name,
                        message.receive_count, now)
        )

    def delete_message_batch(self, queue: str, receipts: Sequence[str]) -> list[tuple[str, str]]:
        """DeleteMessageBatch; returns (receipt, error code) for each entry that failed."""
        target = self._queue(queue)
        _check_batch(receipts, "Delete")
        if len(set(receipts)) != len(receipts):
            raise SqsError("AWS.SimpleQueueService.BatchEntryIdsNotDistinct", "a receipt handle repeats in the batch")
        now = self.clock.now()
        failed = []
        for receipt in receipts:
            code = target.delete(receipt, now)
            if code:
                failed.append((receipt, code))
        return failed

    def change_message_visibility_batch(self, queue: str, changes: Sequence[tuple[str, int]]) -> list[tuple[str, str]]:
        """ChangeMessageVisibilityBatch; returns (receipt, error code) for each entry that failed."""
        target = self._queue(queue)
        _check_batch(changes, "ChangeMessageVisibility")
        now = self.clock.now()
        failed = []
        for receipt, seconds in changes:
            code = target.change_visibility(receipt, seconds, now)
            if code:
                failed.append((receipt, code))
        return failed

    def depth(self, queue: str) -> QueueDepth:
        return self._queue(queue).depth(self.clock.now())

    # ------------------------------------------------------------------ hooks for checkers and drivers
    def messages(self, queue: str) -> list[MessageView]:
        """Every message the queue holds (after retention), with its receive count and origin."""
        target = self._queue(queue)
        now = self.clock.now()
        target.expire(now)
        return [self._view(target, m, now) for m in target.all_messages()]

    def next_visible_at(self, queue: str) -> float | None:
        """When the queue next has a deliverable message that it has not now (for a virtual-time
        driver that long-polls): the earliest end of a visibility timeout or delay; None if none."""
        return self._queue(queue).next_change(self.clock.now())

    def _view(self, queue: ModelQueue, message: Message, now: float) -> MessageView:
        return MessageView(
            queue.config.name, message.message_id, message.group, message.dedup_id, message.body,
            message.receive_count, message.in_flight(now), message.sent_at, message.moved_from,
        )

    def _new_id(self) -> str:
        n = next(self._ids)
        return f"{n:08x}-0000-4000-8000-{n:012x}"


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SqsError("InvalidParameterValue", f"Value {value!r} for parameter {name} is invalid: a whole number {low}..{high}")


def _check_batch(entries: Sequence[Any], action: str) -> None:
    if not entries:
        raise SqsError("AWS.SimpleQueueService.EmptyBatchRequest", f"There should be at least one {action}BatchRequestEntry")
    if len(entries) > 10:
        raise SqsError("AWS.SimpleQueueService.TooManyEntriesInBatchRequest", f"{len(entries)} entries: at most 10")


class MemoryJobQueue(JobQueue):
    """The JobQueue contract on a MemorySqs model: the same rounding, limits and dead-letter format as
    the SQS adapter, against the model's own rules."""

    def __init__(self, model: MemorySqs, jobs_queue_name: str, dlq_name: str):
        super().__init__(model.clock)
        self.model = model
        self.names: dict[Target, str] = {"jobs": jobs_queue_name, "dlq": dlq_name}

    def _receive(self, target: Target, max_messages: int, visibility_s: int, wait_s: int) -> list[QueuedMessage]:
        return self._model(lambda: self.model.receive_message(self.names[target], max_messages, visibility_s, wait_s))

    def _delete(self, target: Target, receipts: Sequence[str]) -> list[str]:
        return [r for r, _ in self._model(lambda: self.model.delete_message_batch(self.names[target], receipts))]

    def _change_visibility(self, target: Target, changes: Sequence[tuple[str, int]]) -> list[str]:
        return [r for r, _ in self._model(lambda: self.model.change_message_visibility_batch(self.names[target], changes))]

    def _send(self, target: Target, messages: Sequence[OutgoingMessage]) -> list[SendFailure]:
        _, failures = self._model(lambda: self.model.send_message_batch(self.names[target], messages))
        return failures

    def _max_message_bytes(self, target: Target) -> int:
        return self.model._queue(self.names[target]).config.max_message_bytes

    def _depth(self, target: Target) -> QueueDepth:
        return self.model.depth(self.names[target])

    @staticmethod
    def _model(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except SqsError as exc:
            if exc.limit_bytes:
                raise MessageTooLarge(str(exc), exc.size_bytes, exc.limit_bytes) from exc
            raise QueueError(f"sqs failed: {exc.code}") from exc
