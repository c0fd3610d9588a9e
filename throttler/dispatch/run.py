"""One throttler run, as a state machine: `step(now)` does what is due and says when to call it again.

A run takes the lease (or asks the run holding it to hand over), then loops: settle finished batches,
re-read the configuration, pauses and lease every CONTROL_REFRESH_S, receive only when a slot is within
reach, plan the next batch, reserve it (one conditional write) and hand it to a worker. It ends when a
successor asks for the lease, when its deadline comes, when it is idle (latency=cost) or when nothing
can be sent before its deadline; then it releases what it holds and settles what is still in flight.
`drive` runs it against the real clock; the simulation drives `step` in virtual time.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from throttler.core.clock import Clock
from throttler.core.envelope import Job
from throttler.core.fairness import NO_KEY, FairShare
from throttler.core.pacing import Pacer
from throttler.dispatch.control import LAST_GOOD, STATE_TABLE, Pauses, QuotaInForce, resolve_quotas
from throttler.dispatch.handover import POLL_S, Lease, LeaseOutcome
from throttler.dispatch.inbox import Held, Inbox
from throttler.dispatch.intake import BATCH_LEAD_S, HOLD_MAX_S, Intake
from throttler.dispatch.outbox import Outbox, RetryPolicy
from throttler.dispatch.planner import Planner, PlanRequest
from throttler.dispatch.summary import RunSettings, RunSummary
from throttler.dispatch.usage import UsageBook
from throttler.queue import JobQueue, QueuedMessage
from throttler.store.base import OPERATOR_SIGNAL, OpenBatch, StateStore, ThrottleSignal
from throttler.worker.invoker import Invoker

logger = logging.getLogger(__name__)
DONE_TTL_S = 14 * 86400.0  # success records outlive any message (SQS keeps a message at most 14 days)
CONTROL_REFRESH_S = 2.0  # configuration, pause and hand-over requests take effect within this (+ a batch)
RECEIVE_AHEAD_S = 2.0  # receive only when the stage's next slot is at most this far away
LONG_POLL_S = 2.0
DELETE_FLUSH_S = 1.0
MAX_HELD = 3000
RECEIVES_PER_STEP = 30
BATCH_TARGET_JOBS = 20  # a batch spans up to 2 s at low rates, so that its fixed cost is shared
# A batch longer than this watches the shared throttle record, where an operator's pause is published too:
# a pause stops calls within CONTROL_REFRESH_S plus a worker's look, whatever the batch's length.
WATCHED_HORIZON_S = 2.0
MAX_HORIZON_S = 5.0


class Phase(StrEnum):
    START = "start"
    WAIT_LEASE = "wait_lease"
    RUNNING = "running"
    ENDING = "ending"
    SETTLING = "settling"
    DONE = "done"


@dataclass(frozen=True)
class Wake:
    at: float
    long_poll: bool = False  # idle: the driver may wait on the queue itself (SQS long polling)


class ThrottlerRun:
    def __init__(self, *, settings: RunSettings, store: StateStore, queue: JobQueue, invoker: Invoker, clock: Clock,
                 parse: Callable[[QueuedMessage], Job], owner: str | None = None):
        self.s = settings
        self.store = store
        self.queue = queue
        self.clock = clock
        self.owner = owner or uuid.uuid4().hex
        self.summary = RunSummary(owner=self.owner)
        self.phase = Phase.START
        self.deadline = math.inf
        self.inbox = Inbox()
        self.wakeup = threading.Event()
        self.intake = Intake(queue=queue, store=store, parse=parse, inbox=self.inbox)
        self.outbox = Outbox(queue, store, invoker, self.inbox, RetryPolicy(settings.max_attempts, settings.retry_base_s,
                             settings.retry_max_s), self.owner, on_done=self.wakeup.set)
        self.usage = UsageBook(store, self.owner)
        self.lease = Lease(store, self.owner)
        self.pauses = Pauses()
        self.fair = FairShare()
        self.quota: QuotaInForce | None = None
        self.pacer: Pacer | None = None
        self.planner: Planner | None = None
        self.successor: str | None = None
        self.lease_lost = False
        self.refreshed_at = -math.inf
        self.next_plan_at = -math.inf
        self.planned_until = -math.inf
        self.receive_after = -math.inf
        self.queue_empty = False
        self.last_flush = -math.inf
        self.released_for_pause = False
        self.end_reason = ""
        self.hidden: dict[str, list[tuple[float, int]]] = {}  # fair key -> [(hidden until, messages)]
        self.keys_written_at = -math.inf

    # ------------------------------------------------------------------ the state machine
    def start(self, deadline: float) -> None:
        self.deadline = deadline
        self.summary.started_at = self.clock.now()

    def step(self, now: float) -> Wake | None:
        if self.phase is Phase.START or self.phase is Phase.WAIT_LEASE:
            return self._take_lease(now)
        self._settle(now)
        if self.phase is Phase.RUNNING:
            if now - self.refreshed_at >= CONTROL_REFRESH_S:
                self._refresh(now)
            if self.phase is Phase.RUNNING:
                wake = self._run(now)
                if self.phase is Phase.RUNNING:
                    return wake
        if self.phase is Phase.ENDING:
            self._end(now)
        if self.outbox.in_flight:
            return Wake(now + 1.0)
        self._close(now)
        return None

    def long_poll(self, wait_s: float) -> None:
        """Idle: wait on the queue itself for up to `wait_s` (SQS long polling), then file what came."""
        if self.phase is not Phase.RUNNING or self.quota is None or self.quota.config is None:
            return
        now = self.clock.now()
        visibility = self._visibility(now)
        messages = self.queue.receive(10, visibility, wait_s=max(0, min(20, int(wait_s))))
        if messages:
            self._file(messages, self.clock.now(), visibility)

    # ------------------------------------------------------------------ lease
    def _take_lease(self, now: float) -> Wake | None:
        outcome = self.lease.try_acquire(now)
        if outcome is LeaseOutcome.HELD:
            self.phase = Phase.RUNNING
            self.summary.waited_for_lease_s = round(now - self.summary.started_at, 3) if self.summary.started_at else 0.0
            self.usage.load()
            self._refresh(now)
            return Wake(now)
        if outcome is LeaseOutcome.REFUSED or now >= self.deadline:
            logger.info("lease held elsewhere, giving up", extra={"holder": self.lease.holder.owner if self.lease.holder else None})
            self.summary.lease_held_elsewhere = True
            self.phase = Phase.DONE
            return None
        self.phase = Phase.WAIT_LEASE
        return Wake(now + POLL_S)

    # ------------------------------------------------------------------ control
    def _refresh(self, now: float) -> None:
        self.refreshed_at = now
        control = self.store.read_control()
        mine, successor = self.lease.check(control.lease, now)
        if not mine:
            logger.warning("lease lost", extra={"holder": control.lease.owner if control.lease else None})
            self.lease_lost = True
            self._begin_end("lease lost")
            return
        if self.lease.renew_due(now) and not self.lease.renew(now):
            self.lease_lost = True
            self._begin_end("lease lost")
            return
        self._publish_settings(control.stage_settings, now)
        self._use_quotas(resolve_quotas(control, self.s.default_quotas), now)
        newly_paused = control.pause_until is not None and control.pause_until > now and self.pauses.operator_until is None
        self.pauses.from_control(control, now, self._auto_window(None))
        if newly_paused and self.outbox.in_flight:
            # Workers of long batches look at the shared throttle record: tell them too.
            self.store.publish_throttle(ThrottleSignal(now, (control.pause_until or now) - now, OPERATOR_SIGNAL))
        if self.pacer is not None:
            self.pacer.expire(now)
        self._recover_foreign(now)
        if successor is not None:
            self.successor = successor
            self._begin_end("successor")

    def _publish_settings(self, stored: dict[str, Any] | None, now: float) -> None:
        wanted = self.s.published()
        if stored is None or {k: v for k, v in stored.items() if k != "written_at"} != wanted:
            self.store.put_stage_settings({**wanted, "written_at": now})

    def _use_quotas(self, quota: QuotaInForce, now: float) -> None:
        self.summary.invalid_config = self.summary.invalid_config or quota.invalid
        self.summary.no_config = quota.config is None
        if quota.error:
            logger.error("invalid quota configuration", extra={"error": quota.error, "source": quota.source})
        previous = self.quota.config if self.quota else None
        self.quota = quota
        if quota.config is None:
            self.pacer = self.planner = None
            return
        if quota.source == STATE_TABLE and quota.item is not None:
            last_good = quota.item
            if previous != quota.config or not self.summary.last_good_written:
                self.store.put_last_good(last_good)
                self.summary.last_good_written = True
        if previous != quota.config or self.pacer is None:
            if previous is not None:
                logger.info("quota configuration changed", extra={"quotas": quota.config.describe()})
            self._build_pacer()
        elif quota.source == LAST_GOOD and previous is None:
            self._build_pacer()

    def _build_pacer(self) -> None:
        assert self.quota is not None and self.quota.config is not None
        config = self.quota.config
        self.pacer = Pacer(config, self.usage.stage, self.usage.key_meter)
        self.planner = Planner(self.pacer, self.fair, lambda key: config.key_quota(None if key == NO_KEY else key).weight)
        for key in self.usage.keys:
            tiers = config.key_quota(key).tiers
            self.usage.key_window_s[key] = max((t.window_s for t in tiers), default=0.0)

    def _auto_window(self, key: str | None) -> float | None:
        config = self.quota.config if self.quota else None
        if config is None:
            return None
        windows = [t.window_s for t in (*config.tiers, *config.key_quota(key).tiers) if t.is_auto]
        return float(max(windows)) if windows else None

    def _recover_foreign(self, now: float) -> None:
        """Batches still listed open long after their workers must have finished: their run died before
        settling them. Their successes get durable records (never called again), then they are forgotten."""
        stale = self.usage.stale_foreign(now)
        if not stale:
            return
        records = self.store.read_batches(stale)
        succeeded = sorted({j for r in records.values() for j in r.succeeded})
        if succeeded:
            self.store.mark_done(succeeded, now + DONE_TTL_S)
            self.usage.done_until = now + DONE_TTL_S
            self.usage.known_done |= set(succeeded)
        self.usage.forget_foreign(stale)
        self.summary.recovered_batches += len(stale)

    def _known_done(self, again: list[Held], now: float) -> set[str]:
        """Which of these messages received before belong to jobs that already succeeded: in a batch of
        another run still listed open (read its record now), or in the durable success records."""
        ids = [h.job_id for h in again]
        pending = self.usage.unread_foreign()
        if pending:
            for batch_id, record in self.store.read_batches(pending).items():
                self.usage.known_done |= record.succeeded
                if record.final:
                    self.usage.foreign_read.add(batch_id)
        done = {j for j in ids if j in self.usage.known_done}
        if self.usage.done_until is not None and self.usage.done_until > now:
            done |= self.store.done_ids([j for j in ids if j not in done])
        return done

    # ------------------------------------------------------------------ dispatching
    def _run(self, now: float) -> Wake:
        next_refresh = self.refreshed_at + CONTROL_REFRESH_S
        if self.pacer is None or self.quota is None or self.quota.config is None:
            if now >= self.deadline:
                self._begin_end("deadline")
            return Wake(min(next_refresh, self.deadline))
        if now >= self.deadline:
            self._begin_end("deadline")
            return Wake(now)
        paused_until = self.pauses.until(now)
        if paused_until is not None:
            self.summary.paused_until = paused_until
            if not self.released_for_pause:
                self.intake.release_all()
                self.released_for_pause = True
            if paused_until >= self.deadline and not self.outbox.in_flight:
                self._begin_end("paused")
            return Wake(min(paused_until, next_refresh, self.deadline))
        self.released_for_pause = False
        stage_next = self.pacer.stage.earliest(now + BATCH_LEAD_S, 1)
        if math.isinf(stage_next) or stage_next >= self.deadline:
            if not self.outbox.in_flight:
                self._begin_end("blocked until after the deadline")
                return Wake(now)
            return Wake(min(next_refresh, self.deadline))
        if stage_next <= now + RECEIVE_AHEAD_S and now >= self.receive_after and len(self.inbox) < self._held_target():
            self._top_up(now)
        if not self.inbox and not self.outbox.in_flight and self.queue_empty:
            if self._latency() == "cost":
                self._begin_end("idle")
                return Wake(now)
            return Wake(min(next_refresh, self.deadline), long_poll=True)
        if self.inbox and now >= self.next_plan_at:
            self._plan(self.clock.now())
        now = self.clock.now()
        if self.inbox.pending_deletes and (now - self.last_flush >= DELETE_FLUSH_S or len(self.inbox.pending_deletes) >= 10):
            self._flush(now)
        # The next thing due: a refresh, the deadline, the next plan, the next receive, a delete flush. (A
        # batch that finishes wakes the run on its own.) Never "now" again: every step must move time on.
        soon = now + 0.001
        wake = min(next_refresh, self.deadline)
        if self.inbox:
            wake = min(wake, max(self.next_plan_at, soon))
        if len(self.inbox) < self._held_target():
            wake = min(wake, max(stage_next - RECEIVE_AHEAD_S, self.receive_after, soon))
        if self.inbox.pending_deletes:
            wake = min(wake, max(self.last_flush + DELETE_FLUSH_S, soon))
        return Wake(max(wake, soon))

    def _latency(self) -> str:
        config = self.quota.config if self.quota else None
        return (config.latency if config is not None and config.latency else None) or self.s.default_latency

    def _horizon(self) -> float:
        """How much time one batch covers: about BATCH_TARGET_JOBS calls (1 to 2 s); longer when the held
        groups are fewer than its calls. A group's next job waits for its batch to settle, so each batch
        boundary leaves a group idle for a call's latency: fewer boundaries lose less."""
        assert self.pacer is not None
        rate = self.pacer.stage.rate_per_s(self.clock.now())
        if rate <= 0 or math.isinf(rate):
            return 1.0
        base = max(1.0, min(2.0, BATCH_TARGET_JOBS / rate))
        groups = len(self.inbox.groups)
        if 0 < groups < rate * base:
            return min(MAX_HORIZON_S, base * rate * base / groups)
        return base

    def _held_target(self) -> int:
        assert self.pacer is not None
        rate = self.pacer.stage.rate_per_s(self.clock.now())
        rate = 100.0 if math.isinf(rate) else rate
        return min(MAX_HELD, math.ceil(rate * (2 * self._horizon() + 1)) + 10)

    def _visibility(self, now: float) -> int:
        assert self.pacer is not None
        rate = max(0.1, min(1000.0, self.pacer.stage.rate_per_s(now)))
        ahead = (len(self.inbox) + 10) / rate
        return math.ceil(min(max(0.0, self.deadline - now), ahead) + 2 * self._horizon() + self.s.worker_timeout_s + 5)

    def _top_up(self, now: float) -> None:
        target = self._held_target()
        for _ in range(RECEIVES_PER_STEP):
            if len(self.inbox) >= target:
                return
            if self.inbox.pending_deletes:
                self._flush(now)  # FIFO shows a group's next message only once the finished ones are gone
            visibility = self._visibility(now)
            messages = self.queue.receive(10, visibility, wait_s=0)
            if not messages:
                self.queue_empty = not self.inbox and not self.outbox.in_flight
                self.receive_after = now + (CONTROL_REFRESH_S if self.queue_empty else 0.5)
                return
            self.queue_empty = False
            self._file(messages, now, visibility)

    def _file(self, messages: list[QueuedMessage], now: float, visibility: int) -> None:
        assert self.quota is not None and self.quota.config is not None
        fresh = self.intake.accept(messages, now, now + visibility, self.quota.config, lambda again: self._known_done(again, now))
        if self.pacer is not None:
            keys = [h.key for h in fresh if h.key is not None and self.pacer.needs_key_meter(h.key)]
            if keys:
                self.usage.load_keys(keys)
                for key in keys:
                    tiers = self.quota.config.key_quota(key).tiers
                    self.usage.key_window_s[key] = max((t.window_s for t in tiers), default=0.0)
        self._balance(now)

    def _balance(self, now: float) -> None:
        """A key holding more than its share of what the run holds hides the rest (its groups wait in SQS),
        so receives reach other keys' messages: a small backlog is not stuck behind a large one."""
        keys = self.inbox.keys()
        if len(keys) < 2 or self.pacer is None or self.quota is None or self.quota.config is None:
            return
        config = self.quota.config
        weights = {k: config.key_quota(None if k == NO_KEY else k).weight for k in keys}
        total_w = sum(weights.values())
        target = self._held_target()
        rate = max(0.1, self.pacer.stage.rate_per_s(now))
        for key in keys:
            share = max(1, math.floor(target * weights[key] / total_w))
            surplus = self.intake.surplus_groups(key, share)
            if surplus:
                turn = now + share / (rate * weights[key] / total_w)
                self._note_hidden(key, surplus, turn, now)
                self.intake.hide_groups(surplus, turn, now)

    def _plan(self, now: float) -> None:
        assert self.pacer is not None and self.planner is not None and self.quota is not None and self.quota.config is not None
        config = self.quota.config
        start = max(now + BATCH_LEAD_S, self.planned_until)
        end = min(start + self._horizon(), self.deadline)
        if end <= start:
            self.next_plan_at = self.deadline
            return
        budget = math.inf if config.concurrency is None else config.concurrency - len(self.outbox.busy_groups)
        request = PlanRequest(start, end, self.outbox.busy_groups, budget, self.outbox.latency_s * 1.5,
                              key_paused_until=self.pauses.key_paused(now))
        plan = self.planner.plan(self.inbox, request)
        self._hide_waiting(plan.key_next, now)
        if not plan.jobs:
            # Nothing could go: the stage's next slot is later, or every held group waits for a batch in flight
            # (its settling wakes the run), or a key's own next slot (held for at most HOLD_MAX_S).
            candidates = [t for t in plan.key_next.values() if t is not None]
            if plan.stage_next is not None and plan.stage_next > start:
                candidates.append(plan.stage_next)
            nxt = min(candidates, default=now + CONTROL_REFRESH_S)
            self.next_plan_at = min(max(now + 0.01, nxt - BATCH_LEAD_S), now + CONTROL_REFRESH_S)
            return
        batch_id = self.outbox.new_batch_id()
        until = plan.jobs[-1][1] + self.s.worker_timeout_s + 5
        if not self.usage.commit(now, {batch_id: OpenBatch(self.owner, until)}, self._keys_summary(now)):
            self.summary.reservation_conflicts += 1
            self._build_pacer()  # everything was reloaded: plan again from the stored state
            self.next_plan_at = now
            return
        self.summary.reservations += 1
        self._extend_visibility(plan.jobs, now)
        watch = self.usage.watch_list(now, self.outbox.unsettled())
        self.outbox.send(batch_id, plan, now, watch, self._tolerance, self._pool_size(plan), config.cost_header,
                         config.signals_scope == "key", end - start > WATCHED_HORIZON_S + 1e-9,
                         bool(self.pacer.stage.meter.api.active_policies(now)) and config.signals_scope != "key")
        reached_end = plan.full or (plan.stage_next is not None and plan.stage_next >= end)
        # The next batch starts after this one's last slot; if this one ran out of jobs ready to go, plan
        # again as soon as more are (a batch settles, a receive brings more), not at the horizon's end.
        self.planned_until = plan.jobs[-1][1] + 1e-6
        self.next_plan_at = (now if plan.full else max(now, end - BATCH_LEAD_S)) if reached_end else now + 0.2

    def _hide_waiting(self, key_next: dict[str, float | None], now: float) -> None:
        for key, when in key_next.items():
            if when is not None and when - now <= HOLD_MAX_S:
                continue
            groups = self.intake.groups_headed_by(key)
            if groups:
                self._note_hidden(key, groups, when, now)
                self.intake.hide_groups(groups, when, now)
                self.summary.hidden += len(groups)

    def _note_hidden(self, key: str, groups: list[str], until: float | None, now: float) -> None:
        count = sum(len(self.inbox.groups.get(g, ())) for g in groups)
        entries = [e for e in self.hidden.get(key, []) if e[0] > now]
        entries.append((until if until is not None else now + 300.0, count))
        self.hidden[key] = entries

    def _keys_summary(self, now: float) -> dict[str, Any] | None:
        """The busiest keys' backlog as this run sees it (held here, hidden in SQS), at most every 5 s."""
        if now - self.keys_written_at < 5.0:
            return None
        self.keys_written_at = now
        backlog: dict[str, dict[str, Any]] = {}
        for key in set(self.inbox.keys()) | set(self.hidden):
            held = self.inbox.held_of_key(key)
            hidden = sum(c for until, c in self.hidden.get(key, []) if until > now)
            if held or hidden:
                backlog[key] = {"held": held, "hidden": hidden, "seen_at": round(now, 3)}
        busiest = sorted(backlog.items(), key=lambda kv: -(kv[1]["held"] + kv[1]["hidden"]))[:50]
        return dict(busiest)

    def _extend_visibility(self, jobs: list[tuple[Held, float]], now: float) -> None:
        changes = []
        for held, slot in jobs:
            needed = slot + self.s.worker_timeout_s + 5
            if held.visible_until < needed:
                changes.append((held.msg.receipt, float(math.ceil(needed + 5 - now))))
                held.visible_until = needed + 5
        if changes:
            self.queue.change_visibility(changes)

    def _tolerance(self, held: Held) -> float:
        """How late the worker may still send a job: half the smallest margin of the windows that apply."""
        assert self.pacer is not None
        scopes = [self.pacer.stage, self.pacer.key_scope(held.key)]
        margins = [lim.margin_s for scope in scopes if scope is not None for lim in scope.limits(self.clock.now())]
        return min(margins) / 2 if margins else 0.001

    def _pool_size(self, plan: object) -> int:
        assert self.pacer is not None
        rate = self.pacer.stage.rate_per_s(self.clock.now())
        rate = 1000.0 if math.isinf(rate) else rate
        return max(4, min(self.s.worker_max_parallel, math.ceil(rate * self.outbox.latency_s * 2) + 4))

    # ------------------------------------------------------------------ settling and ending
    def _settle(self, now: float) -> None:
        if not self.outbox.in_flight:
            return
        done = self.outbox.settle_finished(now, self.pacer, self.pauses, self._auto_window)
        if not done:
            return
        for batch_id in done:
            if self.phase is Phase.RUNNING:
                self.usage.settled(batch_id)
            else:
                self.store.close_open_batches([batch_id])
        if self.outbox.worker_trouble:
            delay = min(30.0, 2.0 ** (self.outbox.worker_trouble - 1))
            self.next_plan_at = max(self.next_plan_at, now + delay)
        else:
            self.next_plan_at = min(self.next_plan_at, now) if self.inbox else self.next_plan_at
        self.receive_after = -math.inf

    def _flush(self, now: float) -> None:
        self.outbox.flush_deletes()
        self.last_flush = now

    def _begin_end(self, reason: str) -> None:
        if self.phase is Phase.RUNNING:
            self.phase = Phase.ENDING
            self.end_reason = reason

    def _end(self, now: float) -> None:
        """Stop planning: release what is held, write the last reservations, hand over or release the lease."""
        self.summary.released += self.intake.release_all()
        self._flush(now)
        if not self.lease_lost:
            if self.usage.to_close or self.usage.stage.dirty or any(m.dirty for m in self.usage.keys.values()):
                self.usage.commit(now)
            if self.successor is not None and self.lease.hand_over(self.successor, now):
                self.summary.handed_over_to = self.successor
            else:
                self.lease.release()
        self.summary.end_reason = self.end_reason
        self.phase = Phase.SETTLING

    def _close(self, now: float) -> None:
        if self.phase is Phase.DONE:
            return
        self._flush(now)
        if self.phase is Phase.RUNNING:  # pragma: no cover - step always ends a run through ENDING
            self._end(now)
        self.phase = Phase.DONE
        self.summary.finish(self, now)


def drive(run: ThrottlerRun, deadline: float) -> RunSummary:
    """Run to the end against the real clock: sleep until the next wake-up or until a batch finishes."""
    clock = run.clock
    run.start(deadline)
    wake = run.step(clock.now())
    while wake is not None:
        if wake.long_poll:
            run.long_poll(max(0.0, min(LONG_POLL_S, wake.at - clock.now())))
        else:
            delay = wake.at - clock.now()
            if delay > 0:
                run.wakeup.wait(delay)
        run.wakeup.clear()
        wake = run.step(clock.now())
    return run.summary
