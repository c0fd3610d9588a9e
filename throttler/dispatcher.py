"""One throttler run: hold the lease, pull only what is about to go out, reserve, dispatch, settle.

The loop reads the clock once per turn and passes `now` down. Per turn it: settles finished batches
(delete, retry, dead-letter, pause), re-reads quotas and pause every few seconds, tops up the held
messages, and plans the next batch: slots from the Pacer, assigned round-robin to groups that have
nothing in flight, written to the usage item (a conditional write) before the worker is invoked.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import OrderedDict, deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from throttler.core.clock import Clock
from throttler.core.envelope import Job, parse_job
from throttler.core.errors import ConfigError, InvalidJob
from throttler.invoker import Invoker, WorkerFailed, WorkerNotRun
from throttler.core.outcome import JobResult, Outcome
from throttler.core.pacing import Pacer, Usage, usage_by_tier
from throttler.queue import DeadLetter, JobQueue, QueuedMessage
from throttler.core.quotas import QuotaConfig, defaults_item, parse_quota_item
from throttler.settings import Settings
from throttler.store import StateStore
from throttler.tasks import default_registry
from throttler.tasks.registry import ValidationContext

logger = logging.getLogger(__name__)

REFRESH_S = 3.0  # quota and pause changes take effect within this plus one batch horizon
DELETE_FLUSH_S = 1.0
BATCH_LEAD_S = 0.05  # invoke a batch this long before its first slot
MAX_BATCH_BYTES = 5_000_000  # under Lambda's 6 MB synchronous payload limit
BACKOFF_429_S = (5.0, 300.0)  # pause when a 429 carries no usable Retry-After: base, ceiling


@dataclass
class Held:
    msg: QueuedMessage
    job: Job
    visible_until: float


@dataclass
class InFlight:
    future: Future[dict[str, Any]]
    jobs: dict[str, tuple[Held, float]]  # job id -> (held message, slot)
    groups: list[str]


@dataclass
class RunSummary:
    owner: str = ""
    lease_held_elsewhere: bool = False
    received: int = 0
    dispatched: int = 0
    succeeded: int = 0
    duplicates: int = 0
    retried: int = 0
    dead_lettered: int = 0
    invalid: int = 0
    throttled: int = 0
    skipped: int = 0
    batches: int = 0
    reservations: int = 0
    reservation_conflicts: int = 0
    invalid_config: bool = False
    no_config: bool = False
    paused_until: float | None = None
    use: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ThrottlerRun:
    def __init__(
        self,
        *,
        settings: Settings,
        store: StateStore,
        queue: JobQueue,
        invoker: Invoker,
        clock: Clock,
        known_tasks: frozenset[str],
        owner: str | None = None,
    ):
        self.s = settings
        self.store = store
        self.queue = queue
        self.invoker = invoker
        self.clock = clock
        self.known_tasks = known_tasks
        self.tasks = default_registry.view(known_tasks)
        self.validation = ValidationContext.build(
            settings.allowed_hosts, settings.stage, (header for header, _ in settings.secret_headers)
        )
        self.summary = RunSummary(owner=owner or uuid.uuid4().hex)
        self.config: QuotaConfig | None = None
        self.pacer: Pacer | None = None
        self.usage = Usage()
        self.usage_version = 0
        self.pause_until: float | None = None
        self.held: OrderedDict[str, deque[Held]] = OrderedDict()  # group -> messages in queue order
        self.known_messages: set[str] = set()
        self.inflight: list[InFlight] = []
        self.busy_groups: set[str] = set()
        self.pending_deletes: list[str] = []
        self.last_delete_flush = 0.0
        self.refreshed_at = -math.inf
        self.queue_empty_at: float | None = None
        self.next_plan_at = 0.0
        self.latency_s = 0.2  # a first guess at a call's duration, until results come in
        self.consecutive_429 = 0
        self.plan_starved = False
        self.receive_after = -math.inf
        self.worker_failures = 0

    # ----------------------------------------------------------------- the loop
    def run(self, deadline: float) -> RunSummary:
        now = self.clock.now()
        lease_ttl = max(0.0, deadline - now) + self.s.worker_timeout_s + 10
        if not self.store.acquire_lease(self.summary.owner, now, lease_ttl):
            logger.info("lease held elsewhere, backing off")
            self.summary.lease_held_elsewhere = True
            return self.summary
        try:
            self._load_usage()
            self._loop(deadline)
        finally:
            self._finish()
        return self.summary

    def _loop(self, deadline: float) -> None:
        while True:
            now = self.clock.now()
            self._settle(now)
            if now - self.refreshed_at >= REFRESH_S:
                self._refresh(now)
            if self.pause_until is not None and now < self.pause_until:
                self._release_held(self.pause_until - now)
                if not self._pending() and self.pause_until >= deadline:
                    return
                self._wait(min(self.pause_until, deadline, now + REFRESH_S) - now)
                continue
            if now >= deadline or self.pacer is None:
                if not self._pending():
                    return
                self._wait(REFRESH_S)
                continue
            self._top_up(now, deadline)
            if not self.held and not self._pending():
                if self.queue_empty_at is not None:
                    return  # idle: exit early, so an empty minute costs one short invocation
            if now >= self.next_plan_at and self.held:
                # Settling and receiving above took real time: plan from the clock, not from the turn's start.
                self._plan(self.clock.now(), deadline)
            now = self.clock.now()  # an inline (virtual-time) batch has moved the clock
            self._flush_deletes(now)
            next_event = min(self.next_plan_at, now + REFRESH_S, deadline)
            if not self.held and self.next_plan_at <= now:
                next_event = min(now + self.s.batch_horizon_s, deadline)  # waiting on in-flight work
            self._wait(max(0.0, next_event - now))

    def _pending(self) -> bool:
        return bool(self.inflight)

    def _wait(self, timeout: float) -> None:
        pending = [f.future for f in self.inflight if not f.future.done()]
        if pending:
            wait(pending, timeout=max(0.0, timeout), return_when=FIRST_COMPLETED)
        elif not any(f.future.done() for f in self.inflight):
            self.clock.sleep(timeout)

    # ----------------------------------------------------------------- config, pause, usage
    def _refresh(self, now: float) -> None:
        self.refreshed_at = now
        control = self.store.read_control()
        self.pause_until = control.pause_until if control.pause_until and control.pause_until > now else None
        self.summary.paused_until = self.pause_until
        item = control.quotas
        try:
            if item is None:
                item = defaults_item(self.s.default_quotas)
                if item is None:
                    raise ConfigError("no quota item and no stage default quotas")
            config = parse_quota_item(item)
        except ConfigError as exc:
            self.summary.invalid_config = control.quotas is not None
            self.summary.no_config = control.quotas is None
            logger.error("invalid quota configuration", extra={"error": str(exc)})
            if self.config is None and control.last_good is not None:
                try:
                    self._use_config(parse_quota_item(control.last_good))
                except ConfigError:
                    logger.error("last good quota configuration is invalid too")
            return
        if self.config is None or config != self.config:
            if control.quotas is not None and control.last_good != _comparable(control.quotas):
                self.store.put_last_good(control.quotas)
            self._use_config(config)

    def _use_config(self, config: QuotaConfig) -> None:
        if self.config is not None:
            logger.info("quota configuration changed", extra={"quotas": config.describe()})
        self.config = config
        advisory = self.pacer.advisory if self.pacer else None
        self.pacer = Pacer(config, self.usage)
        self.pacer.advisory = advisory

    def _load_usage(self) -> None:
        record = self.store.load_usage()
        self.usage = Usage.from_json(record.ledgers_json, record.last_slot)
        self.usage_version = record.version
        if self.config is not None:
            self._use_config(self.config)

    # ----------------------------------------------------------------- receiving
    def _top_up(self, now: float, deadline: float) -> None:
        assert self.pacer is not None
        rate = self.pacer.rate_per_s
        if rate <= 0:
            return
        horizon = 2 * self.s.batch_horizon_s + 1.0
        target = min(10 * self.s.batch_horizon_s * 100, math.ceil(rate * horizon) + 10)
        held_count = sum(len(q) for q in self.held.values())
        if self.queue_empty_at is not None and now - self.queue_empty_at < REFRESH_S:
            return
        if now < self.receive_after:
            return
        if held_count < target:
            # FIFO hides a group's next messages until the ones we finished are deleted.
            self._flush_deletes(now, force=True)
        while held_count < target and now < deadline - BATCH_LEAD_S:
            ahead_s = (held_count + 10) / rate
            visibility = math.ceil(min(deadline - now, ahead_s) + 2 * self.s.batch_horizon_s + self.s.worker_timeout_s + 5)
            messages = self.queue.receive(10, visibility, wait_s=0)
            if not messages:
                # Nothing visible. If we hold or run work, FIFO may just be hiding those groups' next
                # messages: look again after the next batch settles. Otherwise the queue is idle.
                if held_count == 0 and not self.inflight:
                    self.queue_empty_at = now
                else:
                    self.receive_after = now + self.s.batch_horizon_s
                return
            self.queue_empty_at = None
            self._accept(messages, now + visibility)
            held_count = sum(len(q) for q in self.held.values())

    def _accept(self, messages: list[QueuedMessage], visible_until: float) -> None:
        bad: list[DeadLetter] = []
        exhausted: list[DeadLetter] = []
        for msg in messages:
            if msg.message_id in self.known_messages:
                self._refresh_receipt(msg, visible_until)
                continue
            self.summary.received += 1
            try:
                job = parse_job(
                    msg.body,
                    msg.group,
                    msg.dedup_id,
                    tasks=self.tasks,
                    validation=self.validation,
                    max_bytes=self.s.max_message_bytes,
                )
            except InvalidJob as exc:
                logger.warning(
                    "bad message dead-lettered",
                    extra={"message_id": msg.message_id, "group": msg.group, "reason": str(exc)},
                )
                bad.append(DeadLetter(msg, str(exc), self.store.get_attempts(msg.dedup_id) if msg.receive_count > 1 else 0))
                continue
            if msg.receive_count > 1 and (attempts := self.store.get_attempts(job.job_id)) >= self.s.max_attempts:
                # Its attempts ran out but the run died before dead-lettering it: finish that now, with no
                # further call (which might even succeed, leaving the job both succeeded and dead-lettered).
                exhausted.append(DeadLetter(msg, f"attempts exhausted: {attempts} attempts", attempts))
                continue
            self.known_messages.add(msg.message_id)
            self.held.setdefault(msg.group, deque()).append(Held(msg, job, visible_until))
        if bad or exhausted:
            self.queue.dead_letter(bad + exhausted)
            self.summary.dead_lettered += len(bad) + len(exhausted)
            self.summary.invalid += len(bad)

    def _refresh_receipt(self, msg: QueuedMessage, visible_until: float) -> None:
        """The same message again: its visibility ran out while held; keep the newest receipt."""
        for queue in self.held.values():
            for i, held in enumerate(queue):
                if held.msg.message_id == msg.message_id:
                    queue[i] = Held(msg, held.job, visible_until)
                    return

    # ----------------------------------------------------------------- planning
    def _plan(self, now: float, deadline: float) -> None:
        assert self.pacer is not None and self.config is not None
        start = now + BATCH_LEAD_S
        end = min(start + self.s.batch_horizon_s, deadline)
        budget = math.inf
        if self.config.concurrency is not None:
            budget = self.config.concurrency - sum(len(f.groups) for f in self.inflight)
        tolerance = min(t.margin_s for t in self.config.tiers) / 2
        chains: OrderedDict[str, list[tuple[Held, float]]] = OrderedDict()
        free_at: dict[str, float] = {}
        cursor: dict[str, int] = {}
        size = 0
        t = start
        extend: list[tuple[str, float]] = []
        while budget > 0 or chains:
            slot = self.pacer.next_slot(t)
            if slot is None or slot >= end:
                break
            group = self._pick_group(slot, chains, free_at, cursor, budget)
            if group is None:
                waits = [free_at[g] for g in chains if cursor[g] < len(self.held[g]) and free_at[g] > slot]
                if not waits or min(waits) >= end:
                    break
                t = min(waits)
                continue
            held = self.held[group][cursor[group]]
            size += len(held.msg.body) + 300
            if size > MAX_BATCH_BYTES:
                break
            self.pacer.take(slot)
            chains.setdefault(group, []).append((held, slot))
            cursor[group] += 1
            free_at[group] = slot + self.latency_s * 1.5 + 0.001
            if held.visible_until < slot + self.s.worker_timeout_s + 5:
                extend.append((held.msg.receipt, slot - now + self.s.worker_timeout_s + 10))
                held.visible_until = slot + self.s.worker_timeout_s + 10
            t = slot
        if not chains:
            # Nothing could go now (groups busy, or the next slot is later): look again when a batch
            # settles or when the next slot comes.
            next_slot = self.pacer.next_slot(start)
            later = next_slot - BATCH_LEAD_S if next_slot is not None else now + REFRESH_S
            if end >= deadline and (next_slot is None or next_slot >= end):
                # Nothing fits before this run's deadline: planning again sooner would spin (in virtual
                # time, forever: the clock only moves when the loop waits).
                later = deadline
            self.next_plan_at = min(max(now, later), now + REFRESH_S)
            self.plan_starved = True
            return
        if not self._reserve():
            return
        if extend:
            self.queue.change_visibility(extend)
        self._dispatch(chains, tolerance)
        self.next_plan_at = max(end - BATCH_LEAD_S, now)

    def _pick_group(
        self,
        slot: float,
        chains: dict[str, list[tuple[Held, float]]],
        free_at: dict[str, float],
        cursor: dict[str, int],
        budget: float,
    ) -> str | None:
        for group, queue in self.held.items():
            if group in self.busy_groups:
                continue
            if group not in cursor:
                if len(chains) >= budget:
                    continue
                cursor[group] = 0
                free_at[group] = slot
            if cursor[group] < len(queue) and free_at[group] <= slot:
                self.held.move_to_end(group)  # round-robin: the next slot favours other groups
                return group
        return None

    def _reserve(self) -> bool:
        """Write the planned slots to the usage item; on a lost race, reload and plan again."""
        if self.store.save_usage(self.usage_version, self.usage.to_json(), self.usage.last_slot):
            self.usage_version += 1
            self.summary.reservations += 1
            return True
        self.summary.reservation_conflicts += 1
        logger.warning("usage changed under us, replanning")
        self._load_usage()
        return False

    def _dispatch(self, chains: OrderedDict[str, list[tuple[Held, float]]], tolerance: float) -> None:
        jobs: dict[str, tuple[Held, float]] = {}
        request_jobs = []
        for group, chain in chains.items():
            for held, slot in chain:
                jobs[held.job.job_id] = (held, slot)
                request_jobs.append(
                    {
                        "id": held.job.job_id,
                        "group": group,
                        "body": held.msg.body,
                        "not_before": slot,
                        "not_after": slot + tolerance,
                    }
                )
            queue = self.held[group]
            for _ in chain:
                queue.popleft()
            if not queue:
                del self.held[group]
            self.busy_groups.add(group)
        self.summary.batches += 1
        self.summary.dispatched += len(request_jobs)
        future = self.invoker.submit({"jobs": request_jobs})
        self.inflight.append(InFlight(future, jobs, list(chains)))

    # ----------------------------------------------------------------- settling
    def _settle(self, now: float) -> None:
        for flight in [f for f in self.inflight if f.future.done()]:
            self.inflight.remove(flight)
            self._settle_batch(flight, now)
            if self.plan_starved:  # groups just came free: plan at once instead of at the next tick
                self.next_plan_at, self.plan_starved = now, False
            self.receive_after = -math.inf

    def _settle_batch(self, flight: InFlight, now: float) -> None:
        try:
            response = flight.future.result()
            results = {r["job_id"]: JobResult.from_dict(r) for r in response["results"]}
            self.worker_failures = 0
        except WorkerNotRun as exc:
            logger.warning("worker not run", extra={"error": str(exc)})
            results = {j: JobResult(j, Outcome.SKIPPED, "worker not run") for j in flight.jobs}
            self._back_off_after_worker_failure(now)
        except (WorkerFailed, Exception) as exc:  # noqa: BLE001 - any failure: calls may have been made
            logger.error("worker failed", extra={"error": str(exc)})
            # A job whose slot had come may have been called: that was an attempt. Later ones were not.
            results = {
                j: JobResult(j, Outcome.RETRYABLE if slot <= now else Outcome.SKIPPED, f"worker failed: {exc}")
                for j, (_, slot) in flight.jobs.items()
            }
            self._back_off_after_worker_failure(now)
        by_group: dict[str, list[tuple[Held, JobResult]]] = {}
        for job_id, (held, _slot) in flight.jobs.items():
            result = results.get(job_id) or JobResult(job_id, Outcome.SKIPPED, "no result")
            by_group.setdefault(held.msg.group, []).append((held, result))
        for group, items in by_group.items():
            self.busy_groups.discard(group)
            self._settle_group(group, items, now)

    def _back_off_after_worker_failure(self, now: float) -> None:
        """Give a throttled or failing worker room: 1, 2, 4 ... 30 s before the next batch."""
        self.worker_failures += 1
        self.next_plan_at = max(self.next_plan_at, now + min(30.0, 2.0 ** (self.worker_failures - 1)))
        self.plan_starved = False

    def _settle_group(self, group: str, items: list[tuple[Held, JobResult]], now: float) -> None:
        back: list[Held] = []  # not attempted: return to the head of the group, in order
        release_group = False
        for held, result in items:
            self._observe(result, now)
            outcome = result.outcome
            log = {"job_id": held.job.job_id, "group": group, "outcome": outcome.value}
            if outcome is Outcome.SUCCEEDED:
                self.summary.succeeded += 1
                self.summary.duplicates += int(result.duplicate)
                self.pending_deletes.append(held.msg.receipt)
                self.known_messages.discard(held.msg.message_id)
                self.consecutive_429 = 0 if not result.duplicate else self.consecutive_429
            elif outcome is Outcome.SKIPPED:
                self.summary.skipped += 1
                back.append(held)
            elif outcome is Outcome.THROTTLED:
                self.summary.throttled += 1
                self._pause_for_429(result, now)
                back.append(held)
                logger.warning("api throttled, pausing", extra={**log, "retry_after_s": result.retry_after_s})
            elif outcome is Outcome.RETRYABLE:
                attempts = self.store.add_attempt(held.job.job_id, now + 14 * 86400)
                if attempts >= self.s.max_attempts:
                    self._dead_letter(held, f"attempts exhausted: {result.reason}", attempts)
                else:
                    delay = min(self.s.retry_max_s, self.s.retry_base_s * 2 ** (attempts - 1))
                    self.queue.change_visibility([(held.msg.receipt, delay)])
                    self.known_messages.discard(held.msg.message_id)
                    self.summary.retried += 1
                    release_group = True
                    logger.info("job will be retried", extra={**log, "attempts": attempts, "delay_s": delay})
            else:  # PERMANENT or INVALID: dead-letter now; the group may move on
                attempts = self.store.add_attempt(held.job.job_id, now + 14 * 86400) if outcome is Outcome.PERMANENT \
                    else self.store.get_attempts(held.job.job_id)
                self._dead_letter(held, result.reason or outcome.value, attempts)
        if back:
            queue = self.held.setdefault(group, deque())
            queue.extendleft(reversed(back))
            self.held.move_to_end(group, last=False)
        if release_group:
            # An earlier job is waiting to be retried: FIFO keeps the rest of the group behind it.
            self._release_group(group, 0)

    def _observe(self, result: JobResult, now: float) -> None:
        if result.duration_s is not None and result.outcome is not Outcome.SKIPPED:
            self.latency_s = 0.8 * self.latency_s + 0.2 * result.duration_s
        if result.rate_remaining is not None and result.rate_reset_at is not None and self.pacer is not None:
            self.pacer.advise(now, result.rate_remaining, result.rate_reset_at)

    def _pause_for_429(self, result: JobResult, now: float) -> None:
        self.consecutive_429 += 1
        base, ceiling = BACKOFF_429_S
        delay = result.retry_after_s if result.retry_after_s is not None else min(ceiling, base * 2 ** (self.consecutive_429 - 1))
        until = now + delay
        if self.pause_until is None or until > self.pause_until:
            self.pause_until = until
            self.summary.paused_until = until
            self.store.set_pause(until, "429 from the API")

    def _dead_letter(self, held: Held, reason: str, attempts: int) -> None:
        self.queue.dead_letter([DeadLetter(held.msg, reason, attempts)])
        self.known_messages.discard(held.msg.message_id)
        self.summary.dead_lettered += 1
        logger.warning(
            "job dead-lettered",
            extra={"job_id": held.job.job_id, "group": held.msg.group, "reason": reason, "attempts": attempts},
        )

    def _release_group(self, group: str, visibility_s: float) -> None:
        queue = self.held.pop(group, None)
        if queue:
            self.queue.change_visibility([(h.msg.receipt, visibility_s) for h in queue])
            for held in queue:
                self.known_messages.discard(held.msg.message_id)

    def _release_held(self, visibility_s: float) -> None:
        """Release every held message in as few requests as possible (10 per request, across groups)."""
        released = [held for queue in self.held.values() for held in queue]
        self.held.clear()
        if released:
            self.queue.change_visibility([(h.msg.receipt, visibility_s) for h in released])
            for held in released:
                self.known_messages.discard(held.msg.message_id)

    def _flush_deletes(self, now: float, force: bool = False) -> None:
        if self.pending_deletes and (force or len(self.pending_deletes) >= 10 or now - self.last_delete_flush >= DELETE_FLUSH_S):
            self.queue.delete(self.pending_deletes)
            self.pending_deletes = []
            self.last_delete_flush = now

    def _finish(self) -> None:
        """Settle what is in flight, delete what succeeded, release what is held, give the lease back."""
        end = self.clock.now() + self.s.worker_timeout_s
        while self.inflight and self.clock.now() < end:
            self._settle(self.clock.now())
            pending = [f.future for f in self.inflight if not f.future.done()]
            if pending:
                wait(pending, timeout=max(0.0, end - self.clock.now()), return_when=FIRST_COMPLETED)
        self._settle(self.clock.now())
        self._flush_deletes(self.clock.now(), force=True)
        self._release_held(0)
        self._report_use(self.clock.now())
        self.store.release_lease(self.summary.owner)

    def _report_use(self, now: float) -> None:
        if self.config is not None:
            self.summary.use = usage_by_tier(self.config, self.usage, now)


def _comparable(item: dict[str, Any]) -> dict[str, Any]:
    import json

    from throttler.store import _item_json

    loaded: dict[str, Any] = json.loads(_item_json(item))
    return loaded
