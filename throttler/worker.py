"""The worker: runs a batch of jobs at their reserved send times, in order within each group.

A batch holds chains (one per group, in queue order) whose jobs each carry a slot
`[not_before, not_after]`. A job is sent inside its slot or not at all (SKIPPED, to be rescheduled):
sending later could bunch calls past what the reservation allowed. A group's chain stops at its first
job that does not succeed; a 429 stops every chain. Successes are recorded before the worker returns,
so a job is never called again, even if the throttler dies before deleting its message.
"""

from __future__ import annotations

import bisect
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from throttler.core.clock import Clock
from throttler.core.envelope import DEFAULT_MAX_MESSAGE_BYTES, Job, parse_job
from throttler.core.errors import (
    InvalidJob,
    PermanentTaskError,
    RetryableTaskError,
    SecretsUnavailable,
    StoreError,
    ThrottledTaskError,
)
from throttler.core.outcome import JobResult, Outcome
from throttler.store import StateStore
from throttler.tasks.http import new_session
from throttler.tasks.registry import TaskContext, TaskRegistry, ValidationContext

logger = logging.getLogger(__name__)
# Success records are written together, at most this long after a success: one request per batch
# at high rates, one per call at low rates.
RECORD_EVERY_S = 0.25


class InlineExecutor:
    """Runs each call at once, in the caller's thread: virtual-time tests and benchmarks."""

    def submit(self, fn: Callable[[], JobResult]) -> Future[JobResult]:
        future: Future[JobResult] = Future()
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future

    def shutdown(self) -> None:
        return None


@dataclass
class _ApiBudget:
    """What the newest X-RateLimit-Remaining/Reset said, and how many calls went out since."""

    remaining: int | None = None
    reset_at: float | None = None
    observed_sent_at: float = float("-inf")
    sent: list[float] = field(default_factory=list)  # send times of this batch, ascending

    def observe(self, result: JobResult) -> None:
        if result.rate_remaining is None or result.sent_at is None or result.sent_at < self.observed_sent_at:
            return
        self.remaining, self.reset_at, self.observed_sent_at = result.rate_remaining, result.rate_reset_at, result.sent_at

    def exhausted(self, now: float) -> str:
        if self.remaining is None or self.reset_at is None or now >= self.reset_at:
            return ""
        since = len(self.sent) - bisect.bisect_right(self.sent, self.observed_sent_at)
        return "the API's rate-limit headers say no calls are left until its reset" if since >= self.remaining else ""


@dataclass
class WorkerConfig:
    allowed_hosts: tuple[str, ...]
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    done_ttl_s: float = 7 * 86400
    max_parallel: int = 32
    stage: str = ""  # `*` in allowed_hosts is accepted on the local stage only
    secret_header_names: tuple[str, ...] = ()  # headers a message may not set
    call_budget_s: float = 30.0  # each call's total deadline, from its start


