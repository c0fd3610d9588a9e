"""Every patch this project makes to moto's SQS, in one place (moto 5.2).

- `patch_moto_fifo_order()`: a bug fix every moto stage needs (process-wide).
- `quick_emulator(clock)`: speed only, the same answers (the benchmark, the reliability campaign).
- `aws_sqs_rules()`: the SQS FIFO rules moto does not emulate, as AWS documents them (the queue
  contract suite runs moto under it; the in-memory model keeps the same rules natively).
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from unittest import mock

from throttler.queue.base import DEDUPLICATION_WINDOW_S, MAX_BATCH_BYTES, MAX_VISIBILITY_S, NOT_SQS_TEXT


# ---------------------------------------------------------------------------------------------- order
def patch_moto_fifo_order() -> None:
    """Make moto deliver a FIFO group's messages in order after they become visible again.

    When several messages of one group are received and then become visible again together (their
    visibility timeout ran out, or was set to 0 or a few seconds to release them), moto 5.2 delivers
    the group's *last* such message first: it forgets them as in flight one by one while it walks the
    queue, and the group looks busy until it reaches the last one. SQS delivers the first one. The fix:
    forget every timed-out receipt before walking the queue. Process-wide and idempotent.
    """
    from moto.sqs.models import SQSBackend

    original = SQSBackend.receive_message
    if getattr(original, "throttler_fifo_fix", False):
        return

    @functools.wraps(original)
    def receive_message(self: Any, queue_name: str, *args: Any, **kwargs: Any) -> Any:
        queue = self.get_queue(queue_name)
        if queue.fifo_queue:
            _forget_timed_out(queue)
        return original(self, queue_name, *args, **kwargs)

    receive_message.throttler_fifo_fix = True  # type: ignore[attr-defined]
    SQSBackend.receive_message = receive_message  # type: ignore[method-assign]


def _forget_timed_out(queue: Any) -> None:
    for message in [m for m in list(queue.pending_messages) if m.visible]:
        queue.pending_messages.discard(message)


# ---------------------------------------------------------------------------------------------- speed
class _LazyQueueAttributes(Mapping[str, Any]):
    """moto's `Queue.attributes` with the three message counts computed only when one is read.

    moto builds every attribute, counting the queue's messages three times, whenever it needs one of
    them: four times per message sent and twice per message received. The values are the same; only
    the cost changes.
    """

    COUNTS = (
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesDelayed",
        "ApproximateNumberOfMessagesNotVisible",
    )

    def __init__(self, queue: Any):
        self._queue = queue
        names = list(queue.BASE_ATTRIBUTES)
        if queue.fifo_queue:
            names += queue.FIFO_ATTRIBUTES
        if queue.kms_master_key_id:
            names += queue.KMS_ATTRIBUTES
        self._values: dict[str, Any] = {}
        for name in names:
            if name not in self.COUNTS:
                self._values[name] = self._plain(getattr(queue, _snake(name)))
            else:
                self._values[name] = None  # placeholder: computed on read
        if queue.policy:
            self._values["Policy"] = queue.policy
        if queue.redrive_policy:
            self._values["RedrivePolicy"] = json.dumps(queue.redrive_policy)

    @staticmethod
    def _plain(value: Any) -> Any:
        return str(value).lower() if isinstance(value, bool) else value

    def __getitem__(self, name: str) -> Any:
        if name in self.COUNTS and name in self._values:
            return getattr(self._queue, _snake(name))
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@functools.cache
def _snake(name: str) -> str:
    from moto.core.utils import camelcase_to_underscores

    return str(camelcase_to_underscores(name))


class FrozenTime:
    """A clock that reads freezegun's frozen instant directly (cached until it moves), for
    `quick_emulator` where no other clock is at hand; the real time when nothing is frozen."""

    def __init__(self) -> None:
        self._cache: list[Any] = [None, 0.0]

    def now(self) -> float:
        from freezegun import api as freezegun_api

        if not freezegun_api.freeze_factories:
            return time.time()
        frozen = freezegun_api.freeze_factories[-1]()
        if frozen is not self._cache[0]:
            self._cache[:] = [frozen, calendar.timegm(frozen.timetuple()) + frozen.microsecond / 1e6]
        return float(self._cache[1])


@contextlib.contextmanager
def quick_emulator(clock: Any) -> Iterator[None]:
    """Speed moto's SQS up without changing what it answers: it reads the virtual clock directly (the
    same time freezegun shows, without building a datetime per message scanned) and computes queue
    attributes lazily. Everything else in moto still runs on freezegun's time."""
    import moto.sqs.models as sqs_models

    original = sqs_models.unix_time

    def unix_time(dt: Any = None) -> float:
        return float(clock.now()) if dt is None else float(original(dt))

    def unix_time_millis(dt: Any = None) -> float:
        return unix_time(dt) * 1000.0

    with (
        mock.patch.object(sqs_models, "unix_time", unix_time),
        mock.patch.object(sqs_models, "unix_time_millis", unix_time_millis),
        mock.patch.object(sqs_models.Queue, "attributes", property(_LazyQueueAttributes)),
    ):
        yield


