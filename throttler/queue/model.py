"""One SQS queue's state and rules, in memory: the inside of `memory.MemorySqs`.

Sources for each rule (AWS documentation unless said otherwise):
- FIFO delivery: within a group strictly in order; "When receiving messages from a FIFO queue with
  multiple message group IDs, Amazon SQS first attempts to return as many messages with the same
  message group ID as possible"; a received, undeleted message blocks its group
  (FIFO-queues-understanding-logic.html, knowledge-center/sqs-fifo-messages-not-returned).
- Visibility: whole seconds 0..43200 (API_ChangeMessageVisibility.html); 12 hours at most from the
  receive, extensions included (sqs-visibility-timeout.html, awsdocs/amazon-sqs-developer-guide PR 40).
- FIFO receipts: "a receipt handle expires after a visibility timeout period", a later receive gives
  a new one, and DeleteMessage with an expired one fails with "The receipt handle has expired"
  (knowledge-center/sqs-receipt-handle-error; aws/aws-sdk-js#1279: a visibility of 0 expires it too).
- Redrive: moved when a receive finds the message already received maxReceiveCount times
  (sqs-dead-letter-queues.html; moto/sqs/models.py `receive_message` does the same check).
- Deduplication: 5 minutes from the accepted send, whether or not the message was since received or
  deleted (using-messagededuplicationid-property.html).
- Retention: MessageRetentionPeriod from the enqueue time; a FIFO DLQ restarts it
  (setting-up-dead-letter-queue-retention.html).
- Sizes: body UTF-8 bytes plus attribute names, types and values (API_MessageAttributeValue.html),
  within MaximumMessageSize (1,024..1,048,576, API_SetQueueAttributes.html); a batch 10 entries and
  1 MiB in all (API_SendMessageBatch.html); allowed characters (API_SendMessage.html).
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from throttler.queue.base import (
    DEDUPLICATION_WINDOW_S,
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_VISIBILITY_S,
    NOT_SQS_TEXT,
    MessageAttribute,
    OutgoingMessage,
    QueueDepth,
    QueuedMessage,
    message_size_bytes,
)

SQS_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # MessageGroupId, MessageDeduplicationId
ATTRIBUTE_NAME = re.compile(r"^(?!\.)(?!.*\.\.)(?!(?i:aws\.|amazon\.))[A-Za-z0-9_.\-]{1,256}(?<!\.)$")
EXPIRED = "InvalidParameterValue"  # "Reason: The receipt handle has expired."
INVALID_RECEIPT = "ReceiptHandleIsInvalid"


class SqsError(Exception):
    """What SQS answers with an error code (the whole request failed)."""

    def __init__(self, code: str, message: str, size_bytes: int = 0, limit_bytes: int = 0):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


@dataclass(eq=False)
class Message:
    message_id: str
    body: str
    group: str
    dedup_id: str
    attributes: Mapping[str, MessageAttribute]
    sent_at: float  # SentTimestamp
    enqueued_at: float  # what retention counts from
    seq: int
    receive_count: int = 0
    visible_at: float = 0.0  # in flight while a receipt exists and now < visible_at
    available_at: float = 0.0  # DelaySeconds
    receipt: str | None = None  # the latest receipt, the only one that can be valid
    received_at: float = 0.0
    receipts: list[str] = field(default_factory=list)
    moved_from: str | None = None
    gone: bool = False

    def in_flight(self, now: float) -> bool:
        return self.receipt is not None and now < self.visible_at

    def queued(self, receipt: str) -> QueuedMessage:
        return QueuedMessage(
            message_id=self.message_id,
            receipt=receipt,
            body=self.body,
            group=self.group,
            dedup_id=self.dedup_id,
            receive_count=self.receive_count,
            sent_at=self.sent_at,
            size_bytes=message_size_bytes(self.body, self.attributes),
            attributes=dict(self.attributes),
        )


def _int(attributes: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    raw = attributes.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise SqsError("InvalidAttributeValue", f"Invalid value for the parameter {name}: {raw!r}") from None
    if not low <= value <= high:
        raise SqsError("InvalidAttributeValue", f"Invalid value for the parameter {name}: {value} (allowed {low}..{high})")
    return value


def _bool(attributes: Mapping[str, Any], name: str) -> bool:
    return str(attributes.get(name, "false")).lower() == "true"


@dataclass(frozen=True)
class QueueConfig:
    """A queue's attributes, validated as CreateQueue / SetQueueAttributes validate them."""

    name: str
    arn: str
    fifo: bool
    visibility_timeout_s: int = 30
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    retention_s: int = 345_600
    delay_s: int = 0
    content_based_deduplication: bool = False
    redrive: tuple[str, int] | None = None  # (DLQ name, maxReceiveCount)
    redrive_json: str | None = None

    @classmethod
    def from_attributes(cls, name: str, arn: str, attributes: Mapping[str, Any], dlq_name: Callable[[str], str]) -> QueueConfig:
        fifo = _bool(attributes, "FifoQueue")
        if fifo != name.endswith(".fifo"):
            raise SqsError("InvalidParameterValue", "a FIFO queue's name must end in .fifo, and only a FIFO queue's")
        return cls(name, arn, fifo).updated(attributes, dlq_name)

    def updated(self, attributes: Mapping[str, Any], dlq_name: Callable[[str], str]) -> QueueConfig:
        redrive, redrive_json = self.redrive, self.redrive_json
        if "RedrivePolicy" in attributes:
            policy = attributes["RedrivePolicy"]
            policy = json.loads(policy) if isinstance(policy, str) and policy else policy
            if policy:
                count = _int(policy, "maxReceiveCount", 10, 1, 1000)
                redrive = (dlq_name(str(policy["deadLetterTargetArn"])), count)
                redrive_json = json.dumps({"deadLetterTargetArn": policy["deadLetterTargetArn"], "maxReceiveCount": count})
            else:
                redrive, redrive_json = None, None
        return replace(
            self,
            visibility_timeout_s=_int(attributes, "VisibilityTimeout", self.visibility_timeout_s, 0, MAX_VISIBILITY_S),
            max_message_bytes=_int(attributes, "MaximumMessageSize", self.max_message_bytes, 1024, MAX_MESSAGE_BYTES),
            retention_s=_int(attributes, "MessageRetentionPeriod", self.retention_s, 60, 1_209_600),
            delay_s=_int(attributes, "DelaySeconds", self.delay_s, 0, 900),
            content_based_deduplication=_bool(attributes, "ContentBasedDeduplication")
            if "ContentBasedDeduplication" in attributes
            else self.content_based_deduplication,
            redrive=redrive,
            redrive_json=redrive_json,
        )

    def attributes(self) -> dict[str, str]:
        values = {
            "QueueArn": self.arn,
            "FifoQueue": str(self.fifo).lower(),
            "VisibilityTimeout": str(self.visibility_timeout_s),
            "MaximumMessageSize": str(self.max_message_bytes),
            "MessageRetentionPeriod": str(self.retention_s),
            "DelaySeconds": str(self.delay_s),
            "ContentBasedDeduplication": str(self.content_based_deduplication).lower(),
        }
        if self.redrive_json:
            values["RedrivePolicy"] = self.redrive_json
        return values


