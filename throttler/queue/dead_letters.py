"""The dead-letter format, in one place: how a job is written to the DLQ, read back, and redriven.

A dead-lettered job keeps its body and group and carries three message attributes: `error_reason`
(String), `attempts` (Number: real attempts made) and `job_id` (String: the job's original
deduplication id; a redriven copy carries it as an attribute too). A job that SQS's own redrive
policy moved has no reason or attempts (its reason reads so).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from throttler.queue.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DeadLetter,
    JobQueue,
    MessageAttribute,
    OutgoingMessage,
    QueuedMessage,
    QueueError,
    sqs_text,
)

REASON = "error_reason"
ATTEMPTS = "attempts"
JOB_ID = "job_id"
MAX_REASON_CHARS = 1000
UNGROUPED = "ungrouped"  # a message without a group id (it cannot come from a FIFO queue, but be safe)
MOVED_BY_SQS = "(none: moved by SQS's redrive policy)"

# A peeked message is hidden this long; a redriven one long enough to be sent and deleted.
PEEK_VISIBILITY_S = 30
REDRIVE_VISIBILITY_S = 60


def _dedup(prefix: str, message_id: str) -> str:
    return hashlib.sha256(f"{prefix}:{message_id}".encode()).hexdigest()[:64]


def job_id_of(message: QueuedMessage) -> str:
    """The job's original deduplication id: its own, or the `job_id` attribute a redrive gave its copy."""
    carried = message.attributes.get(JOB_ID)
    if carried is not None and isinstance(carried.value, str) and carried.value:
        return carried.value
    return message.dedup_id


def dead_letter_message(letter: DeadLetter) -> OutgoingMessage:
    """The DLQ message for `letter`. Its deduplication id derives from this copy's message id: a
    retry of the same dead-lettering within SQS's 5 minutes is dropped, while a job redriven from the
    DLQ (a new message, a new id) that fails again reaches the DLQ again."""
    message = letter.message
    return OutgoingMessage(
        body=message.body,
        group=message.group or UNGROUPED,
        dedup_id=_dedup("dlq", message.message_id),
        attributes={
            REASON: MessageAttribute("String", sqs_text(letter.reason[:MAX_REASON_CHARS]) or "unknown"),
            ATTEMPTS: MessageAttribute("Number", str(int(letter.attempts))),
            JOB_ID: MessageAttribute("String", job_id_of(message)),
        },
    )


@dataclass(frozen=True)
class DeadLetterMessage:
    """A job in the dead-letter queue, with why it is there."""

    message_id: str
    group: str
    error_reason: str
    attempts: int | None
    job_id: str | None
    body: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def describe(message: QueuedMessage) -> DeadLetterMessage:
    """Read a DLQ message. One that SQS's redrive moved carries no attributes, but its own
    deduplication id is still the job id."""
    attributes = message.attributes

    def text(name: str) -> str | None:
        value = attributes.get(name)
        return None if value is None else (value.value.decode() if isinstance(value.value, bytes) else value.value)

    reason, attempts = text(REASON), text(ATTEMPTS)
    return DeadLetterMessage(
        message_id=message.message_id,
        group=message.group,
        error_reason=reason or MOVED_BY_SQS,
        attempts=int(float(attempts)) if attempts is not None else None,
        job_id=text(JOB_ID) or (message.dedup_id if reason is None else None),
        body=message.body,
    )


def _redriven(message: QueuedMessage, letter: DeadLetterMessage) -> OutgoingMessage | None:
    """The copy a redrive sends: its job id written into the envelope and carried as an attribute; only one of
    the two if both do not fit in the jobs queue's message size; None if neither does (a job within a few
    bytes of 256 KiB stays in the DLQ rather than lose its id, and with it its Idempotency-Key)."""
    group, dedup = message.group or UNGROUPED, _dedup("redrive", message.message_id)
    if not letter.job_id:
        return OutgoingMessage(message.body, group, dedup, {})
    attribute = {JOB_ID: MessageAttribute("String", letter.job_id)}
    written = with_job_id(message.body, letter.job_id)
    # The body keeps the id when it was written in, or when the envelope had its own (or is no envelope).
    candidates = [(written, attribute), (written, {})] + ([(message.body, attribute)] if written != message.body else [])
    for body, attributes in candidates:
        copy = OutgoingMessage(body, group, dedup, attributes)
        if copy.size_bytes <= DEFAULT_MAX_MESSAGE_BYTES:
            return copy
    return None