# ---------------------------------------------------------------------------------------------- rules
_moving = [False]  # inside a receive: what reaches add_message is SQS's redrive moving a message


@contextlib.contextmanager
def aws_sqs_rules() -> Iterator[None]:
    """moto's SQS with the FIFO rules it lacks, as AWS documents them; undone on exit.

    - FIFO receipts expire with their visibility or a later receive: DeleteMessage and
      ChangeMessageVisibility with one fail, per entry ("The receipt handle has expired",
      https://repost.aws/knowledge-center/sqs-receipt-handle-error). moto accepts any old receipt.
    - The 12-hour limit counts from the receive, not the send (moto measures from SentTimestamp and
      refuses every change for a message older than 12 hours):
      https://github.com/awsdocs/amazon-sqs-developer-guide/pull/40
    - Deduplication lasts 5 minutes from the send even after the message is deleted (moto only
      compares with messages still in the queue):
      https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/using-messagededuplicationid-property.html
    - Sizes in UTF-8 bytes with the attributes, per message and per batch (moto counts the body's
      characters), and the characters SQS refuses (API_SendMessage.html).
    - A receive returns as many messages of one group as it can before the next group
      (FIFO-queues-understanding-logic.html); moto walks the queue in send order.
    - Retention removes old messages (moto leaves them, stuck as received), and a move to a FIFO DLQ
      restarts it (setting-up-dead-letter-queue-retention.html).
    - A message is visible again at the very instant its visibility ends (moto: only after it).
    For moto in this process only (mock_aws), one request at a time: not for the threaded server.
    """
    import moto.sqs.models as models

    backend, queue_cls, message_cls = models.SQSBackend, models.Queue, models.Message
    patches: list[Any] = [
        mock.patch.object(backend, "receive_message", _receive(backend.receive_message)),
        mock.patch.object(backend, "send_message", _send(backend.send_message)),
        mock.patch.object(backend, "send_message_batch", _send_batch(backend.send_message_batch)),
        mock.patch.object(backend, "delete_message_batch", _delete_batch),
        mock.patch.object(backend, "change_message_visibility", _change_visibility),
        mock.patch.object(backend, "change_message_visibility_batch", _change_visibility_batch),
        mock.patch.object(backend, "get_queue_attributes", _purging(backend.get_queue_attributes)),
        mock.patch.object(backend, "is_message_valid_based_on_retention_period", lambda *_: True),
        mock.patch.object(queue_cls, "add_message", _add(queue_cls.add_message)),
        mock.patch.object(queue_cls, "delete_message", _delete(queue_cls.delete_message)),
        mock.patch.object(message_cls, "mark_received", _mark_received(message_cls.mark_received)),
        mock.patch.object(message_cls, "visible", property(lambda m: models.unix_time_millis() >= m.visible_at)),
    ]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


