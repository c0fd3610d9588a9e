"""The jobs queue: the contract (base), the SQS adapter, the in-memory SQS FIFO model, and the
dead-letter format (write, read, redrive) in one place."""

from throttler.queue.base import (
    MAX_VISIBILITY_S,
    SQS_BATCH,
    DeadLetter,
    JobQueue,
    MessageAttribute,
    MessageTooLarge,
    OutgoingMessage,
    QueueDepth,
    QueuedMessage,
    QueueError,
    message_size_bytes,
    sqs_text,
    whole_seconds,
)
from throttler.queue.dead_letters import DeadLetterMessage, DeadLetters
from throttler.queue.memory import MemoryJobQueue, MemorySqs, MessageView, RedriveMove
from throttler.queue.sqs import SqsJobQueue

__all__ = [
    "MAX_VISIBILITY_S",
    "SQS_BATCH",
    "DeadLetter",
    "DeadLetterMessage",
    "DeadLetters",
    "JobQueue",
    "MemoryJobQueue",
    "MemorySqs",
    "MessageAttribute",
    "MessageTooLarge",
    "MessageView",
    "OutgoingMessage",
    "QueueDepth",
    "QueueError",
    "QueuedMessage",
    "RedriveMove",
    "SqsJobQueue",
    "message_size_bytes",
    "sqs_text",
    "whole_seconds",
]
