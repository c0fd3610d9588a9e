"""The in-memory twins, counted as the AWS adapters would bill them.

`CountingJobQueue` counts at the JobQueue contract's primitives, which map one to one to SQS requests
(the contract chunks by 10 before it calls them, exactly as `SqsJobQueue` does). `CountingStateStore`
counts each state-table method as `DynamoStateStore` / `DynamoWorkerRecords` send it (their chunking:
BatchGetItem 100 keys per request, BatchWriteItem 25 items, one TransactWriteItems per commit that
writes key meters, else one PutItem / UpdateItem), with request units from the items' sizes.
`tests/bench/test_request_counts.py` runs the same scenario on moto with a boto3 `before-call` hook
and checks that both counts agree.

Time spent inside the twins is charged to the `twin` CPU section: it stands for AWS's servers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from throttler.queue import MemoryJobQueue, MemorySqs
from throttler.queue.base import OutgoingMessage, QueueDepth, QueuedMessage, SendFailure, Target
from throttler.store.base import (
    ATTEMPTS_PREFIX,
    BATCH_PREFIX,
    DONE_PREFIX,
    KEY_THROTTLE_KEY,
    KEY_USAGE_PREFIX,
    LAST_GOOD_KEY,
    LEASE_KEY,
    PAUSE_KEY,
    QUOTAS_KEY,
    STAGE_KEY,
    THROTTLE_KEY,
    USAGE_KEY,
    BatchRecord,
    Control,
    KeyMeterWrite,
    LeaseState,
    OpenBatch,
    ThrottleSignal,
    UsageRecord,
)
from throttler.store.memory import MemoryStateStore
from throttler_tools.bench.meters import TWIN, CpuMeter, Requests

SQS_CHUNK_BYTES = 64 * 1024


# ---------------------------------------------------------------------------------------------- sizes
def ddb_size(value: Any) -> int:
    """DynamoDB's size of a value in bytes (attribute names are added by `item_size`): strings and
    binaries their bytes, numbers about one byte per two digits plus one, collections their elements
    plus 3 bytes (and 1 per element)."""
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, (int, float, Decimal)):
        digits = len(str(value).replace("-", "").replace(".", "").lstrip("0")) or 1
        return 1 + math.ceil(digits / 2)
    if isinstance(value, Mapping):
        return 3 + sum(len(str(k).encode("utf-8")) + ddb_size(v) + 1 for k, v in value.items())
    if isinstance(value, (set, frozenset)):
        return sum(ddb_size(v) for v in value)
    if isinstance(value, (list, tuple)):
        return 3 + sum(ddb_size(v) + 1 for v in value)
    return len(str(value))


def item_size(item: Mapping[str, Any] | None) -> int:
    if not item:
        return 0
    return sum(len(k.encode("utf-8")) + ddb_size(v) for k, v in item.items())


def read_units(size: int) -> float:
    """Strongly consistent read: 1 unit per 4 KB, at least 1 (a missing item costs the minimum too)."""
    return float(max(1, math.ceil(size / 4096)))


def write_units(size: int, transactional: bool = False) -> float:
    return float(max(1, math.ceil(size / 1024)) * (2 if transactional else 1))


def sqs_chunks(payload_bytes: int) -> int:
    return max(1, math.ceil(payload_bytes / SQS_CHUNK_BYTES))


# ---------------------------------------------------------------------------------------------- SQS
class CountingJobQueue(MemoryJobQueue):
    """The in-memory SQS model behind the JobQueue contract, each primitive counted as one SQS request."""

    def __init__(self, model: MemorySqs, jobs_queue_name: str, dlq_name: str, requests: Requests, meter: CpuMeter):
        super().__init__(model, jobs_queue_name, dlq_name)
        self.requests = requests
        self.meter = meter

    def _receive(self, target: Target, max_messages: int, visibility_s: int, wait_s: int) -> list[QueuedMessage]:
        with self.meter.section(TWIN):
            messages = super()._receive(target, max_messages, visibility_s, wait_s)
        self.requests.add("sqs", "ReceiveMessage", chunks=sqs_chunks(sum(m.size_bytes for m in messages)))
        return messages

    def _delete(self, target: Target, receipts: Sequence[str]) -> list[str]:
        self.requests.add("sqs", "DeleteMessageBatch", chunks=1)
        with self.meter.section(TWIN):
            return super()._delete(target, receipts)

    def _change_visibility(self, target: Target, changes: Sequence[tuple[str, int]]) -> list[str]:
        self.requests.add("sqs", "ChangeMessageVisibilityBatch", chunks=1)
        with self.meter.section(TWIN):
            return super()._change_visibility(target, changes)

    def _send(self, target: Target, messages: Sequence[OutgoingMessage]) -> list[SendFailure]:
        self.requests.add("sqs", "SendMessageBatch", chunks=sqs_chunks(sum(m.size_bytes for m in messages)))
        with self.meter.section(TWIN):
            return super()._send(target, messages)

    def _depth(self, target: Target) -> QueueDepth:
        self.requests.add("sqs", "GetQueueAttributes", chunks=1)
        with self.meter.section(TWIN):
            return super()._depth(target)


# ---------------------------------------------------------------------------------------------- DynamoDB
class CountingStateStore(MemoryStateStore):
    """The in-memory state table (both views), each method counted as the DynamoDB adapters send it."""

    def __init__(self, requests: Requests, meter: CpuMeter):
        super().__init__()
        self.requests = requests
        self.meter = meter

    # -- helpers (sizing items for request units is the table's side of the bill: charged to the twin)
    def _size(self, pk: str) -> int:
        with self.meter.section(TWIN):
            return item_size(self.items.get(pk))

    def _batch_get(self, pks: Sequence[str]) -> None:
        with self.meter.section(TWIN):
            unique = list(dict.fromkeys(pks))
            for start in range(0, len(unique), 100):
                chunk = unique[start : start + 100]
                self.requests.add("dynamodb", "BatchGetItem", rru=sum(read_units(self._size(pk)) for pk in chunk))

    def _batch_write(self, pks: Sequence[str], sizes: Sequence[int]) -> None:
        with self.meter.section(TWIN):
            for start in range(0, len(pks), 25):
                self.requests.add("dynamodb", "BatchWriteItem", wru=sum(write_units(s) for s in sizes[start : start + 25]))

    def _write(self, action: str, pk: str, before: int) -> None:
        with self.meter.section(TWIN):
            self.requests.add("dynamodb", action, wru=write_units(max(before, self._size(pk))))

    # -- control
    def read_control(self) -> Control:
        self._batch_get([QUOTAS_KEY, LAST_GOOD_KEY, PAUSE_KEY, THROTTLE_KEY, KEY_THROTTLE_KEY, LEASE_KEY, STAGE_KEY])
        with self.meter.section(TWIN):
            return super().read_control()

    def put_quotas(self, item: Mapping[str, Any]) -> None:
        before = self._size(QUOTAS_KEY)
        with self.meter.section(TWIN):
            super().put_quotas(item)
        self._write("PutItem", QUOTAS_KEY, before)

    def put_last_good(self, item: Mapping[str, Any]) -> None:
        before = self._size(LAST_GOOD_KEY)
        with self.meter.section(TWIN):
            super().put_last_good(item)
        self._write("PutItem", LAST_GOOD_KEY, before)

    def put_stage_settings(self, settings: Mapping[str, Any]) -> None:
        before = self._size(STAGE_KEY)
        with self.meter.section(TWIN):
            super().put_stage_settings(settings)
        self._write("PutItem", STAGE_KEY, before)

    def set_pause(self, until: float, reason: str, extend_only: bool = True) -> None:
        before = self._size(PAUSE_KEY)
        with self.meter.section(TWIN):
            super().set_pause(until, reason, extend_only)
        self._write("PutItem", PAUSE_KEY, before)

    def clear_pause(self) -> None:
        sizes = [self._size(PAUSE_KEY), self._size(THROTTLE_KEY), self._size(KEY_THROTTLE_KEY)]
        with self.meter.section(TWIN):
            super().clear_pause()
        self._batch_write([PAUSE_KEY, THROTTLE_KEY, KEY_THROTTLE_KEY], sizes)

    def publish_throttle(self, signal: ThrottleSignal, now: float | None = None) -> None:
        """The shared throttle record's UpdateItem (the memory store's `throttle` writes through here)."""
        item = THROTTLE_KEY if signal.key is None else KEY_THROTTLE_KEY
        before = self._size(item)
        with self.meter.section(TWIN):
            super().publish_throttle(signal, now)
        self._write("UpdateItem", item, before)

    def forget_key_throttles(self, signals: Sequence[ThrottleSignal]) -> bool:
        before = self._size(KEY_THROTTLE_KEY)
        with self.meter.section(TWIN):
            removed = super().forget_key_throttles(signals)
        self._write("UpdateItem", KEY_THROTTLE_KEY, before)
        return removed

    # -- lease
    def acquire_lease(self, owner: str, now: float, ttl_s: float, runs_until: float | None = None) -> LeaseState:
        before = self._size(LEASE_KEY)
        with self.meter.section(TWIN):
            state = super().acquire_lease(owner, now, ttl_s, runs_until)
        self._write("PutItem", LEASE_KEY, before)  # conditional: a failed condition costs the write too
        if state.owner != owner:
            self._batch_get([LEASE_KEY])
        return state

    def request_handover(self, owner: str, holder: str, now: float, wait_s: float) -> bool:
        before = self._size(LEASE_KEY)
        with self.meter.section(TWIN):
            done = super().request_handover(owner, holder, now, wait_s)
        self._write("UpdateItem", LEASE_KEY, before)
        return done

    def hand_over(self, owner: str, successor: str, now: float, ttl_s: float) -> bool:
        before = self._size(LEASE_KEY)
        with self.meter.section(TWIN):
            done = super().hand_over(owner, successor, now, ttl_s)
        self._write("PutItem", LEASE_KEY, before)
        return done

    def renew_lease(self, owner: str, now: float, ttl_s: float, runs_until: float | None = None) -> bool:
        before = self._size(LEASE_KEY)
        with self.meter.section(TWIN):
            done = super().renew_lease(owner, now, ttl_s, runs_until)
        self._write("UpdateItem", LEASE_KEY, before)
        return done

    def release_lease(self, owner: str) -> None:
        before = self._size(LEASE_KEY)
        with self.meter.section(TWIN):
            super().release_lease(owner)
        self.requests.add("dynamodb", "DeleteItem", wru=write_units(before))

    # -- usage
    def load_usage(self) -> UsageRecord:
        self._batch_get([USAGE_KEY])
        with self.meter.section(TWIN):
            return super().load_usage()

    def load_key_meters(self, keys: Sequence[str]) -> dict[str, str | None]:
        self._batch_get([KEY_USAGE_PREFIX + k for k in keys])
        with self.meter.section(TWIN):
            return super().load_key_meters(keys)

    def commit_usage(
        self,
        expected_version: int,
        stage_meter: str | None,
        key_meters: Mapping[str, KeyMeterWrite],
        open_add: Mapping[str, OpenBatch],
        open_remove: Iterable[str],
        done_until: float | None = None,
        keys_summary: Mapping[str, Any] | None = None,
    ) -> bool:
        before = self._size(USAGE_KEY)
        with self.meter.section(TWIN):
            done = super().commit_usage(
                expected_version, stage_meter, key_meters, open_add, open_remove, done_until, keys_summary
            )
        usage = max(before, self._size(USAGE_KEY))
        if key_meters:
            keys = sum(write_units(self._size(KEY_USAGE_PREFIX + k), transactional=True) for k in key_meters)
            self.requests.add("dynamodb", "TransactWriteItems", wru=write_units(usage, transactional=True) + keys)
        else:
            self.requests.add("dynamodb", "PutItem" if expected_version == 0 else "UpdateItem", wru=write_units(usage))
        return done

    def close_open_batches(self, batch_ids: Iterable[str]) -> None:
        ids = list(batch_ids)
        if not ids:
            return
        before = self._size(USAGE_KEY)
        with self.meter.section(TWIN):
            super().close_open_batches(ids)
        self._write("UpdateItem", USAGE_KEY, before)

    # -- attempts and successes
    def add_attempt(self, job_id: str, ttl_at: float) -> int:
        with self.meter.section(TWIN):
            count = super().add_attempt(job_id, ttl_at)
        self._write("UpdateItem", ATTEMPTS_PREFIX + job_id, 0)
        return count

    def get_attempts(self, job_ids: Sequence[str]) -> dict[str, int]:
        self._batch_get([ATTEMPTS_PREFIX + j for j in job_ids])
        with self.meter.section(TWIN):
            return super().get_attempts(job_ids)

    def reset_attempts(self, job_ids: Sequence[str]) -> None:
        pks = [ATTEMPTS_PREFIX + j for j in dict.fromkeys(job_ids)]
        sizes = [self._size(pk) for pk in pks]
        with self.meter.section(TWIN):
            super().reset_attempts(job_ids)
        self._batch_write(pks, sizes)

    def mark_done(self, job_ids: Sequence[str], ttl_at: float) -> None:
        with self.meter.section(TWIN):
            super().mark_done(job_ids, ttl_at)
        pks = [DONE_PREFIX + j for j in dict.fromkeys(job_ids)]
        self._batch_write(pks, [self._size(pk) for pk in pks])

    def done_ids(self, job_ids: Sequence[str]) -> set[str]:
        self._batch_get([DONE_PREFIX + j for j in job_ids])
        with self.meter.section(TWIN):
            return super().done_ids(job_ids)

    def read_batches(self, batch_ids: Sequence[str]) -> dict[str, BatchRecord]:
        self._batch_get([BATCH_PREFIX + b for b in batch_ids])
        with self.meter.section(TWIN):
            return super().read_batches(batch_ids)

    # -- the worker's records
    def claim(self, batch_id: str, run_id: str, now: float, ttl_at: float) -> bool:
        with self.meter.section(TWIN):
            done = super().claim(batch_id, run_id, now, ttl_at)
        self._write("PutItem", BATCH_PREFIX + batch_id, 0)
        return done

    def record(
        self,
        batch_id: str,
        succeeded: Iterable[str],
        called: Iterable[str],
        final: bool,
        throttled_at: float | None = None,
        met_429: ThrottleSignal | None = None,
    ) -> None:
        ok, tried = list(succeeded), list(called)
        if not ok and not tried and not final and throttled_at is None and met_429 is None:
            return  # the adapter sends nothing
        before = self._size(BATCH_PREFIX + batch_id)
        with self.meter.section(TWIN):
            super().record(batch_id, ok, tried, final, throttled_at, met_429)
        self._write("UpdateItem", BATCH_PREFIX + batch_id, before)

    def throttle(self, signal: ThrottleSignal, now: float | None = None) -> None:
        super().throttle(signal, now)  # counted in publish_throttle

    def watch(self, batch_ids: Sequence[str]) -> tuple[list[ThrottleSignal], set[str]]:
        self._batch_get([THROTTLE_KEY, KEY_THROTTLE_KEY, *(BATCH_PREFIX + b for b in batch_ids)])
        with self.meter.section(TWIN):
            return super().watch(batch_ids)