class WorkerService:
    def __init__(
        self,
        *,
        config: WorkerConfig,
        store: StateStore,
        clock: Clock,
        registry: TaskRegistry,
        session: requests.Session | None = None,
        secret_headers: Callable[[], dict[str, str]] = dict,
        executor_factory: Callable[[int], Any] | None = None,
    ):
        self.config = config
        self.store = store
        self.clock = clock
        self.registry = registry
        self.session = session or new_session(config.max_parallel)
        self.secret_headers = secret_headers
        self.validation = ValidationContext.build(config.allowed_hosts, config.stage, config.secret_header_names)
        self.executor_factory = executor_factory or (lambda n: ThreadPoolExecutor(max_workers=n))

    def run_batch(self, request: dict[str, Any]) -> dict[str, Any]:
        jobs: list[dict[str, Any]] = list(request.get("jobs", []))
        results: dict[str, JobResult] = {}
        already = self.store.done_ids(j["id"] for j in jobs) if jobs else set()
        groups = {j["group"] for j in jobs}
        executor = self.executor_factory(max(1, min(self.config.max_parallel, len(groups))))
        running: dict[str, tuple[str, Future[JobResult]]] = {}
        stopped: dict[str, str] = {}  # group -> why its chain stopped
        stop_all = ""
        budget = _ApiBudget()
        unrecorded: list[JobResult] = []  # successes whose record is not written yet, oldest first
        group_of = {j["id"]: j["group"] for j in jobs}
        try:
            for spec in sorted(jobs, key=lambda j: j["not_before"]):
                job_id, group = spec["id"], spec["group"]
                stop_all = (
                    stop_all
                    or self._settle(running, results, stopped, budget, unrecorded)
                    or budget.exhausted(self.clock.now())
                )
                self._record_successes(unrecorded, due_only=True)
                if stop_all:
                    results[job_id] = JobResult(job_id, Outcome.SKIPPED, stop_all)
                    continue
                if group in stopped:
                    results[job_id] = JobResult(job_id, Outcome.SKIPPED, stopped[group])
                    continue
                if job_id in already:
                    results[job_id] = JobResult(job_id, Outcome.SUCCEEDED, "already succeeded", duplicate=True)
                    continue
                self.clock.sleep(spec["not_before"] - self.clock.now())
                previous = running.get(group)
                if previous is not None:
                    if not previous[1].done():
                        try:  # the previous job of this group must finish first; wait inside the slot only
                            previous[1].result(timeout=max(0.0, spec["not_after"] - self.clock.now()))
                        except Exception:  # noqa: BLE001,S110 - its outcome is collected by _settle
                            pass
                    # Settle it even if it finished during the sleep above: otherwise its result is lost
                    # (and a failure would not stop the group) when this job takes its place in `running`.
                    stop_all = stop_all or self._settle(running, results, stopped, budget, unrecorded)
                    if group in stopped or stop_all:
                        results[job_id] = JobResult(job_id, Outcome.SKIPPED, stop_all or stopped[group])
                        continue
                if (group in running and not running[group][1].done()) or self.clock.now() > spec["not_after"]:
                    results[job_id] = JobResult(job_id, Outcome.SKIPPED, "missed its slot")
                    stopped[group] = "an earlier job of the group missed its slot"
                    continue
                if any(group_of[r.job_id] == group for r in unrecorded):
                    # Never call a group's next job while an earlier success of the group is unrecorded:
                    # a worker killed later would have that one called again *after* this one.
                    self._record_successes(unrecorded)
                budget.sent.append(self.clock.now())
                running[group] = (job_id, executor.submit(functools.partial(self._run_one, spec)))
            for _, future in running.values():
                try:
                    future.result()
                except Exception:  # noqa: BLE001,S110 - _run_one never raises; defensive
                    pass
            self._settle(running, results, stopped, budget, unrecorded)
        finally:
            executor.shutdown()  # waits for calls still running
            self._settle(running, results, stopped, budget, unrecorded)
            # Before returning, and even when the batch breaks off: a job that succeeded must never be
            # called again.
            self._record_successes(unrecorded)
        return {"results": [results[j["id"]].to_dict() for j in jobs]}

    @staticmethod
    def _settle(
        running: dict[str, tuple[str, Future[JobResult]]],
        results: dict[str, JobResult],
        stopped: dict[str, str],
        budget: _ApiBudget,
        unrecorded: list[JobResult],
    ) -> str:
        """Collect finished calls; returns a reason to stop every chain if one was throttled."""
        stop_all = ""
        for group, (job_id, future) in list(running.items()):
            if not future.done():
                continue
            del running[group]
            result = future.result()
            results[job_id] = result
            budget.observe(result)
            if result.outcome is Outcome.SUCCEEDED and not result.duplicate:
                unrecorded.append(result)
            if result.outcome is not Outcome.SUCCEEDED:
                stopped[group] = f"an earlier job of the group ended {result.outcome.value}"
            if result.outcome is Outcome.THROTTLED:
                stop_all = "the API answered 429 to another job of the batch"
        return stop_all

    def _run_one(self, spec: dict[str, Any]) -> JobResult:
        job_id = spec["id"]
        try:
            job = parse_job(
                spec["body"],
                spec["group"],
                job_id,
                tasks=self.registry,
                validation=self.validation,
                max_bytes=self.config.max_message_bytes,
            )
        except InvalidJob as exc:
            return JobResult(job_id, Outcome.INVALID, str(exc))
        return self.run_job(job, not_after=spec["not_after"])

    def run_job(self, job: Job, not_after: float) -> JobResult:
        fn = self.registry.get(job.task)
        if fn is None:
            return JobResult(job.job_id, Outcome.INVALID, f"unknown task {job.task!r}")
        try:
            secret_headers = self.secret_headers()
        except SecretsUnavailable as exc:
            # The stage's failure, not the job's: no attempt is counted (SKIPPED jobs are rescheduled).
            logger.error("secrets unavailable", extra={"job_id": job.job_id, "error": str(exc)})
            return JobResult(job.job_id, Outcome.SKIPPED, "the stage's secrets could not be read")
        ctx = TaskContext(
            job_id=job.job_id,
            group=job.group,
            clock=self.clock,
            session=self.session,
            validation=self.validation,
            not_after=not_after,
            deadline=self.clock.now() + self.config.call_budget_s,
            secret_headers=secret_headers,
        )
        sent_at = self.clock.now()
        try:
            out = fn(job.payload, ctx)
        except ThrottledTaskError as exc:
            return self._result(job, Outcome.THROTTLED, exc, sent_at, retry_after_s=exc.retry_after_s)
        except PermanentTaskError as exc:
            return self._result(job, Outcome.PERMANENT, exc, sent_at)
        except RetryableTaskError as exc:
            return self._result(job, Outcome.RETRYABLE, exc, sent_at)
        except InvalidJob as exc:
            return self._result(job, Outcome.INVALID, exc, sent_at)
        except Exception as exc:  # noqa: BLE001 - a custom task's bug is a retryable failure, not a crash
            logger.warning("task raised", extra={"job_id": job.job_id, "task": job.task, "error": type(exc).__name__})
            return self._result(job, Outcome.RETRYABLE, RetryableTaskError(f"task raised {type(exc).__name__}"), sent_at)
        result = self._result(job, Outcome.SUCCEEDED, None, sent_at)
        if out is not None:
            result.status = out.status
            result.rate_remaining = out.rate_remaining
            result.rate_reset_at = out.rate_reset_at
        return result

    def _record_successes(self, unrecorded: list[JobResult], due_only: bool = False) -> None:
        """Write the pending success records in one request. With `due_only`, only once the oldest is
        RECORD_EVERY_S old: a worker killed mid-batch can repeat at most that much."""
        if not unrecorded:
            return
        now = self.clock.now()
        if due_only and now - (unrecorded[0].sent_at or now) < RECORD_EVERY_S:
            return
        job_ids = [r.job_id for r in unrecorded]
        unrecorded.clear()
        try:
            self.store.mark_done(job_ids, now + self.config.done_ttl_s)
        except StoreError as exc:
            # The calls succeeded: still report them, so the throttler deletes the messages. Only a
            # throttler crash before those deletes could then repeat a call (same Idempotency-Key).
            logger.error("successes not recorded", extra={"jobs": len(job_ids), "error": str(exc)})

    def _result(
        self, job: Job, outcome: Outcome, error: Exception | None, sent_at: float, retry_after_s: float | None = None
    ) -> JobResult:
        status = getattr(error, "status", None)
        reason = str(error) if error is not None else ""
        return JobResult(
            job.job_id, outcome, reason, status=status, retry_after_s=retry_after_s,
            sent_at=sent_at, duration_s=self.clock.now() - sent_at,
        )
