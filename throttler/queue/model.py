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
- Quotas: "FIFO queues support a maximum of 120,000 in-flight messages ... If this limit is reached,
  Amazon SQS does not return an error", and "FIFO queues scan the first 120,000 messages to determine
  available message groups" (quotas-fifo.html, avoid-backlog-with-the-same-message-group-id.html).
- What a request may hold (sizes, ids, attributes, characters): sqs_rules.py.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from throttler.queue.base import (
    DEDUPLICATION_WINDOW_S,
    MAX_VISIBILITY_S,
    MessageAttribute,
    QueueDepth,
    QueuedMessage,
    message_size_bytes,
)
from throttler.queue.sqs_rules import QueueConfig

FIFO_IN_FLIGHT_QUOTA = 120_000
FIFO_SCAN_DEPTH = 120_000
EXPIRED = "InvalidParameterValue"  # "Reason: The receipt handle has expired."
INVALID_RECEIPT = "ReceiptHandleIsInvalid"


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


class _Arrivals:
    """The queue's live messages in enqueue order: retention walks it from the front, and a message's
    rank in it says whether a FIFO receive's scan reaches it."""

    def __init__(self) -> None:
        self._order: deque[Message] = deque()
        self._live: list[int] = []  # sequence numbers of live messages, ascending

    def add(self, message: Message) -> None:
        self._order.append(message)
        self._live.append(message.seq)

    def remove(self, message: Message) -> None:
        message.gone = True
        index = bisect.bisect_left(self._live, message.seq)
        if index < len(self._live) and self._live[index] == message.seq:
            del self._live[index]

    def rank(self, message: Message) -> int:
        """How many live messages arrived before this one."""
        return bisect.bisect_left(self._live, message.seq)

    def oldest(self) -> Message | None:
        while self._order and self._order[0].gone:
            self._order.popleft()
        return self._order[0] if self._order else None

    def live(self) -> Iterator[Message]:
        return (m for m in self._order if not m.gone)


class _InFlight:
    """Messages received and not visible again yet, counted for the in-flight quota."""

    def __init__(self) -> None:
        self._until: dict[Message, float] = {}
        self._heap: list[tuple[float, int, Message]] = []
        self._tie = itertools.count()

    def hold(self, message: Message, until: float, now: float) -> None:
        if until <= now:
            self._until.pop(message, None)
            return
        self._until[message] = until
        heapq.heappush(self._heap, (until, next(self._tie), message))

    def drop(self, message: Message) -> None:
        self._until.pop(message, None)

    def count(self, now: float) -> int:
        while self._heap and self._heap[0][0] <= now:
            until, _, message = heapq.heappop(self._heap)
            if self._until.get(message) == until:
                del self._until[message]
        return len(self._until)


@dataclass
class _Group:
    messages: deque[Message] = field(default_factory=deque)
    version: int = 0


class ModelQueue:
    """One queue. Groups wait in two heaps: `_ready` (free now, by their head's arrival) and `_waiting`
    (until their in-flight messages or delay run out), so a receive costs what it returns, not the
    depth of the queue."""

    def __init__(self, config: QueueConfig, in_flight_quota: int = FIFO_IN_FLIGHT_QUOTA, scan_depth: int = FIFO_SCAN_DEPTH):
        self.config = config
        self.in_flight_quota = in_flight_quota
        self.scan_depth = scan_depth
        self._groups: dict[str, _Group] = {}
        self._ready: list[tuple[int, int, str]] = []  # (head seq, version, group key)
        self._waiting: list[tuple[float, int, str]] = []  # (free at, version, group key)
        self._arrivals = _Arrivals()
        self._in_flight = _InFlight()
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
        self._arrivals.add(message)
        if len(group.messages) == 1:
            self._schedule(key, now)

    # ------------------------------------------------------------------ receiving
    def receive(
        self, max_messages: int, timeout_s: int, now: float, new_receipt: Callable[[], str]
    ) -> tuple[list[QueuedMessage], list[Message]]:
        """Deliver up to `max_messages`, a group at a time, oldest head first; returns them and the
        messages the redrive policy takes out instead (the caller moves them to the DLQ). Nothing more
        is delivered while the in-flight quota is used up, and a FIFO receive sees only the groups
        whose head is among the first `scan_depth` messages."""
        self.expire(now)
        self._wake(now)
        received: list[QueuedMessage] = []
        moved: list[Message] = []
        touched: list[str] = []
        while len(received) < max_messages and self._ready and self._in_flight.count(now) < self.in_flight_quota:
            entry = heapq.heappop(self._ready)
            group = self._groups.get(entry[2])
            if group is None or group.version != entry[1]:
                continue
            if self.config.fifo and self._arrivals.rank(group.messages[0]) >= self.scan_depth:
                heapq.heappush(self._ready, entry)  # this group and every later one lie beyond the scan
                break
            key = entry[2]
            touched.append(key)
            index = 0
            while index < len(group.messages) and len(received) < max_messages:
                if self._in_flight.count(now) >= self.in_flight_quota:
                    break
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
        self._in_flight.hold(message, message.visible_at, now)
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
        self._in_flight.hold(message, message.visible_at, now)
        self._schedule(self._key(message), now)
        return None

    def _forget(self, message: Message, now: float) -> None:
        self._arrivals.remove(message)
        self._in_flight.drop(message)
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
        while (message := self._arrivals.oldest()) is not None and message.enqueued_at + self.config.retention_s <= now:
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
        return self._arrivals.live()

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
