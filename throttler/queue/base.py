"""The job-queue contract: what the throttler, the producer and the DLQ tools may rely on from an SQS
FIFO queue and its dead-letter queue, stated once, with the SQS rules behind each promise.

Every backend (the SQS adapter, the in-memory model) fills in a few small primitives (`_receive`,
`_delete`, `_change_visibility`, `_send`, `_max_message_bytes`, `_depth`); the shared behaviour that
keeps SQS from refusing a request lives here: whole seconds rounded up, the 12-hour visibility
limit counted from each receive, batches of 10 entries and at most 1 MiB, sizes in bytes with the
message attributes counted, and the dead-letter format (through `dead_letters`).
"""

from __future__ import annotations

import math
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from throttler.core.clock import Clock
from throttler.core.errors import StoreError

# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html
SQS_BATCH = 10  # entries per SendMessageBatch / DeleteMessageBatch / ChangeMessageVisibilityBatch
MAX_VISIBILITY_S = 43_200  # 12 hours, counted from the receive (see `change_visibility`)
# "The maximum allowed individual message size and the maximum total payload size (the sum of the
# individual lengths of all of the batched messages) are both 1 MiB":
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessageBatch.html
MAX_BATCH_BYTES = 1_048_576
MAX_MESSAGE_BYTES = 1_048_576  # the largest MaximumMessageSize a queue may be given
DEFAULT_MAX_MESSAGE_BYTES = 262_144  # a queue's MaximumMessageSize when none is configured (CreateQueue)
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/using-messagededuplicationid-property.html
DEDUPLICATION_WINDOW_S = 300

Target = Literal["jobs", "dlq"]
T = TypeVar("T")

# Characters SQS refuses in a body or a string attribute (outside XML's Char production):
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html
NOT_SQS_TEXT = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def sqs_text(text: str) -> str:
    """`text` with every character SQS would refuse escaped (`\\x08`): a reason that quotes a bad
    message (a key name, say) must never make the dead-lettering itself fail."""
    return NOT_SQS_TEXT.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class QueueError(StoreError):
    """SQS refused or failed a queue operation (after botocore's own retries)."""


class MessageTooLarge(QueueError):
    """A message (or a batch) that SQS would refuse for its size; nothing of it was sent."""

    def __init__(self, message: str, size_bytes: int, limit_bytes: int):
        super().__init__(message)
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


@dataclass(frozen=True)
class MessageAttribute:
    """One message attribute: `data_type` is String, Number or Binary (optionally `.label`)."""

    data_type: str
    value: str | bytes

    def size_bytes(self, name: str) -> int:
        """Name, type and value all count: "All parts of the message attribute, including Name, Type,
        and Value, are part of the message size restriction" (API_MessageAttributeValue.html)."""
        value = self.value if isinstance(self.value, bytes) else self.value.encode("utf-8")
        return len(name.encode("utf-8")) + len(self.data_type.encode("utf-8")) + len(value)


def message_size_bytes(body: str, attributes: Mapping[str, MessageAttribute] | None = None) -> int:
    """A message's size as SQS counts it against MaximumMessageSize: the body's UTF-8 bytes plus
    every attribute's name, data type and value."""
    return len(body.encode("utf-8")) + sum(a.size_bytes(n) for n, a in (attributes or {}).items())


@dataclass(frozen=True)
class QueuedMessage:
    """A message as one receive returned it. `receipt` is valid only for that receive (FIFO: until its
    visibility runs out or a later receive); `sent_at` is epoch seconds; `size_bytes` counts what SQS
    counts (body and attributes)."""

    message_id: str
    receipt: str
    body: str
    group: str
    dedup_id: str
    receive_count: int
    sent_at: float = 0.0
    size_bytes: int = 0
    attributes: Mapping[str, MessageAttribute] = field(default_factory=dict)


@dataclass(frozen=True)
class OutgoingMessage:
    """A message to send: body, group, deduplication id and optional attributes."""

    body: str
    group: str
    dedup_id: str
    attributes: Mapping[str, MessageAttribute] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return message_size_bytes(self.body, self.attributes)


@dataclass(frozen=True)
class DeadLetter:
    """A received message to move to the DLQ, with why and after how many real attempts."""

    message: QueuedMessage
    reason: str
    attempts: int


@dataclass(frozen=True)
class QueueDepth:
    """ApproximateNumberOfMessages (visible), ...NotVisible (in flight) and ...Delayed."""

    visible: int
    in_flight: int
    delayed: int = 0

    @property
    def total(self) -> int:
        return self.visible + self.in_flight + self.delayed


@dataclass(frozen=True)
class SendFailure:
    """One entry of a batch that SQS did not accept (`index` into the batch)."""

    index: int
    code: str
    message: str = ""


def whole_seconds(seconds: float) -> int:
    """SQS takes whole seconds: round UP, never truncate (0.95 s hidden as 0 s would release the
    message at once), within 0..43200. A float's noise (3.0000000004) does not cost a second."""
    if not seconds > 0:  # also NaN
        return 0
    return min(MAX_VISIBILITY_S, math.ceil(seconds - 1e-9))