def _now_ms() -> float:
    import moto.sqs.models as models

    return float(models.unix_time_millis())


def _error(code: str, message: str) -> Exception:
    from moto.sqs.exceptions import SQSException

    return SQSException(code, message)


def _expired(receipt: str) -> Exception:
    reason = "Reason: The receipt handle has expired."
    return _error("InvalidParameterValue", f"Value {receipt} for parameter ReceiptHandle is invalid. {reason}")


def _receive(original: Callable[..., Any]) -> Callable[..., Any]:
    def receive_message(self: Any, queue_name: str, *args: Any, **kwargs: Any) -> Any:
        queue = self.get_queue(queue_name)
        if not queue.fifo_queue:
            return original(self, queue_name, *args, **kwargs)
        _purge_expired(queue)
        _forget_timed_out(queue)
        arrival = list(queue._messages)
        head: dict[Any, int] = {}
        for i, m in enumerate(arrival):
            head.setdefault(m.group_id, i)
        queue._messages = [arrival[i] for i in sorted(range(len(arrival)), key=lambda i: (head[arrival[i].group_id], i))]
        _moving[0] = True
        try:
            return original(self, queue_name, *args, **kwargs)
        finally:
            _moving[0] = False
            left = {id(m) for m in queue._messages}
            queue._messages = [m for m in arrival if id(m) in left]

    return receive_message


def _purge_expired(queue: Any) -> None:
    cutoff = _now_ms() / 1000.0 - queue.message_retention_period
    expired = [m for m in queue._messages if getattr(m, "throttler_enqueued_s", m.sent_timestamp / 1000.0) <= cutoff]
    for message in expired:
        queue._messages.remove(message)
        queue.pending_messages.discard(message)


