"""The planner (no I/O): which held jobs go in the next batch, and when each is sent.

Slots come from the pacer in time order. At each slot the key with the smallest fair-share start tag
that has a job ready takes it (weighted fair sharing); within a key its groups take turns; within a
group jobs go in queue order, one after another (the next one no sooner than the previous one's
expected duration). A key whose own tiers have no room is set aside until they have (it never holds
others back); a job the stage's tiers make wait holds the slot order, so a costly job is not starved
by cheap ones. Each slot is taken in the pacer as it is assigned: the batch's reservation is exactly
what the plan took.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from throttler.core.fairness import FairShare, KeyQueue
from throttler.core.pacing import Pacer
from throttler.core.protocol import MAX_BATCH_BYTES
from throttler.dispatch.inbox import Held, Inbox

_EPS = 1e-9


@dataclass
class PlanRequest:
    start: float
    end: float
    busy_groups: set[str] = field(default_factory=set)
    group_budget: float = math.inf  # more groups this batch may start (the concurrency tier)
    latency_s: float = 0.2  # expected call duration: a group's next job goes no sooner than this after the previous
    max_bytes: int = MAX_BATCH_BYTES
    key_paused_until: Mapping[str, float] = field(default_factory=dict)  # fair key -> until (key-scoped 429)


@dataclass
class Plan:
    jobs: list[tuple[Held, float]] = field(default_factory=list)  # (held, slot), slots ascending
    key_next: dict[str, float | None] = field(default_factory=dict)  # keys with work their own limits hold past `end`
    stage_next: float | None = None  # the stage's next free slot after this plan (None: none at these limits)
    bytes: int = 0
    full: bool = False  # stopped by the byte budget: plan again at once

    def by_group(self) -> dict[str, list[tuple[Held, float]]]:
        out: dict[str, list[tuple[Held, float]]] = {}
        for held, slot in self.jobs:
            out.setdefault(held.group, []).append((held, slot))
        return out


class Planner:
    def __init__(self, pacer: Pacer, fair: FairShare, weight: Callable[[str], int]):
        self.pacer = pacer
        self.fair = fair
        self.weight = weight

    def plan(self, inbox: Inbox, request: PlanRequest) -> Plan:
        plan = Plan()
        ready = KeyQueue(self.fair)
        deferred: list[tuple[float, str]] = []
        cursor: dict[str, int] = {}
        free_at: dict[str, float] = {}
        budget = request.group_budget
        for key in inbox.keys():
            paused = request.key_paused_until.get(key)
            if paused is not None and paused > request.start:
                plan.key_next[key] = paused
                continue
            ready.push(key)
        t = request.start
        while True:
            stage_slot = self.pacer.stage.earliest(t, 1)
            if math.isinf(stage_slot) or stage_slot >= request.end:
                plan.stage_next = None if math.isinf(stage_slot) else stage_slot
                break
            while deferred and deferred[0][0] <= stage_slot + _EPS:
                ready.push(heapq.heappop(deferred)[1])
            key = ready.pop()
            if key is None:
                if deferred and deferred[0][0] < request.end:
                    t = max(t, deferred[0][0])
                    continue
                plan.stage_next = stage_slot
                break
            group, wait_until = self._pick_group(inbox, key, stage_slot, request, cursor, free_at, budget)
            if group is None:
                if wait_until is not None and wait_until < request.end:
                    heapq.heappush(deferred, (wait_until, key))
                continue
            held = inbox.at(group, cursor.get(group, 0))
            assert held is not None
            if plan.bytes + held.spec_bytes > request.max_bytes:
                plan.full = True
                break
            slot = self.pacer.next_slot(stage_slot, held.key, held.cost)
            if slot is None:
                plan.key_next[key] = None
                continue
            stage_only = self.pacer.stage.earliest(stage_slot, held.cost)
            if slot > stage_only + _EPS:  # the key's own tiers: set it aside, others go
                if slot >= request.end:
                    plan.key_next[key] = slot
                else:
                    heapq.heappush(deferred, (slot, key))
                continue
            if slot >= request.end:
                plan.stage_next = slot
                break
            if group not in cursor:
                budget -= 1
            self.pacer.take(slot, held.key, held.cost)
            self.fair.served(key, held.cost, self.weight(key))
            plan.jobs.append((held, slot))
            plan.bytes += held.spec_bytes
            cursor[group] = cursor.get(group, 0) + 1
            free_at[group] = slot + request.latency_s
            inbox.rotate(key, group)
            ready.push(key)
            t = slot
        return plan

    @staticmethod
    def _pick_group(
        inbox: Inbox,
        key: str,
        at: float,
        request: PlanRequest,
        cursor: dict[str, int],
        free_at: dict[str, float],
        budget: float,
    ) -> tuple[str | None, float | None]:
        """The key's next group that can send at `at`; else (None, when one of its groups comes free)."""
        soonest: float | None = None
        for group in inbox.groups_of(key):
            if group in request.busy_groups:
                continue
            held = inbox.at(group, cursor.get(group, 0))
            if held is None or held.fair_key != key:
                continue
            if group not in cursor and budget <= 0:
                continue
            ready_at = free_at.get(group, -math.inf)
            if ready_at <= at + _EPS:
                return group, None
            soonest = ready_at if soonest is None else min(soonest, ready_at)
        return None, soonest