def _chunks(items: Sequence[T], size: int = SQS_BATCH) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def send_batches(messages: Sequence[OutgoingMessage]) -> Iterator[list[tuple[int, OutgoingMessage]]]:
    """Split (in order) into SendMessageBatch requests: at most 10 entries and 1 MiB in total."""
    batch: list[tuple[int, OutgoingMessage]] = []
    total = 0
    for index, message in enumerate(messages):
        size = message.size_bytes
        if batch and (len(batch) == SQS_BATCH or total + size > MAX_BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append((index, message))
        total += size
    if batch:
        yield batch


class JobQueue(ABC):
    """The jobs queue (SQS FIFO) and its dead-letter queue.

    Rules every backend keeps, each as SQS keeps it (the contract suite, tests/contract/
    test_job_queue_contract.py, runs them over every backend):
    - FIFO: a group's messages are delivered strictly in order, and none of a group while any message
      of it is in flight; one receive may return several messages of one group (SQS "first attempts
      to return as many messages with the same message group ID as possible").
    - Every receive adds one to the message's `receive_count` (ApproximateReceiveCount), whoever
      receives it; when a receive finds a message already received `maxReceiveCount` times, SQS's
      redrive policy moves it to the DLQ instead of delivering it.
    - Visibility is in whole seconds, 0..43200, and a message's total visibility since a receive may
      not pass 12 hours; a FIFO receipt is valid only while that receive's visibility lasts.
    - A deduplication id seen in the last 5 minutes makes a send succeed but enqueue nothing.
    - Sizes are bytes: body plus attributes, against each queue's MaximumMessageSize.
    """

    def __init__(self, clock: Clock):
        self._clock = clock
        # Receipt -> when the receive that issued it started, for the 12-hour limit. Taken *before*
        # the request, so the time counted is never shorter than the time SQS counts.
        self._received_at: dict[str, float] = {}

    # ------------------------------------------------------------------ the jobs queue
    def receive(self, max_messages: int, visibility_s: float, wait_s: float = 0) -> list[QueuedMessage]:
        """Up to `max_messages` (1..10) messages, hidden for `visibility_s` (rounded up to whole
        seconds, at most 12 hours). `wait_s` is SQS's long polling (whole seconds, at most 20)."""
        started = self._clock.now()
        self._forget_receipts_before(started - MAX_VISIBILITY_S)
        messages = self._receive(
            "jobs", max(1, min(SQS_BATCH, int(max_messages))), whole_seconds(visibility_s), min(20, whole_seconds(wait_s))
        )
        for message in messages:
            self._received_at[message.receipt] = started
        return messages

    def delete(self, receipts: Sequence[str]) -> list[str]:
        """Delete in batches of 10; returns the receipts that failed (an expired or superseded FIFO
        receipt: that message will simply be received again)."""
        unique = list(dict.fromkeys(receipts))  # SQS refuses a batch that names one receipt twice
        failed: list[str] = []
        for chunk in _chunks(unique):
            failed += self._delete("jobs", chunk)
        for receipt in unique:
            self._received_at.pop(receipt, None)
        return failed

    def change_visibility(self, changes: Sequence[tuple[str, float]]) -> list[str]:
        """Hide each receipt's message for that many seconds from now (0 releases it at once); returns
        the receipts that failed. Seconds are rounded UP to whole seconds and cut so that the total
        since the receive stays within 12 hours: SQS refuses more ("Total VisibilityTimeout for the
        message is beyond the limit [43200 seconds]",
        https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibility.html;
        the 12 hours count from the ReceiveMessage, https://github.com/awsdocs/amazon-sqs-developer-guide/pull/40).
        A receipt this queue did not issue is only held to 12 hours from now."""
        now = self._clock.now()
        requests = [(receipt, self._allowed(receipt, seconds, now)) for receipt, seconds in changes]
        failed: list[str] = []
        for chunk in _chunks(requests):
            failed += self._change_visibility("jobs", chunk)
        return failed

    def _allowed(self, receipt: str, seconds: float, now: float) -> int:
        wanted = whole_seconds(seconds)
        received_at = self._received_at.get(receipt)
        if received_at is None:
            return wanted
        left = math.floor(MAX_VISIBILITY_S - (now - received_at))
        return max(0, min(wanted, left))

    def send(self, entries: Sequence[tuple[str, str, str | None]]) -> list[str]:
        """Send (body, group, deduplication id) triples in order, in batches of at most 10 entries and
        1 MiB; returns the deduplication ids (a fresh one where none was given). Raises MessageTooLarge,
        before sending anything, for a message over the queue's MaximumMessageSize."""
        messages = [OutgoingMessage(body, group, dedup or uuid.uuid4().hex) for body, group, dedup in entries]
        self.send_messages("jobs", messages)
        return [m.dedup_id for m in messages]

    def send_messages(self, target: Target, messages: Sequence[OutgoingMessage]) -> None:
        """Send to `target` ('jobs' or 'dlq') in order; raises QueueError if SQS refused an entry."""
        self.check_sizes(target, messages)
        for batch in send_batches(messages):
            failures = self._send(target, [m for _, m in batch])
            if failures:
                first = failures[0]
                raise QueueError(f"sending to {target} failed for {len(failures)} message(s): {first.code} {first.message}")

    def check_sizes(self, target: Target, messages: Sequence[OutgoingMessage]) -> None:
        """Raise MessageTooLarge for the first message over `target`'s MaximumMessageSize."""
        limit = self._max_message_bytes(target)
        for message in messages:
            size = message.size_bytes
            if size > limit:
                raise MessageTooLarge(
                    f"a message of {size} bytes (body and attributes) is over the {target} queue's"
                    f" MaximumMessageSize of {limit} bytes",
                    size,
                    limit,
                )

    def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Move messages to the DLQ with their reason and attempts (dead_letters.py holds the format),
        then delete them from the jobs queue. Each message is deleted only once the DLQ accepted it.
        Raises MessageTooLarge after moving the others if one cannot fit the DLQ's MaximumMessageSize."""
        from throttler.queue.dead_letters import dead_letter_message

        if not letters:
            return
        limit = self._max_message_bytes("dlq")
        outgoing = [(letter, dead_letter_message(letter)) for letter in letters]
        fits = [(letter, m) for letter, m in outgoing if m.size_bytes <= limit]
        too_large = [m for _, m in outgoing if m.size_bytes > limit]
        for batch in send_batches([m for _, m in fits]):
            failures = self._send("dlq", [m for _, m in batch])
            refused = {f.index for f in failures}
            sent = [fits[index][0] for position, (index, _) in enumerate(batch) if position not in refused]
            self.delete([letter.message.receipt for letter in sent])
            if failures:
                first = failures[0]
                raise QueueError(f"dead-lettering failed for {len(failures)} message(s): {first.code} {first.message}".strip())
        if too_large:
            size = max(m.size_bytes for m in too_large)
            raise MessageTooLarge(
                f"{len(too_large)} message(s) of up to {size} bytes with the dead-letter attributes do not fit"
                f" the DLQ's MaximumMessageSize of {limit} bytes: they stay in the jobs queue",
                size,
                limit,
            )

    def depth(self) -> QueueDepth:
        return self._depth("jobs")

    def dlq_depth(self) -> QueueDepth:
        return self._depth("dlq")

    # ------------------------------------------------------------------ the DLQ, for dead_letters.py
    def receive_dead(self, max_messages: int, visibility_s: float) -> list[QueuedMessage]:
        """Up to `max_messages` DLQ messages with their attributes, hidden for `visibility_s`."""
        return self._receive("dlq", max(1, min(SQS_BATCH, int(max_messages))), whole_seconds(visibility_s), 0)

    def delete_dead(self, receipts: Sequence[str]) -> list[str]:
        failed: list[str] = []
        for chunk in _chunks(list(dict.fromkeys(receipts))):
            failed += self._delete("dlq", chunk)
        return failed

    def release_dead(self, receipts: Sequence[str]) -> list[str]:
        """Make received DLQ messages visible again at once."""
        failed: list[str] = []
        for chunk in _chunks([(r, 0) for r in dict.fromkeys(receipts)]):
            failed += self._change_visibility("dlq", chunk)
        return failed

    def _forget_receipts_before(self, oldest: float) -> None:
        # Receipts are recorded in receive order: drop from the front while older than 12 hours.
        while self._received_at:
            receipt, at = next(iter(self._received_at.items()))
            if at >= oldest:
                return
            del self._received_at[receipt]

    # ------------------------------------------------------------------ backend primitives
    @abstractmethod
    def _receive(self, target: Target, max_messages: int, visibility_s: int, wait_s: int) -> list[QueuedMessage]:
        """One ReceiveMessage: 1..10 messages, whole-second visibility and wait."""

    @abstractmethod
    def _delete(self, target: Target, receipts: Sequence[str]) -> list[str]:
        """One DeleteMessageBatch of at most 10 distinct receipts; returns those that failed."""

    @abstractmethod
    def _change_visibility(self, target: Target, changes: Sequence[tuple[str, int]]) -> list[str]:
        """One ChangeMessageVisibilityBatch of at most 10 entries; returns the receipts that failed."""

    @abstractmethod
    def _send(self, target: Target, messages: Sequence[OutgoingMessage]) -> list[SendFailure]:
        """One SendMessageBatch (at most 10 entries, 1 MiB); returns the entries SQS refused."""

    @abstractmethod
    def _max_message_bytes(self, target: Target) -> int:
        """The queue's MaximumMessageSize."""

    @abstractmethod
    def _depth(self, target: Target) -> QueueDepth:
        """The queue's approximate message counts."""
