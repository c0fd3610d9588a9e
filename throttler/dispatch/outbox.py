"""Batches on their way: hand a planned batch to a worker, and carry out what its settlement says.

Carrying out a settlement is the only place a job's fate becomes an AWS call: deletes (batched),
attempts counted in the state table, backoff in SQS (the group waits behind the job), dead letters
with their reason, and what the API said fed back to the pacer and the pauses.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from throttler.core.outcome import JobResult, Outcome
from throttler.core.pacing import Pacer
from throttler.core.protocol import BatchRequest, BatchResponse, BatchStatus, JobSpec
from throttler.dispatch.control import Pauses
from throttler.dispatch.inbox import Held, Inbox
from throttler.dispatch.planner import Plan
from throttler.dispatch.settlement import GroupSettlement, SentBatch, results_from_failure, retry_delay_s, settle
from throttler.dispatch.timing import DONE_TTL_S
from throttler.queue import DeadLetter, JobQueue
from throttler.store.base import StateStore, ThrottleSignal
from throttler.worker.invoker import Invoker, WorkerFailed, WorkerNotRun

logger = logging.getLogger(__name__)
ATTEMPTS_TTL_S = 14 * 86400


@dataclass
class RetryPolicy:
    max_attempts: int = 3
    base_s: float = 10.0
    max_s: float = 900.0


@dataclass
class Tally:
    dispatched: int = 0
    batches: int = 0
    succeeded: int = 0
    duplicates: int = 0
    retried: int = 0
    dead_lettered: int = 0
    invalid: int = 0
    throttled: int = 0
    skipped: int = 0
    missed_slots: int = 0
    worker_failures: int = 0
    secrets_unavailable: int = 0


@dataclass
class InFlight:
    sent: SentBatch
    future: Future[BatchResponse]
    recheck_at: float = 0.0  # an answer that may hide a running worker: when to read its record again


@dataclass
class Outbox:
    queue: JobQueue
    store: StateStore
    invoker: Invoker
    inbox: Inbox
    retry: RetryPolicy
    owner: str
    on_done: Callable[[], None] = lambda: None  # wakes the driver when a batch finishes
    in_flight: dict[str, InFlight] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)
    latency_s: float = 0.2  # a first guess at a call's duration, until results come in
    worker_trouble: int = 0
    last_sent_slot: float | None = None  # the latest slot of a call that was (or may have been) sent
    worker_timeout_s: float = 40.0  # after sent_at + this, a worker that has not finished its record is dead

    # ------------------------------------------------------------------ sending
    def new_batch_id(self) -> str:
        return uuid.uuid4().hex

    def send(
        self,
        batch_id: str,
        plan: Plan,
        now: float,
        watch: tuple[str, ...],
        tolerance: Callable[[Held], float],
        pool_size: int,
        cost_header: str | None,
        key_scoped: bool,
        watch_throttle: bool = False,
        api_policy: bool = False,
        signals_known_at: float | None = None,
    ) -> SentBatch:
        """`signals_known_at`: when the run last read the shared throttle record (it knows every 429 published
        before that; the worker must stop for any later one). Defaults to `now`."""
        specs = []
        late_s: dict[str | None, float] = {}  # the tolerance depends on the job's key alone
        for held, slot in plan.jobs:
            slack = late_s.get(held.key)
            if slack is None:
                slack = late_s[held.key] = tolerance(held)
            specs.append(JobSpec(held.job_id, held.group, held.msg.body, slot, slot + slack, held.key, held.cost))
        known = now if signals_known_at is None else min(now, signals_known_at)
        request = BatchRequest(
            batch_id, self.owner, tuple(specs), watch, known, pool_size, cost_header, key_scoped, watch_throttle, api_policy
        )
        for group, jobs in plan.by_group().items():
            self.inbox.take(group, len(jobs))
        sent = SentBatch(batch_id, list(plan.jobs), now, plan.jobs[-1][1], watch)
        future = self.invoker.submit(request)
        future.add_done_callback(lambda _f: self.on_done())
        self.in_flight[batch_id] = InFlight(sent, future)
        self.tally.batches += 1
        self.tally.dispatched += len(specs)
        return sent

    @property
    def busy_groups(self) -> set[str]:
        return {g for f in self.in_flight.values() for g in f.sent.groups}

    def keys_in_flight(self) -> frozenset[str]:
        return frozenset(h.fair_key for f in self.in_flight.values() for h, _ in f.sent.jobs)

    def unsettled(self) -> list[str]:
        return list(self.in_flight)

    # ------------------------------------------------------------------ settling
    def settle_finished(
        self, now: float, pacer: Pacer | None, pauses: Pauses, auto_window: Callable[[str | None], float | None]
    ) -> list[str]:
        """Settle every batch whose worker answered (or failed); returns their ids."""
        done = [b for b, f in self.in_flight.items() if f.future.done() and not self._worker_may_run(f, now)]
        for batch_id in done:
            flight = self.in_flight.pop(batch_id)
            self._settle_one(flight, now, pacer, pauses, auto_window)
        return done

    def _worker_may_run(self, flight: InFlight, now: float) -> bool:
        """True while a failed answer may hide a worker that is still calling: the invoke's connection dropped
        (botocore would have sent it again), a delivery failed while another ran, or this was a second delivery of
        a claimed batch. Until its record is
        final or its timeout has passed, its jobs stay with it: handing them back would call them twice, out of
        order."""
        exc = flight.future.exception()
        duplicate = exc is None and flight.future.result().status is BatchStatus.DUPLICATE
        # An error answer (WorkerFailed) may come from one delivery while another runs: botocore sent the Invoke
        # twice, and the first failed (its claim, say) after the second had claimed the batch.
        if not (duplicate or isinstance(exc, WorkerFailed)):
            return False  # answered, or never run: the record (if any) is all there is
        dead_by = flight.sent.sent_at + self.worker_timeout_s + 1.0
        if now >= dead_by:
            return False
        if now < flight.recheck_at:
            return True
        record = self.store.read_batches([flight.sent.batch_id]).get(flight.sent.batch_id)
        if record is not None and record.final:
            return False
        flight.recheck_at = min(now + 1.0, dead_by)
        return True

    def next_recheck(self) -> float | None:
        """When a batch held for a possibly running worker is looked at again (None: there is none)."""
        times = [f.recheck_at for f in self.in_flight.values() if f.future.done() and f.recheck_at > 0]
        return min(times) if times else None

    def _settle_one(
        self, flight: InFlight, now: float, pacer: Pacer | None, pauses: Pauses, auto_window: Callable[[str | None], float | None]
    ) -> None:
        sent = flight.sent
        response: BatchResponse | None = None
        results: list[JobResult] | None = None
        trouble = ""
        try:
            response = flight.future.result()
        except WorkerNotRun as exc:
            trouble = f"worker not run: {exc}"
        except (WorkerFailed, Exception) as exc:  # noqa: BLE001 - any failure: calls may have been made
            trouble = f"worker failed: {exc}"
        if response is not None and response.status is BatchStatus.DUPLICATE:
            trouble = "worker answered for a batch claimed before"
        if response is not None and response.unrecorded:
            # Its worker could not record these successes: before anything that may fail (an attempt count, a
            # dead letter), or a crash before their deletes would call them again.
            self.store.mark_done(sorted(response.unrecorded), now + DONE_TTL_S)
        if trouble and not trouble.startswith("worker not run"):
            record = self.store.read_batches([sent.batch_id]).get(sent.batch_id)
            results = results_from_failure(sent, record, now, "worker failed")
            if record is not None and record.met_429 is not None:
                # Its answer never came: its record has the 429 (and the Retry-After) its worker met.
                signal = record.met_429.bounded(now)
                streak = 0
                if pacer is not None:
                    streak = pacer.stage.meter.api.note_429(signal.at)
                    pacer.stage.meter.dirty = True
                pauses.from_worker(signal, auto_window(signal.key), streak)
            elif record is not None and record.throttled_at is not None:
                # Stopped by another batch's 429 (or a record without the 429's detail): that one is in the shared
                # record, which the run reads before its next batch.
                pauses.unread_429 = max(pauses.unread_429 or -math.inf, record.throttled_at)
        outcome = settle(sent, response, results, trouble)
        if outcome.trouble:
            self.worker_trouble += 1
            self.tally.worker_failures += 1
            self.tally.secrets_unavailable += int(outcome.secrets_unavailable)
            logger.warning("worker trouble", extra={"batch": sent.batch_id, "error": outcome.trouble})
        else:
            self.worker_trouble = 0
        self.tally.duplicates += outcome.duplicates
        # Every 429 of the batch first: the pause and the learned limit's fall come before any success of the
        # same batch is counted as a window without a 429.
        for group in outcome.groups:
            self._throttled(group, now, pacer, pauses, auto_window)
        for group in outcome.groups:
            self._apply(group, now, pacer, pauses, sent.sent_at)

    def _throttled(
        self,
        group: GroupSettlement,
        now: float,
        pacer: Pacer | None,
        pauses: Pauses,
        auto_window: Callable[[str | None], float | None],
    ) -> None:
        for held, result, _slot in group.throttled:
            self.tally.throttled += 1
            window = pacer.observe_429(now, held.key, result.sent_at) if pacer is not None else None
            window = window if window is not None else auto_window(held.key)
            at = result.sent_at + (result.duration_s or 0.0) if result.sent_at is not None else now
            streak = pacer.stage.meter.api.note_429(at, result.sent_at) if pacer is not None else 0
            if pacer is not None:
                pacer.stage.meter.dirty = True
            pauses.from_worker(
                ThrottleSignal(at, result.retry_after_s, "", held.key if pauses_keyed(pacer) else None), window, streak
            )
            logger.warning(
                "api throttled, pausing",
                extra={"job_id": held.job_id, "group": held.group, "retry_after_s": result.retry_after_s},
            )

    def _apply(self, group: GroupSettlement, now: float, pacer: Pacer | None, pauses: Pauses, planned_at: float) -> None:
        for held, result, slot in group.observed:
            self._observe(held, result, slot, now, pacer, planned_at)
            self.last_sent_slot = slot if self.last_sent_slot is None else max(self.last_sent_slot, slot)
        if pacer is not None:
            for held, slot in group.unsent:
                pacer.release(slot, held.key, held.cost)
        for held, _result, _slot in group.delete:
            self.inbox.pending_deletes.append(held.msg.receipt)
            self.inbox.succeeded_by_receipt[held.msg.receipt] = held.job_id
            self.tally.succeeded += 1
            pauses.on_success()
            if pacer is not None and pacer.stage.meter.api.streak:
                pacer.stage.meter.api.streak = 0
                pacer.stage.meter.dirty = True
        self.tally.skipped += len(group.back) - len(group.throttled)
        self.tally.missed_slots += group.missed
        dead = [(h, r.reason or r.outcome.value, self._attempts(h, r, now)) for h, r in group.dead]
        release = False
        retry_changes: list[tuple[str, float]] = []
        for held, result in group.retry:
            attempts = self.store.add_attempt(held.job_id, now + ATTEMPTS_TTL_S)
            if attempts >= self.retry.max_attempts:
                dead.append((held, f"attempts exhausted: {result.reason or 'retryable failure'}", attempts))
                continue
            delay = retry_delay_s(attempts, self.retry.base_s, self.retry.max_s)
            retry_changes.append((held.msg.receipt, delay))
            self.tally.retried += 1
            release = True
            logger.info(
                "job will be retried",
                extra={"job_id": held.job_id, "group": held.group, "attempts": attempts, "delay_s": delay,
                       "reason": result.reason or "retryable failure"},
            )
        if dead:
            self.queue.dead_letter([DeadLetter(h.msg, reason, attempts) for h, reason, attempts in dead])
            self.tally.dead_lettered += len(dead)
            self.tally.invalid += sum(1 for h, r in group.dead if r.outcome is Outcome.INVALID)
            for held, reason, attempts in dead:
                logger.warning(
                    "job dead-lettered",
                    extra={"job_id": held.job_id, "group": held.group, "reason": reason, "attempts": attempts},
                )
        if release:
            # An earlier job waits for its retry in SQS: the rest of the group stays behind it there.
            rest = [(h.msg.receipt, 0.0) for h in group.back] + [
                (h.msg.receipt, 0.0) for h in self.inbox.remove_group(group.group)
            ]
            self.queue.change_visibility(retry_changes + rest)
        else:
            self.inbox.put_back(group.group, group.back)

    def _attempts(self, held: Held, result: JobResult, now: float) -> int:
        """Real attempts for the dead letter: a permanent failure was one more; a bad message made none now."""
        if result.outcome is Outcome.PERMANENT:
            return self.store.add_attempt(held.job_id, now + ATTEMPTS_TTL_S)
        return self.store.get_attempts([held.job_id]).get(held.job_id, 0)

    def _observe(self, held: Held, result: JobResult, slot: float, now: float, pacer: Pacer | None, planned_at: float) -> None:
        if result.duration_s is not None:
            self.latency_s = 0.8 * self.latency_s + 0.2 * result.duration_s
        if pacer is None:
            return
        if result.outcome is Outcome.SUCCEEDED:
            pacer.observe_success(now, held.key, result.sent_at if result.sent_at is not None else slot, planned_at)
        if result.api:
            from throttler.core.ratelimit import ApiWord

            pacer.observe_api(
                now, held.key, result.sent_at if result.sent_at is not None else slot, ApiWord.from_dict(result.api)
            )
        if result.cost_used is not None and result.cost_used != held.cost:
            pacer.correct(slot, held.key, result.cost_used - held.cost)

    # ------------------------------------------------------------------ deletes
    def flush_deletes(self, whole_tens: bool = False) -> list[str]:
        """Delete what is done (with `whole_tens`, only full requests of ten, the oldest first: the rest goes
        with the next); returns the job ids of successes whose delete failed (their receipt lapsed: the
        message will be received again, so the caller records them as done for good)."""
        count = len(self.inbox.pending_deletes) // 10 * 10 if whole_tens else len(self.inbox.pending_deletes)
        if not count:
            return []
        receipts, self.inbox.pending_deletes = self.inbox.pending_deletes[:count], self.inbox.pending_deletes[count:]
        self.inbox.deletes_sent += count
        jobs = {r: self.inbox.succeeded_by_receipt.pop(r) for r in receipts if r in self.inbox.succeeded_by_receipt}
        failed = self.queue.delete(receipts)
        if failed:
            logger.warning("deletes failed", extra={"count": len(failed)})
        return [jobs[r] for r in failed if r in jobs]


def pauses_keyed(pacer: Pacer | None) -> bool:
    return pacer is not None and pacer.config.signals_scope == "key"