def validate_batch(config: QueueConfig, entries: Sequence[OutgoingMessage]) -> None:
    """Refuse the whole SendMessageBatch as SQS would: entry count, total size, then each entry."""
    if not entries:
        raise SqsError("AWS.SimpleQueueService.EmptyBatchRequest", "There should be at least one SendMessageBatchRequestEntry")
    if len(entries) > 10:
        raise SqsError("AWS.SimpleQueueService.TooManyEntriesInBatchRequest", f"{len(entries)} entries: at most 10")
    total = sum(e.size_bytes for e in entries)
    if total > MAX_BATCH_BYTES:
        raise SqsError(
            "AWS.SimpleQueueService.BatchRequestTooLong",
            f"Batch requests cannot be longer than {MAX_BATCH_BYTES} bytes. You have sent {total} bytes.",
            total,
            MAX_BATCH_BYTES,
        )
    for entry in entries:
        validate_message(config, entry)


def validate_message(config: QueueConfig, entry: OutgoingMessage) -> None:
    if not entry.body:
        raise SqsError("MissingParameter", "The request must contain the parameter MessageBody.")
    if NOT_SQS_TEXT.search(entry.body):
        raise SqsError("InvalidMessageContents", "Invalid characters found in the message body.")
    size = entry.size_bytes
    if size > config.max_message_bytes:
        raise SqsError(
            "InvalidParameterValue",
            f"One or more parameters are invalid. Reason: Message must be shorter than {config.max_message_bytes} bytes.",
            size,
            config.max_message_bytes,
        )
    if config.fifo:
        if not SQS_ID.match(entry.group or ""):
            raise SqsError("MissingParameter" if not entry.group else "InvalidParameterValue", f"MessageGroupId {entry.group!r}")
        if not entry.dedup_id and not config.content_based_deduplication:
            raise SqsError(
                "InvalidParameterValue",
                "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly",
            )
        if entry.dedup_id and not SQS_ID.match(entry.dedup_id):
            raise SqsError("InvalidParameterValue", f"MessageDeduplicationId {entry.dedup_id!r}")
    if len(entry.attributes) > 10:
        raise SqsError("InvalidParameterValue", f"{len(entry.attributes)} message attributes: at most 10")
    for name, attribute in entry.attributes.items():
        _validate_attribute(name, attribute)


