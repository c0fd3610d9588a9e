"""SQS FIFO adapter: receive, delete, change visibility, dead-letter and send, all in batches of 10."""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from throttler.core.errors import StoreError

logger = logging.getLogger(__name__)
SQS_BATCH = 10
MAX_VISIBILITY_S = 43_200  # SQS's ceiling: 12 hours
# Characters SQS refuses in a body or a string attribute (outside XML's Char production).
_NOT_SQS_TEXT = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def sqs_text(text: str) -> str:
    """`text` with every character SQS would refuse escaped (`\\x08`): a reason that quotes a bad
    message (a key name, say) must never make the dead-lettering itself fail."""
    return _NOT_SQS_TEXT.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


@dataclass(frozen=True)
class QueuedMessage:
    message_id: str
    receipt: str
    body: str
    group: str
    dedup_id: str
    receive_count: int


@dataclass(frozen=True)
class DeadLetter:
    message: QueuedMessage
    reason: str
    attempts: int


def _chunks(items: Sequence[Any], size: int = SQS_BATCH) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class JobQueue:
    """The jobs queue and its dead-letter queue (injected client, URLs from settings)."""

    def __init__(self, client: Any, queue_url: str, dlq_url: str):
        self._sqs = client
        self.queue_url = queue_url
        self.dlq_url = dlq_url

    def receive(self, max_messages: int, visibility_s: int, wait_s: int = 0) -> list[QueuedMessage]:
        response = self._call(
            "receive_message",
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(SQS_BATCH, max_messages)),
            VisibilityTimeout=max(1, min(MAX_VISIBILITY_S, int(visibility_s))),
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["MessageGroupId", "MessageDeduplicationId", "ApproximateReceiveCount"],
        )
        return [
            QueuedMessage(
                message_id=m["MessageId"],
                receipt=m["ReceiptHandle"],
                body=m["Body"],
                group=m["Attributes"].get("MessageGroupId", ""),
                dedup_id=m["Attributes"].get("MessageDeduplicationId", m["MessageId"]),
                receive_count=int(m["Attributes"].get("ApproximateReceiveCount", "1")),
            )
            for m in response.get("Messages", [])
        ]

    def delete(self, receipts: Sequence[str]) -> list[str]:
        """Delete in batches; returns the receipts that failed (they will simply be seen again)."""
        failed: list[str] = []
        for chunk in _chunks(list(receipts)):
            entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)]
            response = self._call("delete_message_batch", QueueUrl=self.queue_url, Entries=entries)
            failed += [chunk[int(f["Id"])] for f in response.get("Failed", [])]
        return failed

    def change_visibility(self, changes: Sequence[tuple[str, float]]) -> None:
        """Set each receipt's visibility (seconds from now); 0 releases the message at once."""
        for chunk in _chunks(list(changes)):
            entries = [
                {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": max(0, min(MAX_VISIBILITY_S, int(s)))}
                for i, (r, s) in enumerate(chunk)
            ]
            response = self._call("change_message_visibility_batch", QueueUrl=self.queue_url, Entries=entries)
            for failure in response.get("Failed", []):
                # A receipt that expired meanwhile: the message is already visible again, which is what
                # releasing wanted; a longer timeout that failed only means an earlier retry.
                logger.info("visibility change failed", extra={"code": failure.get("Code")})

    def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Move messages to the DLQ with their reason and attempts, then delete them from the queue.

        The deduplication id is derived from this copy's message id, so a run that dies between the
        send and the delete and is retried within SQS's 5-minute window does not duplicate it, while
        a job redriven from the DLQ (a new message id) that fails again does reach the DLQ again.
        """
        for chunk in _chunks(list(letters)):
            entries = [
                {
                    "Id": str(i),
                    "MessageBody": d.message.body,
                    "MessageGroupId": d.message.group or "ungrouped",
                    "MessageDeduplicationId": hashlib.sha256(f"dlq:{d.message.message_id}".encode()).hexdigest()[:64],
                    "MessageAttributes": {
                        "error_reason": {"DataType": "String", "StringValue": sqs_text(d.reason[:1000]) or "unknown"},
                        "attempts": {"DataType": "Number", "StringValue": str(d.attempts)},
                        "job_id": {"DataType": "String", "StringValue": d.message.dedup_id},
                    },
                }
                for i, d in enumerate(chunk)
            ]
            response = self._call("send_message_batch", QueueUrl=self.dlq_url, Entries=entries)
            if response.get("Failed"):
                raise StoreError(f"dead-lettering failed for {len(response['Failed'])} message(s)")
            self.delete([d.message.receipt for d in chunk])

    def send(self, entries: Sequence[tuple[str, str, str | None]], queue_url: str | None = None) -> list[str]:
        """Send (body, group, dedup id) triples; returns the deduplication ids used."""
        ids: list[str] = []
        for chunk in _chunks(list(entries)):
            batch = []
            for i, (body, group, dedup) in enumerate(chunk):
                dedup = dedup or uuid.uuid4().hex
                ids.append(dedup)
                batch.append({"Id": str(i), "MessageBody": body, "MessageGroupId": group, "MessageDeduplicationId": dedup})
            response = self._call("send_message_batch", QueueUrl=queue_url or self.queue_url, Entries=batch)
            if response.get("Failed"):
                first = response["Failed"][0]
                raise StoreError(f"send failed: {first.get('Code')}: {first.get('Message', '')}")
        return ids

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._sqs, operation)(**kwargs)
        except ClientError as exc:
            raise StoreError(f"sqs {operation} failed: {exc.response['Error']['Code']}") from exc
