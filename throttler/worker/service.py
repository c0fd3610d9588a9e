"""The worker in production: claim a batch, drive its state machine against the real clock, calls on threads.

Order of a batch: load the secrets (a failure is the worker's, not the jobs': nothing is called, no
attempt is counted), claim the batch (a second delivery of the same invoke runs nothing), then start each
job in its slot, publish a 429 at once, record successes at least every second, and write the final
record before returning.
"""

from __future__ import annotations

import functools
import logging
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from throttler.core.clock import Clock
from throttler.core.errors import SecretsUnavailable, StoreError
from throttler.core.outcome import JobResult, Outcome
from throttler.core.protocol import BatchRequest, BatchResponse, BatchStatus, JobSpec
from throttler.store.base import ThrottleSignal, WorkerRecords
from throttler.tasks.registry import TaskRegistry, ValidationContext
from throttler.worker.batch import BatchExecution, Step
from throttler.worker.calls import CallSetup, call_job

logger = logging.getLogger(__name__)
BATCH_RECORD_TTL_S = 14 * 86400
# Stop starting calls this long before the worker's own timeout: calls already started may still finish.
STOP_BEFORE_TIMEOUT_S = 2.0
# Wake this long before a slot and wait out the rest in short steps: thread wake-ups are late by a
# millisecond or more, and a call may leave at most half the margin after its slot.
EARLY_WAKE_S = 0.002
MISSED_SLOT = "missed its slot"  # the reason the throttler counts as a missed slot (dispatch/settlement.py)


@dataclass
class WorkerConfig:
    validation: ValidationContext  # the allow-list, secret header names and body cap (as the throttler checked them)
    max_message_bytes: int = 256 * 1024
    max_parallel: int = 256


# A 429 that other workers do not see lets their calls go on until the run hears of it (seconds): the
# publish is tried again at once when the state table refuses it (throttled, a 5xx after botocore's retries).
PUBLISH_ATTEMPTS = 3


def publish_429(write: Callable[[], None]) -> bool:
    """Publish a 429 in the shared throttle record, trying up to PUBLISH_ATTEMPTS times; False if it never went."""
    for _ in range(PUBLISH_ATTEMPTS):
        try:
            write()
            return True
        except StoreError:
            continue
    return False