def with_job_id(body: str, job_id: str | None) -> str:
    """The body with the job's id written into the envelope's `id` when it has none, so the job keeps
    its id (and Idempotency-Key) through the redrive. The text is otherwise kept byte for byte; a body
    that is not a JSON object (a poison message) is returned unchanged."""
    if not job_id:
        return body
    try:
        envelope = json.loads(body)
    except ValueError:
        return body
    if not isinstance(envelope, dict) or envelope.get("id") is not None:
        return body
    rebuilt = json.dumps({**envelope, "id": job_id}, ensure_ascii=False, separators=(",", ":"))
    if "id" in envelope:  # "id": null
        return rebuilt
    end = body.rindex("}")
    comma = "," if envelope else ""
    written = f'{body[:end].rstrip()}{comma}"id":{json.dumps(job_id)}{body[end:]}'
    try:
        return written if json.loads(written) == {**envelope, "id": job_id} else rebuilt
    except ValueError:
        return rebuilt


class DeadLetters:
    """Inspect a stage's dead-letter queue and move its jobs back to the jobs queue.

    Built on the JobQueue contract (`DeadLetters(queue)`), or, as before, on an SQS client and the
    two URLs (`DeadLetters(sqs_client, dlq_url, jobs_url)`).
    """

    def __init__(self, queue_or_client: JobQueue | Any, dlq_url: str = "", jobs_url: str = ""):
        self.too_large: list[str] = []  # DLQ message ids a redrive left: no copy carrying the job id fits
        if isinstance(queue_or_client, JobQueue):
            self.queue = queue_or_client
        else:
            from throttler.queue.sqs import SqsJobQueue

            self.queue = SqsJobQueue(queue_or_client, jobs_url, dlq_url)

    def peek(self, limit: int = 100) -> list[DeadLetterMessage]:
        """Up to `limit` dead-lettered jobs, left in the queue (visible again at once).

        FIFO delivers a group's later messages only once its earlier ones are gone, so one look sees at
        most 10 messages per group: `redrive` or a second look after it sees the rest.
        """
        found: dict[str, QueuedMessage] = {}
        try:
            while len(found) < limit:
                new = [m for m in self.queue.receive_dead(limit - len(found), PEEK_VISIBILITY_S) if m.message_id not in found]
                if not new:
                    break
                found.update((m.message_id, m) for m in new)
        finally:
            self.queue.release_dead([m.receipt for m in found.values()])
        return [describe(m) for m in found.values()]

    def redrive(self, limit: int | None = None, reset_attempts: Callable[[list[str]], None] | None = None) -> int:
        """Move up to `limit` jobs (all by default) back to the jobs queue with their group ids; returns how many.

        Each job keeps its id: where its envelope has no `id`, the job id is written into it (else the
        redriven copy's new deduplication id would become its id, and its Idempotency-Key with it), and
        the copy carries it as its `job_id` attribute, so that a later dead-lettering records it again.
        `reset_attempts(job_ids)` is called before the jobs are sent, so a job is not dead-lettered
        again, without a call, for the attempts it spent before.

        Safe to interrupt and to run again:
        - each message is sent to the jobs queue before it is deleted from the DLQ, so an interruption
          between the two leaves it in the DLQ (visible again after REDRIVE_VISIBILITY_S): never lost;
        - its deduplication id is derived from its DLQ message id, which stays the same however often it
          is received, so sending it again within SQS's 5-minute deduplication window is dropped by SQS;
          later than that, the second copy carries the same job id, so the API can recognise the second
          call by its Idempotency-Key: run an interrupted redrive again within 5 minutes (it says so);
        - the id is new for each stay in the DLQ (each dead-lettering makes a new message), so a job that
          fails again after redrive reaches the DLQ again.
        Jobs keep their order within a group; they queue behind that group's jobs already waiting.
        """
        moved = 0
        while limit is None or moved < limit:
            messages = self.queue.receive_dead(10 if limit is None else limit - moved, REDRIVE_VISIBILITY_S)
            if not messages:
                break
            letters = [describe(m) for m in messages]
            job_ids = [letter.job_id for letter in letters if letter.job_id]
            if reset_attempts is not None and job_ids:
                reset_attempts(job_ids)
            copies = [(m, _redriven(m, letter)) for m, letter in zip(messages, letters, strict=True)]
            kept = [m for m, copy in copies if copy is None]
            sendable = [(m, copy) for m, copy in copies if copy is not None]
            self.too_large += [m.message_id for m in kept if m.message_id not in self.too_large]
            if kept:
                self.queue.release_dead([m.receipt for m in kept])  # visible in the DLQ again, at once
            if not sendable:
                break  # what is left is too large to carry its id: it stays in the DLQ, said by `too_large`
            self.queue.send_messages("jobs", [copy for _, copy in sendable])
            failed = self.queue.delete_dead([m.receipt for m, _ in sendable])
            moved += len(sendable)
            if failed:
                raise QueueError(
                    f"redrive sent {moved} job(s) but could not delete {len(failed)} from the DLQ: run it again within "
                    "5 minutes (SQS then drops the copies it already has; later, a job could be called twice)"
                )
        return moved
