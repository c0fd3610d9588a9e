"""The state table: contract, DynamoDB backend, in-memory backend."""

from throttler.store.base import (
    BatchRecord,
    Control,
    KeyMeterWrite,
    LeaseState,
    OpenBatch,
    StateStore,
    ThrottleSignal,
    UsageRecord,
    WorkerRecords,
)
from throttler.store.dynamo import DynamoStateStore, DynamoWorkerRecords
from throttler.store.memory import MemoryStateStore

__all__ = [
    "BatchRecord",
    "Control",
    "DynamoStateStore",
    "DynamoWorkerRecords",
    "KeyMeterWrite",
    "LeaseState",
    "MemoryStateStore",
    "OpenBatch",
    "StateStore",
    "ThrottleSignal",
    "UsageRecord",
    "WorkerRecords",
]