class WorkerService:
    def __init__(
        self,
        *,
        config: WorkerConfig,
        records: WorkerRecords,
        clock: Clock,
        registry: TaskRegistry,
        secret_headers: Callable[[], dict[str, str]],
        new_session: Callable[[int], Any],
    ):
        self.config = config
        self.records = records
        self.clock = clock
        self.registry = registry
        self.secret_headers = secret_headers
        self.new_session = new_session

    def run_batch(self, payload: dict[str, Any], remaining_s: float | None = None) -> dict[str, Any]:
        """The handler's one call: a batch request in, a batch response out (plain JSON data)."""
        return self.run(BatchRequest.from_dict(payload), remaining_s).to_dict()

    def run(self, request: BatchRequest, remaining_s: float | None = None) -> BatchResponse:
        start = self.clock.now()
        deadline = start + (remaining_s if remaining_s is not None else 40.0) - STOP_BEFORE_TIMEOUT_S
        if not request.jobs:
            return BatchResponse(request.batch_id, BatchStatus.RAN)
        # Claimed first: botocore may deliver this invoke twice, and an answer that the batch did not run (its
        # secrets unreadable) must not come from one delivery while the other runs it (chaos seed 822: the run
        # sent the batch's job again, and the API had it twice).
        if not self.records.claim(request.batch_id, request.run_id, start, start + BATCH_RECORD_TTL_S):
            logger.warning("batch already claimed", extra={"batch": request.batch_id})
            return BatchResponse(request.batch_id, BatchStatus.DUPLICATE)
        try:
            secrets = self.secret_headers()
        except SecretsUnavailable as exc:
            logger.error("secrets unavailable", extra={"batch": request.batch_id, "error": str(exc)})
            return BatchResponse(request.batch_id, BatchStatus.SECRETS_UNAVAILABLE, error=str(exc))
        parallel = max(
            1, min(self.config.max_parallel, request.pool_size or self.config.max_parallel, len({j.group for j in request.jobs}))
        )
        session = self.new_session(parallel)
        setup = CallSetup(
            registry=self.registry,
            clock=self.clock,
            session=session,
            validation=self.config.validation,
            secret_headers=secrets,
            max_message_bytes=self.config.max_message_bytes,
            cost_header=request.cost_header,
        )
        execution = BatchExecution(request)
        try:
            with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="call") as pool:
                self._drive(execution, pool, setup, deadline)
        finally:
            close = getattr(session, "close", None)
            if callable(close):
                close()
            ok, called = execution.final_record()
            recorded = self._record(request.batch_id, ok, called, True, execution.throttled_at, execution.met_429)
        return BatchResponse(
            request.batch_id,
            BatchStatus.RAN,
            execution.ordered_results(),
            tuple(sorted(execution.watched_final)),
            execution.throttled_at,
            unrecorded=() if recorded else tuple(ok),
        )

    def _drive(self, execution: BatchExecution, pool: ThreadPoolExecutor, setup: CallSetup, deadline: float) -> None:
        finished: queue.Queue[JobResult] = queue.Queue()
        in_flight = 0

        def start(spec: JobSpec) -> None:
            def call() -> None:
                if self.clock.now() > spec.not_after:
                    # It waited for a thread past its slot: sent now it could bunch with later calls
                    # beyond what the reservation allowed. Not attempted; the throttler reschedules it.
                    finished.put(JobResult(spec.id, Outcome.SKIPPED, MISSED_SLOT))
                    return
                try:
                    result = call_job(spec, setup, deadline)
                except Exception as exc:  # noqa: BLE001 - never lose a result: a bug is a retryable failure
                    result = JobResult(spec.id, Outcome.RETRYABLE, f"worker error: {type(exc).__name__}")
                finished.put(result)

            pool.submit(call)

        while True:
            now = self.clock.now()
            if now >= deadline:
                execution.abandon("the worker ran out of time")
            step = execution.step(now)
            self._act(execution, step)
            for spec in step.start:
                start(spec)
                in_flight += 1
            if step.poll_watch:
                continue
            if step.finished:
                return
            wait_s = None if step.wake_at is None else max(0.0, min(step.wake_at, deadline) - self.clock.now())
            result = self._next_result(finished, wait_s)
            while result is not None:
                execution.on_result(result, self.clock.now())
                in_flight -= 1
                result = self._next_result(finished, 0.0)

    def _act(self, execution: BatchExecution, step: Step) -> None:
        for publish in step.publish:
            if not publish_429(functools.partial(self.records.throttle, publish, self.clock.now())):
                logger.error("could not publish a 429", extra={"attempts": PUBLISH_ATTEMPTS})
        if step.poll_watch:
            try:
                signals, final = self.records.watch(sorted(execution.watching))
            except StoreError as exc:
                # Cannot see the other batches: stop rather than risk calls after their 429.
                logger.error("could not read the throttle record", extra={"error": str(exc)})
                execution.abandon("the shared throttle record could not be read")
                return
            execution.on_watch(signals, final, self.clock.now())
        if step.record is not None and not self._record(execution.request.batch_id, *step.record, False, None):
            execution.record_failed(*step.record, self.clock.now())

    def _record(
        self,
        batch_id: str,
        ok: list[str],
        called: list[str],
        final: bool,
        throttled_at: float | None,
        met_429: ThrottleSignal | None = None,
    ) -> bool:
        try:
            self.records.record(batch_id, ok, called, final, throttled_at, met_429)
        except StoreError as exc:
            # The calls happened: still report them (as unrecorded, in the final answer), so that the throttler
            # records and deletes them. Only both writes failing and a throttler crash before the deletes could
            # then repeat a call (with the same Idempotency-Key).
            logger.error("batch record not written", extra={"batch": batch_id, "error": str(exc)})
            return False
        return True

    def _next_result(self, finished: queue.Queue[JobResult], wait_s: float | None) -> JobResult | None:
        try:
            if wait_s is None:
                return finished.get()
            if wait_s > EARLY_WAKE_S:
                return finished.get(timeout=wait_s - EARLY_WAKE_S)
            return finished.get(timeout=max(0.0, wait_s)) if wait_s > 0 else finished.get_nowait()
        except queue.Empty:
            return None