def _validate_attribute(name: str, attribute: MessageAttribute) -> None:
    if not ATTRIBUTE_NAME.match(name):
        raise SqsError("InvalidParameterValue", f"The message attribute name '{name}' is invalid.")
    kind = attribute.data_type.split(".", 1)[0]
    value = attribute.value
    if kind not in ("String", "Number", "Binary") or (kind == "Binary") != isinstance(value, bytes):
        raise SqsError("InvalidParameterValue", f"The message attribute '{name}' has an invalid message attribute type.")
    if not value:
        raise SqsError("InvalidParameterValue", f"The message attribute '{name}' must contain a non-empty value.")
    if isinstance(value, str) and NOT_SQS_TEXT.search(value):
        raise SqsError("InvalidParameterValue", f"The message attribute '{name}' contains invalid characters.")
    if kind == "Number":
        try:
            Decimal(str(value))
        except InvalidOperation:
            raise SqsError("InvalidParameterValue", f"The message attribute '{name}' is not a number.") from None


@dataclass
class _Group:
    messages: deque[Message] = field(default_factory=deque)
    version: int = 0


class ModelQueue:
    """One queue. Groups wait in two heaps: `_ready` (free now, by their head's arrival) and `_waiting`
    (until their in-flight messages or delay run out), so a receive costs what it returns, not the
    depth of the queue."""

    def __init__(self, config: QueueConfig):
        self.config = config
        self._groups: dict[str, _Group] = {}
        self._ready: list[tuple[int, int, str]] = []  # (head seq, version, group key)
        self._waiting: list[tuple[float, int, str]] = []  # (free at, version, group key)
        self._arrivals: deque[Message] = deque()  # enqueue order, for retention
        self._receipts: dict[str, Message] = {}
        self._deleted: dict[str, float] = {}  # receipts of deleted messages: deleting again succeeds
        self._dedup: dict[str, tuple[float, str]] = {}
        self._dedup_order: deque[tuple[float, str]] = deque()
        self._seq = itertools.count()
        self._versions = itertools.count(1)

    def _key(self, message: Message) -> str:
        return message.group if self.config.fifo else message.message_id

    # ------------------------------------------------------------------ sending
    def duplicate_of(self, dedup_id: str, now: float) -> str | None:
        """The id of the message that a send with `dedup_id` duplicates (one accepted in the last 5
        minutes, even if since received or deleted), or None."""
        if not self.config.fifo or not dedup_id:
            return None
        while self._dedup_order and now - self._dedup_order[0][0] >= DEDUPLICATION_WINDOW_S:
            at, old = self._dedup_order.popleft()
            if self._dedup.get(old, (None,))[0] == at:
                del self._dedup[old]
        seen = self._dedup.get(dedup_id)
        return seen[1] if seen is not None and now - seen[0] < DEDUPLICATION_WINDOW_S else None

    def enqueue(self, message: Message, now: float, from_send: bool = True) -> None:
        message.seq = next(self._seq)
        if from_send:
            message.available_at = now + self.config.delay_s
            if self.config.fifo and message.dedup_id:
                self._dedup[message.dedup_id] = (now, message.message_id)
                self._dedup_order.append((now, message.dedup_id))
        key = self._key(message)
        group = self._groups.setdefault(key, _Group())
        group.messages.append(message)
        self._arrivals.append(message)
        if len(group.messages) == 1:
            self._schedule(key, now)

    # ------------------------------------------------------------------ receiving
    def receive(
        self, max_messages: int, timeout_s: int, now: float, new_receipt: Callable[[], str]
    ) -> tuple[list[QueuedMessage], list[Message]]:
        """Deliver up to `max_messages`, a group at a time, oldest head first; returns them and the
        messages the redrive policy takes out instead (the caller moves them to the DLQ)."""
        self.expire(now)
        self._wake(now)
        received: list[QueuedMessage] = []
        moved: list[Message] = []
        touched: list[str] = []
        while len(received) < max_messages and self._ready:
            _, version, key = heapq.heappop(self._ready)
            group = self._groups.get(key)
            if group is None or group.version != version:
                continue
            touched.append(key)
            index = 0
            while index < len(group.messages) and len(received) < max_messages:
                message = group.messages[index]
                if message.available_at > now:
                    break  # a delayed message holds its group's later ones back
                if self.config.redrive is not None and message.receive_count >= self.config.redrive[1]:
                    del group.messages[index]
                    self._forget(message, now)
                    moved.append(message)
                    continue
                received.append(self._deliver(message, timeout_s, now, new_receipt()))
                index += 1
        for key in touched:
            self._schedule(key, now)
        return received, moved

    def _deliver(self, message: Message, timeout_s: int, now: float, receipt: str) -> QueuedMessage:
        message.receive_count += 1
        message.receipt = receipt
        message.receipts.append(receipt)
        message.received_at = now
        message.visible_at = now + timeout_s
        self._receipts[receipt] = message
        return message.queued(receipt)

    # ------------------------------------------------------------------ receipts
    def delete(self, receipt: str, now: float) -> str | None:
        """None when deleted (or already deleted); else the error code."""
        if receipt in self._deleted:
            return None
        message = self._receipts.get(receipt)
        if message is None:
            return INVALID_RECEIPT
        if self.config.fifo and (receipt != message.receipt or not message.in_flight(now)):
            return EXPIRED
        key = self._key(message)
        self._groups[key].messages.remove(message)
        self._forget(message, now)
        for old in message.receipts:
            self._deleted[old] = now
        self._schedule(key, now)
        return None

    def change_visibility(self, receipt: str, seconds: int, now: float) -> str | None:
        """None when changed; else the error code (a stale or expired receipt, a bad value, or a total
        visibility since the receive beyond 12 hours)."""
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 <= seconds <= MAX_VISIBILITY_S:
            return "InvalidParameterValue"
        message = self._receipts.get(receipt)
        if message is None:
            return INVALID_RECEIPT
        if receipt != message.receipt or not message.in_flight(now):
            return EXPIRED if self.config.fifo else "AWS.SimpleQueueService.MessageNotInflight"
        if now + seconds - message.received_at > MAX_VISIBILITY_S:
            return "InvalidParameterValue"  # "Total VisibilityTimeout for the message is beyond the limit"
        message.visible_at = now + seconds
        self._schedule(self._key(message), now)
        return None

    def _forget(self, message: Message, now: float) -> None:
        message.gone = True
        for old in message.receipts:
            self._receipts.pop(old, None)
        while self._deleted:
            oldest_receipt, at = next(iter(self._deleted.items()))
            if now - at <= MAX_VISIBILITY_S:
                break
            del self._deleted[oldest_receipt]

    # ------------------------------------------------------------------ time
    def expire(self, now: float) -> None:
        """Drop messages past MessageRetentionPeriod, in flight or not."""
        while self._arrivals and (self._arrivals[0].gone or self._arrivals[0].enqueued_at + self.config.retention_s <= now):
            message = self._arrivals.popleft()
            if message.gone:
                continue
            key = self._key(message)
            self._groups[key].messages.remove(message)
            self._forget(message, now)
            self._schedule(key, now)

    def _wake(self, now: float) -> None:
        while self._waiting and self._waiting[0][0] <= now:
            _, version, key = heapq.heappop(self._waiting)
            group = self._groups.get(key)
            if group is not None and group.version == version:
                heapq.heappush(self._ready, (group.messages[0].seq, version, key))

    def _schedule(self, key: str, now: float) -> None:
        """Put the group in the heap it belongs in now (older entries of it become stale)."""
        group = self._groups.get(key)
        if group is None:
            return
        if not group.messages:
            del self._groups[key]
            return
        group.version = next(self._versions)
        # Only a group's received prefix can be in flight, and a receive takes at most 10 from the head.
        busy_until = max((m.visible_at for m in itertools.islice(group.messages, 10) if m.receipt is not None), default=0.0)
        free_at = max(busy_until, group.messages[0].available_at)
        if free_at <= now:
            heapq.heappush(self._ready, (group.messages[0].seq, group.version, key))
        else:
            heapq.heappush(self._waiting, (free_at, group.version, key))
        if len(self._ready) + len(self._waiting) > 4 * len(self._groups) + 64:
            self._compact()

    def _compact(self) -> None:
        live = {key: g.version for key, g in self._groups.items()}
        self._ready = [e for e in self._ready if live.get(e[2]) == e[1]]
        self._waiting = [e for e in self._waiting if live.get(e[2]) == e[1]]
        heapq.heapify(self._ready)
        heapq.heapify(self._waiting)

    def next_change(self, now: float) -> float | None:
        """The earliest time after `now` at which a waiting group becomes free."""
        times = [at for at, version, key in self._waiting if at > now and self._groups.get(key, _Group()).version == version]
        return min(times, default=None)

    # ------------------------------------------------------------------ inspection
    def all_messages(self) -> Iterator[Message]:
        return (m for m in self._arrivals if not m.gone)

    def depth(self, now: float) -> QueueDepth:
        self.expire(now)
        visible = in_flight = delayed = 0
        for message in self.all_messages():
            if message.in_flight(now):
                in_flight += 1
            elif message.available_at > now:
                delayed += 1
            else:
                visible += 1
        return QueueDepth(visible, in_flight, delayed)
