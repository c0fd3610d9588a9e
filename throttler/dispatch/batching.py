"""Making a batch: plan the next slots, reserve them (one conditional write), hand them to a worker."""

from __future__ import annotations

import logging
import math

from throttler.core.clock import Clock
from throttler.core.pacing import Pacer
from throttler.dispatch.config import InForce
from throttler.dispatch.control import Pauses
from throttler.dispatch.inbox import Held, Inbox
from throttler.dispatch.outbox import Outbox
from throttler.dispatch.planner import Plan, PlanRequest
from throttler.dispatch.receiving import Receiver
from throttler.dispatch.summary import RunSettings, RunSummary
from throttler.dispatch.timing import CONTROL_REFRESH_S, Timing
from throttler.dispatch.usage import UsageBook
from throttler.queue import JobQueue
from throttler.store.base import OpenBatch

logger = logging.getLogger(__name__)

# A batch longer than this watches the shared throttle record, where an operator's pause is published too:
# a pause stops calls within a control read plus a worker's look, whatever the batch's length.
WATCHED_HORIZON_S = 2.0
PLAN_AHEAD_S = 0.1  # a batch is planned at most this long before it must be handed to a worker


class Batcher:
    def __init__(
        self,
        *,
        settings: RunSettings,
        queue: JobQueue,
        inbox: Inbox,
        usage: UsageBook,
        in_force: InForce,
        receiver: Receiver,
        outbox: Outbox,
        pauses: Pauses,
        timing: Timing,
        summary: RunSummary,
        clock: Clock,
        owner: str,
    ):
        self.s, self.queue, self.inbox, self.usage, self.in_force = settings, queue, inbox, usage, in_force
        self.receiver, self.outbox, self.pauses, self.t, self.summary = receiver, outbox, pauses, timing, summary
        self.clock, self.owner = clock, owner

    def plan_and_send(self, now: float) -> None:
        pacer, planner, config = self.in_force.pacer, self.in_force.planner, self.in_force.config
        assert pacer is not None and planner is not None and config is not None
        start = max(now + self.t.lead_s, self.t.planned_until, self.usage.foreign_last() + 1e-6)
        if start > now + self.t.lead_s + PLAN_AHEAD_S:
            # The batch in flight covers the next seconds: plan the next one when its start is near, with
            # whatever configuration, pauses and work are in force by then.
            self.t.next_plan_at = start - self.t.lead_s - PLAN_AHEAD_S
            return
        end = min(start + self.receiver.horizon(), self.t.deadline)
        if end <= start:
            self.t.next_plan_at = self.t.deadline
            return
        budget = math.inf if config.concurrency is None else config.concurrency - len(self.outbox.busy_groups)
        busy = self.outbox.busy_groups
        request = PlanRequest(
            start,
            end,
            busy,
            budget,
            self.outbox.latency_s * 1.5,
            key_paused_until=self.pauses.key_paused(now),
            others_pending=bool(busy),
            pending_keys=self.outbox.keys_in_flight(),
        )
        plan = planner.plan(self.inbox, request)
        self.receiver.hide_waiting(plan.key_next, now, frozenset(plan.by_group()))
        quiet = not plan.jobs and not self.outbox.in_flight and plan.stage_next is not None and plan.stage_next > start
        self.t.quiet_until = plan.stage_next - self.t.lead_s if quiet and plan.stage_next is not None else -math.inf
        if not plan.jobs:
            # Nothing could go: the stage's next slot is later, or every held group waits for a batch in flight
            # (its settling wakes the run), or a key's own next slot (held for at most HOLD_MAX_S).
            candidates = [t for t in plan.key_next.values() if t is not None]
            if plan.stage_next is not None and plan.stage_next > start:
                candidates.append(plan.stage_next)
            nxt = min(candidates, default=now + CONTROL_REFRESH_S)
            self.t.next_plan_at = min(max(now + 0.01, nxt - self.t.lead_s), now + CONTROL_REFRESH_S)
            return
        if not self._keep_only_still_held(plan, pacer, now):
            self.t.next_plan_at = now
            return
        batch_id = self.outbox.new_batch_id()
        until = plan.jobs[-1][1] + self.s.worker_timeout_s + 5
        opened = {batch_id: OpenBatch(self.owner, until, max(slot for _, slot in plan.jobs))}
        if not self.usage.commit(now, opened, self.receiver.keys_summary(now)):
            self.summary.reservation_conflicts += 1
            self.in_force.rebuild()  # everything was reloaded: plan again from the stored state
            self.t.next_plan_at = now
            return
        self.summary.reservations += 1
        watch = self.usage.watch_list(now, self.outbox.unsettled())
        self.outbox.send(
            batch_id,
            plan,
            now,
            watch,
            self.tolerance,
            self.pool_size(),
            config.cost_header,
            config.signals_scope == "key",
            end - start > WATCHED_HORIZON_S + 1e-9,
            bool(pacer.stage.meter.api.active_policies(now)) and config.signals_scope != "key",
            self.t.refreshed_at,
        )
        reached_end = plan.full or (plan.stage_next is not None and plan.stage_next >= end)
        # The next batch starts after this one's last slot; if this one ran out of jobs ready to go, plan
        # again as soon as more are (a batch settles, a receive brings more), not at the horizon's end.
        self.t.planned_until = plan.jobs[-1][1] + 1e-6
        self.t.next_plan_at = (now if plan.full else max(now, end - self.t.lead_s)) if reached_end else now + 0.2

    def _keep_only_still_held(self, plan: Plan, pacer: Pacer, now: float) -> bool:
        """Extend the planned messages' visibility to cover their calls; a message whose change failed is no
        longer ours (its visibility lapsed while it waited: it may be received, and called, elsewhere), so its
        group leaves the plan and the inbox, and its slots are released. False when nothing is left to send."""
        failed = set(self.extend_visibility(plan.jobs, now))
        if not failed:
            return True
        lost = {held.group for held, _ in plan.jobs if held.msg.receipt in failed}
        for held, slot in plan.jobs:
            if held.group in lost:
                pacer.release(slot, held.key, held.cost)
        plan.jobs = [(held, slot) for held, slot in plan.jobs if held.group not in lost]
        for group in lost:
            self.inbox.remove_group(group)
        logger.warning("held messages lapsed before their calls: not sent", extra={"groups": len(lost)})
        return bool(plan.jobs)

    def extend_visibility(self, jobs: list[tuple[Held, float]], now: float) -> list[str]:
        """A held message must stay hidden until its call is settled, whatever its slot; returns the receipts
        whose change failed."""
        changes = []
        for held, slot in jobs:
            needed = slot + self.s.worker_timeout_s + 5
            if held.visible_until < needed:
                changes.append((held.msg.receipt, float(math.ceil(needed + 5 - now))))
                held.visible_until = needed + 5
        return self.queue.change_visibility(changes) if changes else []

    def tolerance(self, held: Held) -> float:
        """How late the worker may still send a job: half the smallest margin of the windows that apply."""
        pacer = self.in_force.pacer
        assert pacer is not None
        scopes = [pacer.stage, pacer.key_scope(held.key)]
        margins = [lim.margin_s for scope in scopes if scope is not None for lim in scope.limits(self.clock.now())]
        return min(margins) / 2 if margins else 0.001

    def pool_size(self) -> int:
        """Calls at once the worker should allow: what the rate times a call's latency needs, with room."""
        rate = self.in_force.rate(self.clock.now(), unbounded=1000.0)
        return max(4, min(self.s.worker_max_parallel, math.ceil(rate * self.outbox.latency_s * 2) + 4))
