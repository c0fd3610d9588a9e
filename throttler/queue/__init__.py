"""The jobs queue (SQS FIFO) and its dead-letter queue."""

from throttler.queue.sqs import MAX_VISIBILITY_S, SQS_BATCH, DeadLetter, JobQueue, QueuedMessage, sqs_text

__all__ = ["MAX_VISIBILITY_S", "SQS_BATCH", "DeadLetter", "JobQueue", "QueuedMessage", "sqs_text"]