def _purging(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_queue_attributes(self: Any, queue_name: str, attribute_names: list[str]) -> Any:
        queue = self.get_queue(queue_name)
        if queue.fifo_queue:
            _purge_expired(queue)
        return original(self, queue_name, attribute_names)

    return get_queue_attributes


def _mark_received(original: Callable[..., Any]) -> Callable[..., Any]:
    def mark_received(self: Any, visibility_timeout: int | None = None) -> None:
        original(self, visibility_timeout)
        self.throttler_received_ms = _now_ms()

    return mark_received


def _add(original: Callable[..., Any]) -> Callable[..., Any]:
    def add_message(self: Any, message: Any) -> None:
        if not self.fifo_queue:
            return original(self, message)  # type: ignore[no-any-return]
        if _moving[0]:  # SQS's redrive: no deduplication, and a FIFO DLQ restarts the retention
            message.throttler_enqueued_s = _now_ms() / 1000.0
            with self._messages_lock:
                self._messages.append(message)
                self._messages_lock.notify_all()
            return None
        if message.deduplication_id:
            seen = self.__dict__.setdefault("throttler_dedup_ms", {})
            first = seen.get(message.deduplication_id)
            if first is not None and message.sent_timestamp - first < DEDUPLICATION_WINDOW_S * 1000:
                return None
            seen[message.deduplication_id] = message.sent_timestamp
        return original(self, message)  # type: ignore[no-any-return]

    return add_message


def _attributes_bytes(attributes: Mapping[str, Any] | None) -> int:
    total = 0
    for name, value in (attributes or {}).items():
        data = value.get("BinaryValue")
        if data is None:
            raw = str(value.get("StringValue", "")).encode("utf-8")
        else:
            raw = data if isinstance(data, bytes) else base64.b64decode(data)
        total += len(name.encode("utf-8")) + len(str(value.get("DataType", "")).encode("utf-8")) + len(raw)
    return total


def _check_message(queue: Any, body: str, attributes: Mapping[str, Any] | None) -> int:
    if NOT_SQS_TEXT.search(body):
        raise _error("InvalidMessageContents", "Invalid characters found in the message body.")
    size = len(body.encode("utf-8")) + _attributes_bytes(attributes)
    if size > queue.maximum_message_size:
        raise _error(
            "InvalidParameterValue",
            f"One or more parameters are invalid. Reason: Message must be shorter than {queue.maximum_message_size} bytes.",
        )
    return size


def _send(original: Callable[..., Any]) -> Callable[..., Any]:
    def send_message(self: Any, queue_name: str, message_body: str, message_attributes: Any = None, *args: Any, **kw: Any) -> Any:
        _check_message(self.get_queue(queue_name), message_body, message_attributes)
        return original(self, queue_name, message_body, message_attributes, *args, **kw)

    return send_message


def _send_batch(original: Callable[..., Any]) -> Callable[..., Any]:
    def send_message_batch(self: Any, queue_name: str, entries: dict[str, dict[str, Any]]) -> Any:
        from moto.sqs.exceptions import BatchRequestTooLong

        queue = self.get_queue(queue_name)
        total = sum(_check_message(queue, e["MessageBody"], e.get("MessageAttributes")) for e in entries.values())
        if total > MAX_BATCH_BYTES:
            raise BatchRequestTooLong(total)
        return original(self, queue_name, entries)

    return send_message_batch


def _live_receipt(queue: Any, receipt: str) -> Any:
    """The message this receipt names; raises if it is a FIFO receipt that expired or was replaced."""
    from moto.sqs.exceptions import ReceiptHandleIsInvalid

    for message in queue._messages:
        if message.had_receipt_handle(receipt):
            if queue.fifo_queue and (receipt != message.receipt_handle or message.visible):
                raise _expired(receipt)
            return message
    raise ReceiptHandleIsInvalid()


def _delete(original: Callable[..., Any]) -> Callable[..., Any]:
    def delete_message(self: Any, receipt_handle: str) -> None:
        if self.fifo_queue and receipt_handle not in self.deleted_messages:
            _live_receipt(self, receipt_handle)
        original(self, receipt_handle)

    return delete_message


def _per_entry(entries: list[dict[str, Any]], act: Callable[[dict[str, Any]], None]) -> tuple[list[str], list[dict[str, Any]]]:
    """SQS answers a batch entry by entry: one bad receipt fails its entry, not the request."""
    from moto.sqs.exceptions import SQSException

    success, failed = [], []
    for entry in entries:
        try:
            act(entry)
            success.append(entry["Id"])
        except SQSException as exc:
            failed.append({"Id": entry["Id"], "SenderFault": True, "Code": exc.code, "Message": exc.message})
    return success, failed


def _delete_batch(self: Any, queue_name: str, receipts: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    return _per_entry(receipts, lambda e: self.delete_message(queue_name, e["ReceiptHandle"]))


def _change_visibility(self: Any, queue_name: str, receipt_handle: str, visibility_timeout: int) -> None:
    queue = self.get_queue(queue_name)
    message = _live_receipt(queue, receipt_handle)
    received_ms = getattr(message, "throttler_received_ms", message.sent_timestamp)
    if _now_ms() + int(visibility_timeout) * 1000 - received_ms > MAX_VISIBILITY_S * 1000:
        raise _error(
            "InvalidParameterValue",
            f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. Reason: Total "
            f"VisibilityTimeout for the message is beyond the limit [{MAX_VISIBILITY_S} seconds]",
        )
    message.change_visibility(visibility_timeout)
    if message.visible and message in queue.pending_messages:
        queue.pending_messages.remove(message)


def _change_visibility_batch(self: Any, queue_name: str, entries: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    def act(entry: dict[str, Any]) -> None:
        seconds = entry["VisibilityTimeout"]
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 <= seconds <= MAX_VISIBILITY_S:
            raise _error("InvalidParameterValue", f"Value {seconds} for parameter VisibilityTimeout is invalid.")
        self.change_message_visibility(queue_name, entry["ReceiptHandle"], seconds)

    return _per_entry(entries, act)
