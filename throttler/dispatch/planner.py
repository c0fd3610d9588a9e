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
    # Groups in a batch still in flight may bring work soon: do not skip stage capacity that none of the
    # keys here can use (slots only move forward: skipping would keep it from them).
    others_pending: bool = False
    # The keys of the jobs in flight (their groups' next jobs are most likely theirs): when each of them is set
    # aside by its own tiers now, what they bring could not use the capacity skipped either, so it is skipped.
    # Empty: any key may come (the rule above holds whoever is in flight).
    pending_keys: frozenset[str] = frozenset()


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


_STOP = object()


@dataclass
class _Walk:
    """One planning pass: the keys ready and set aside, each group's position and when it is free."""

    inbox: Inbox
    request: PlanRequest
    ready: KeyQueue
    plan: Plan = field(default_factory=Plan)
    deferred: list[tuple[float, str]] = field(default_factory=list)
    capped: set[str] = field(default_factory=set)  # keys set aside by their own tiers (not by their groups' turns)
    cursor: dict[str, int] = field(default_factory=dict)
    free_at: dict[str, float] = field(default_factory=dict)
    budget: float = math.inf

    def __post_init__(self) -> None:
        self.budget = self.request.group_budget


class Planner:
    def __init__(self, pacer: Pacer, fair: FairShare, weight: Callable[[str], int]):
        self.pacer = pacer
        self.fair = fair
        self.weight = weight

    def plan(self, inbox: Inbox, request: PlanRequest) -> Plan:
        walk = _Walk(inbox, request, KeyQueue(self.fair))
        keys = inbox.keys()
        self.fair.backlogged(keys)
        for fair_key in keys:
            paused = request.key_paused_until.get(fair_key)
            if paused is not None and paused > request.start:
                walk.plan.key_next[fair_key] = paused
            else:
                walk.ready.push(fair_key)
        t = request.start
        while True:
            stage_slot = self.pacer.stage.earliest(t, 1)
            if math.isinf(stage_slot) or stage_slot >= request.end:
                walk.plan.stage_next = None if math.isinf(stage_slot) else stage_slot
                break
            while walk.deferred and walk.deferred[0][0] <= stage_slot + _EPS:
                walk.ready.push(heapq.heappop(walk.deferred)[1])
            key = walk.ready.pop()
            if key is None:
                if walk.deferred and walk.deferred[0][0] < request.end and not self._others_pending(walk):
                    t = max(t, walk.deferred[0][0])
                    continue
                walk.plan.stage_next = stage_slot
                break
            placed = self._place(walk, key, stage_slot)
            if placed is _STOP:
                break
            if isinstance(placed, float):
                t = placed
        return walk.plan

    @staticmethod
    def _others_pending(walk: _Walk) -> bool:
        request = walk.request
        if not request.others_pending:
            return False
        if not request.pending_keys:
            return True
        set_aside = {key for _, key in walk.deferred if key in walk.capped}
        return not request.pending_keys <= set_aside

    def _place(self, walk: _Walk, key: str, stage_slot: float) -> float | object | None:
        """Give the key's next ready job the earliest slot it may have; returns that slot, None when the key
        is set aside, or _STOP when the batch is full or the stage has no room before its end."""
        plan, request = walk.plan, walk.request
        group, wait_until = self._pick_group(walk.inbox, key, stage_slot, request, walk.cursor, walk.free_at, walk.budget)
        if group is None:
            if wait_until is not None and wait_until < request.end:
                heapq.heappush(walk.deferred, (wait_until, key))
            return None
        held = walk.inbox.at(group, walk.cursor.get(group, 0))
        assert held is not None
        if plan.bytes + held.spec_bytes > request.max_bytes:
            plan.full = True
            return _STOP
        if held.cost == 1 and self.pacer.key_scope(held.key) is None:
            # The stage's earliest slot for one unit was just asked (nothing changed since): the pacer would say it again.
            slot: float | None = stage_slot
            stage_alone = stage_slot
        else:
            slot, stage_alone = self.pacer.next_slot_and_stage(stage_slot, held.key, held.cost)
        if slot is None:
            plan.key_next[key] = None
            return None
        if slot > stage_alone + _EPS:  # the key's own tiers: set it aside
            if slot >= request.end:
                plan.key_next[key] = slot
            else:
                heapq.heappush(walk.deferred, (slot, key))
                walk.capped.add(key)
            return None
        if slot >= request.end:
            plan.stage_next = slot
            return _STOP
        if group not in walk.cursor:
            walk.budget -= 1
        self.pacer.take(slot, held.key, held.cost)
        self.fair.served(key, held.cost, self.weight(key), slot)
        plan.jobs.append((held, slot))
        plan.bytes += held.spec_bytes
        walk.cursor[group] = walk.cursor.get(group, 0) + 1
        walk.free_at[group] = slot + request.latency_s
        walk.inbox.rotate(key, group)
        walk.ready.push(key)
        return slot

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
