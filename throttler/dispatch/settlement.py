"""Settlement (no I/O): what a finished batch means for each of its jobs.

Rules (SPEC promises 3, 4, 5): a success is deleted; a job not attempted goes back to the head of its
group, with no attempt spent (and so does a 429'd one: being throttled never spends an attempt); a
retryable failure spends an attempt and waits out its backoff in SQS (its group behind it), or is
dead-lettered when its attempts are spent; a permanent failure or a bad message is dead-lettered at
once, and its group moves on. When the worker's answer is lost, its batch record says which calls
succeeded (never called again) and which were made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from throttler.core.outcome import JobResult, Outcome
from throttler.core.protocol import BatchResponse, BatchStatus
from throttler.dispatch.inbox import Held
from throttler.store.base import BatchRecord

MISSED_SLOT = "missed its slot"


@dataclass
class SentBatch:
    """A batch handed to a worker, until it settles."""

    batch_id: str
    jobs: list[tuple[Held, float]]  # (held, slot), slot order
    sent_at: float
    last_slot: float
    watch: tuple[str, ...] = ()

    @property
    def groups(self) -> set[str]:
        return {h.group for h, _ in self.jobs}


@dataclass
class GroupSettlement:
    group: str
    delete: list[tuple[Held, JobResult, float]] = field(default_factory=list)  # (held, result, slot)
    back: list[Held] = field(default_factory=list)  # not attempted: to the head of the group
    retry: list[tuple[Held, JobResult]] = field(default_factory=list)  # count an attempt; retry later or dead-letter
    dead: list[tuple[Held, JobResult]] = field(default_factory=list)  # permanent or bad: dead-letter now
    throttled: list[tuple[Held, JobResult, float]] = field(default_factory=list)
    observed: list[tuple[Held, JobResult, float]] = field(default_factory=list)  # every attempted call, for the pacer
    missed: int = 0  # jobs the worker could not start inside their slot
    unsent: list[tuple[Held, float]] = field(default_factory=list)  # reserved slots never used (skipped)


@dataclass
class Settlement:
    groups: list[GroupSettlement]
    trouble: str = ""  # the worker did not run or failed: back off before the next batch
    secrets_unavailable: bool = False
    duplicates: int = 0


def results_from_failure(sent: SentBatch, record: BatchRecord | None, now: float, why: str) -> list[JobResult]:
    """The worker's answer is lost (it crashed, timed out, or the invoke was delivered twice): its batch
    record says what succeeded and what was called; a job not in it whose slot came may have been called."""
    results = []
    for held, slot in sent.jobs:
        job_id = held.job_id
        if record is not None and job_id in record.succeeded:
            results.append(JobResult(job_id, Outcome.SUCCEEDED, "recorded by the worker", sent_at=slot))
        elif record is not None and job_id in record.called:
            results.append(JobResult(job_id, Outcome.RETRYABLE, f"{why} after the call", sent_at=slot))
        elif record is None or record.final or slot > now:
            results.append(JobResult(job_id, Outcome.SKIPPED, why))
        else:
            results.append(JobResult(job_id, Outcome.RETRYABLE, f"{why}: the call may have been made", sent_at=slot))
    return results


def settle(sent: SentBatch, response: BatchResponse | None, results: list[JobResult] | None, trouble: str = "") -> Settlement:
    """Decide each job's fate from the worker's results (or those rebuilt from its record)."""
    secrets = response is not None and response.status is BatchStatus.SECRETS_UNAVAILABLE
    if results is None:
        results = response.results if response is not None and response.status is BatchStatus.RAN else []
    by_id = {r.job_id: r for r in results}
    groups: dict[str, GroupSettlement] = {}
    duplicates = 0
    for held, slot in sent.jobs:
        out = groups.get(held.group)
        if out is None:
            out = groups[held.group] = GroupSettlement(held.group)
        result = by_id.get(held.job_id) or JobResult(held.job_id, Outcome.SKIPPED, trouble or "no result")
        outcome = result.outcome
        if result.attempted:
            out.observed.append((held, result, slot))
        if outcome is Outcome.SUCCEEDED:
            out.delete.append((held, result, slot))
            duplicates += int(result.duplicate)
        elif outcome is Outcome.SKIPPED:
            out.back.append(held)
            out.unsent.append((held, slot))
            out.missed += int(result.reason == MISSED_SLOT)
        elif outcome is Outcome.THROTTLED:
            out.throttled.append((held, result, slot))
            out.back.append(held)
        elif outcome is Outcome.RETRYABLE:
            out.retry.append((held, result))
        else:  # PERMANENT or INVALID
            out.dead.append((held, result))
    if secrets:
        trouble = trouble or "the worker could not read the stage's secrets"
    return Settlement(list(groups.values()), trouble, secrets, duplicates)


def retry_delay_s(attempts: int, base_s: float, max_s: float) -> float:
    """Backoff before attempt `attempts + 1`: base, 2 x base, 4 x base ... at most max."""
    return float(min(max_s, base_s * 2 ** max(0, attempts - 1)))


def reason_of(result: JobResult, default: str) -> str:
    return result.reason or default


AttemptCounter = Callable[[str], int]
