"""The JobQueue contract on Amazon SQS: an injected boto3 client, the two queues' URLs."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError

from throttler.core.clock import Clock, SystemClock
from throttler.queue.base import (
    MAX_MESSAGE_BYTES,
    JobQueue,
    MessageAttribute,
    OutgoingMessage,
    QueueDepth,
    QueuedMessage,
    QueueError,
    SendFailure,
    Target,
    message_size_bytes,
)

logger = logging.getLogger(__name__)

SYSTEM_ATTRIBUTES = ["MessageGroupId", "MessageDeduplicationId", "ApproximateReceiveCount", "SentTimestamp"]


class SqsJobQueue(JobQueue):
    """The jobs queue and its DLQ on SQS. `jobs_max_bytes` / `dlq_max_bytes` are the queues'
    MaximumMessageSize; by default they are read once from SQS (GetQueueAttributes), and where that
    is not allowed (a producer's role may only send) the size is left to SQS to judge."""

    def __init__(
        self,
        client: Any,
        queue_url: str,
        dlq_url: str,
        clock: Clock | None = None,
        jobs_max_bytes: int | None = None,
        dlq_max_bytes: int | None = None,
    ):
        super().__init__(clock or SystemClock())
        self._sqs = client
        self.queue_url = queue_url
        self.dlq_url = dlq_url
        self._max_bytes: dict[Target, int | None] = {"jobs": jobs_max_bytes, "dlq": dlq_max_bytes}

    def _url(self, target: Target) -> str:
        return self.queue_url if target == "jobs" else self.dlq_url

    def _receive(self, target: Target, max_messages: int, visibility_s: int, wait_s: int) -> list[QueuedMessage]:
        response = self._call(
            "receive_message",
            QueueUrl=self._url(target),
            MaxNumberOfMessages=max_messages,
            VisibilityTimeout=visibility_s,
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=SYSTEM_ATTRIBUTES,
            MessageAttributeNames=["All"],  # they count in the size, and the DLQ's carry the reason
        )
        return [_queued(m) for m in response.get("Messages", [])]

    def _delete(self, target: Target, receipts: Sequence[str]) -> list[str]:
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]
        response = self._call("delete_message_batch", QueueUrl=self._url(target), Entries=entries)
        return [receipts[int(f["Id"])] for f in response.get("Failed", [])]

    def _change_visibility(self, target: Target, changes: Sequence[tuple[str, int]]) -> list[str]:
        entries = [{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": s} for i, (r, s) in enumerate(changes)]
        response = self._call("change_message_visibility_batch", QueueUrl=self._url(target), Entries=entries)
        failed = response.get("Failed", [])
        for failure in failed:
            logger.info("visibility change failed", extra={"code": failure.get("Code")})
        return [changes[int(f["Id"])][0] for f in failed]

    def _send(self, target: Target, messages: Sequence[OutgoingMessage]) -> list[SendFailure]:
        entries = []
        for i, m in enumerate(messages):
            entry: dict[str, Any] = {
                "Id": str(i),
                "MessageBody": m.body,
                "MessageGroupId": m.group,
                "MessageDeduplicationId": m.dedup_id,
            }
            if m.attributes:
                entry["MessageAttributes"] = {name: _attribute_json(a) for name, a in m.attributes.items()}
            entries.append(entry)
        response = self._call("send_message_batch", QueueUrl=self._url(target), Entries=entries)
        return [SendFailure(int(f["Id"]), str(f.get("Code", "")), str(f.get("Message", ""))) for f in response.get("Failed", [])]

    def _max_message_bytes(self, target: Target) -> int:
        known = self._max_bytes[target]
        if known is None:
            try:
                attributes = self._sqs.get_queue_attributes(QueueUrl=self._url(target), AttributeNames=["MaximumMessageSize"])
                known = int(attributes["Attributes"]["MaximumMessageSize"])
            except (ClientError, KeyError, ValueError) as exc:
                logger.info("queue size limit unknown", extra={"queue": target, "error": type(exc).__name__})
                known = MAX_MESSAGE_BYTES  # SQS itself still refuses what its queue cannot take
            self._max_bytes[target] = known
        return known

    def _depth(self, target: Target) -> QueueDepth:
        response = self._call(
            "get_queue_attributes",
            QueueUrl=self._url(target),
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )
        attributes = response.get("Attributes", {})
        return QueueDepth(
            visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
            in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
            delayed=int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
        )

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._sqs, operation)(**kwargs)
        except ClientError as exc:
            raise QueueError(f"sqs {operation} failed: {exc.response['Error']['Code']}") from exc


def _attribute_json(attribute: MessageAttribute) -> dict[str, Any]:
    key = "BinaryValue" if isinstance(attribute.value, bytes) else "StringValue"
    return {"DataType": attribute.data_type, key: attribute.value}


def _attribute(value: Mapping[str, Any]) -> MessageAttribute:
    if "BinaryValue" in value:
        raw = value["BinaryValue"]
        return MessageAttribute(value["DataType"], raw if isinstance(raw, bytes) else base64.b64decode(raw))
    return MessageAttribute(value["DataType"], str(value.get("StringValue", "")))


def _queued(m: Mapping[str, Any]) -> QueuedMessage:
    system = m.get("Attributes", {})
    attributes = {name: _attribute(value) for name, value in m.get("MessageAttributes", {}).items()}
    return QueuedMessage(
        message_id=m["MessageId"],
        receipt=m["ReceiptHandle"],
        body=m["Body"],
        group=system.get("MessageGroupId", ""),
        dedup_id=system.get("MessageDeduplicationId", m["MessageId"]),
        receive_count=int(system.get("ApproximateReceiveCount", "1")),
        sent_at=int(system.get("SentTimestamp", "0")) / 1000.0,
        size_bytes=message_size_bytes(m["Body"], attributes),
        attributes=attributes,
    )
