"""What SQS accepts: queue attributes and messages, validated as SQS validates them (for the model).

Sources: CreateQueue / SetQueueAttributes for the attributes' ranges (API_SetQueueAttributes.html),
SendMessage / SendMessageBatch for bodies, ids, attributes and sizes (API_SendMessage.html,
API_SendMessageBatch.html, API_MessageAttributeValue.html), sqs-dead-letter-queues.html for the
redrive policy (maxReceiveCount 1..1000).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from throttler.queue.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_VISIBILITY_S,
    NOT_SQS_TEXT,
    MessageAttribute,
    OutgoingMessage,
)

SQS_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # MessageGroupId, MessageDeduplicationId
ATTRIBUTE_NAME = re.compile(r"^(?!\.)(?!.*\.\.)(?!(?i:aws\.|amazon\.))[A-Za-z0-9_.\-]{1,256}(?<!\.)$")


class SqsError(Exception):
    """What SQS answers with an error code (the whole request failed)."""

    def __init__(self, code: str, message: str, size_bytes: int = 0, limit_bytes: int = 0):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


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
