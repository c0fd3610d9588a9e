"""Receiving for a run: how much to hold, when to receive, and what to hide so that keys share fairly.

- Hold about `rate x (2 horizons + 1 s)` messages: enough for the next batches, not the whole backlog.
- A key holding more than its share of what the run holds hides the rest (its groups wait in SQS), so
  receives reach other keys' messages: a small backlog is not stuck behind a large one.
- A key whose own tiers have no room for more than HOLD_MAX_S is hidden until its next slot.
- A message received before may be a job that already succeeded in a run that died: it is deleted.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

from throttler.core.clock import Clock
from throttler.core.fairness import NO_KEY, quota_key
from throttler.dispatch.config import InForce
from throttler.dispatch.hidden import HiddenKeys
from throttler.dispatch.inbox import Held, Inbox
from throttler.dispatch.intake import HOLD_MAX_S, Intake
from throttler.dispatch.outbox import Outbox
from throttler.dispatch.summary import RunSettings, RunSummary
from throttler.dispatch.timing import CONTROL_REFRESH_S, DONE_TTL_S, Timing
from throttler.dispatch.usage import UsageBook
from throttler.queue import JobQueue, QueuedMessage
from throttler.store.base import StateStore

MAX_HELD = 3000
RECEIVES_PER_STEP = 30
BATCH_TARGET_JOBS = 20  # a batch spans up to 2 s at low rates, so that its fixed cost is shared
MAX_HORIZON_S = 5.0
# A key's surplus groups come back within this: its expected rate is a guess (keys drain, weights change), and a
# group back too early costs one receive and one hide, one back too late may leave the stage idle.
SURPLUS_HIDE_MAX_S = 60.0
SURPLUS_HIDE_MIN_S = 2.0
# ... and at twice its fair share of the stage: keys drain and leave their share to the rest, and a group back
# too late leaves the stage idle (at the share itself: 93% of the stage used with 10 keys, 99.3% at twice).
SURPLUS_RATE_SLACK = 2.0
# Groups due back within this come back by themselves: not worth a request to bring them sooner.
RECALL_MARGIN_S = 1.0
RECALL_SCAN = 1000  # hidden groups looked at per recall, at most (those of keys held here are passed over)
HOLD_AT_MOST_S = 3600.0
TURNS_SPAN_S = 11 * 3600.0  # a key taking turns lines its groups up over at most this (SQS hides up to 12 h)


def takes_turns(key_slots_per_s: float, stage_slots_per_s: float) -> bool:
    """A key whose own tiers give it fewer than two slots in HOLD_MAX_S takes turns through SQS: it holds only what
    its next slot uses, and each of its groups waits hidden until its turn (kept, a group took the slot of the
    next one back, which was received and hidden again for a whole turn: promise 4, review rev13)."""
    return key_slots_per_s * HOLD_MAX_S < 2 and key_slots_per_s < stage_slots_per_s


class Receiver:
    def __init__(
        self,
        *,
        settings: RunSettings,
        queue: JobQueue,
        store: StateStore,
        inbox: Inbox,
        intake: Intake,
        usage: UsageBook,
        in_force: InForce,
        outbox: Outbox,
        timing: Timing,
        summary: RunSummary,
        clock: Clock,
    ):
        self.s, self.queue, self.store, self.inbox, self.intake = settings, queue, store, inbox, intake
        self.usage, self.in_force, self.outbox, self.t, self.summary, self.clock = usage, in_force, outbox, timing, summary, clock
        self.hidden = HiddenKeys()  # fair key -> its groups hidden in SQS, until when
        self.returns_at: dict[str, float] = {}  # fair key -> when its next hidden group is due back
        self.keys_written_at = -math.inf
        self.returns_written: dict[str, float] = {}  # returns_at as last written in the keys' summary
        self.surplus_back_at = -math.inf  # the last group hidden for its key's share is back then
        # (back at, head's receipt, messages, key) of those groups
        self.recallable: list[tuple[float, str, int, str]] = []
        self.recalled: dict[str, tuple[float, int]] = {}  # key -> (when, how many groups) of its last recall
        self.waiting_back: dict[str, list[float]] = {}  # key -> when its groups hidden for its own slots come back
        # Settled batches stay listed as open until their successes are deleted: if the run dies before the
        # deletes, a later run reads their records and never calls those jobs again.
        self.settled: list[tuple[str, int]] = []  # (batch, deletes_sent once its successes are deleted)
        self.close_settled: Callable[[list[str]], None] = lambda batch_ids: None

    # ------------------------------------------------------------------ how much, how long
    def horizon(self) -> float:
        """How much time one batch covers: about BATCH_TARGET_JOBS calls (1 to 2 s); longer when the held
        groups are fewer than its calls. A group's next job waits for its batch to settle, so each batch
        boundary leaves a group idle for a call's latency: fewer boundaries lose less."""
        rate = self.in_force.rate(self.clock.now(), unbounded=math.inf)
        if rate <= 0 or math.isinf(rate):
            return 1.0
        base = max(1.0, min(2.0, BATCH_TARGET_JOBS / rate))
        groups = len(self.inbox.groups)
        if 0 < groups < rate * base:
            return min(MAX_HORIZON_S, base * rate * base / groups)
        return base

    def held_target(self) -> int:
        """Enough for the next batches at the rate the stage sends while its windows have room: a batch
        planned short of ready jobs costs as many requests as a full one."""
        rate = self.in_force.burst_rate(self.clock.now())
        return min(MAX_HELD, math.ceil(rate * (2 * self.horizon() + 1)) + 10)

    def visibility(self, now: float, unfiled: int = 0) -> int:
        """Long enough for every message held to be sent (a spent window counted: no change to extend it
        when the stage pauses), and for its worker to finish. Groups take turns, so a message may be sent
        after those held now and as many received later: twice what is held."""
        pacer = self.in_force.pacer
        assert pacer is not None
        ahead = pacer.stage.wait_for(now, 2 * (len(self.inbox) + unfiled) + 10)
        ahead = min(max(0.0, self.t.deadline - now), ahead, HOLD_AT_MOST_S)  # a run releases what it holds at its end
        return math.ceil(ahead + 2 * self.horizon() + self.s.worker_timeout_s + 5)

    # ------------------------------------------------------------------ receiving
    def top_up(self, now: float) -> None:
        """Receive until the run holds its target. Messages are filed together once they reach it (or the
        queue runs dry), so those received again are looked up in one read, not one per receive; each is
        kept invisible for as long as the last of them needs."""
        target = self.held_target()
        visibility = self.visibility(now, max(0, target - len(self.inbox)))
        received: list[QueuedMessage] = []
        for _ in range(RECEIVES_PER_STEP):
            if len(self.inbox) + len(received) >= target:
                self.file(received, now, visibility)
                received = []
                if len(self.inbox) >= target:
                    return
            if self.inbox.pending_deletes:
                self.flush(now)  # FIFO shows a group's next message only once the finished ones are gone
            messages = self.queue.receive(10, visibility, wait_s=0)
            if not messages and self.recall(now, self.recall_wanted(now, target, received)):
                continue  # visible again: received next
            if not messages:
                # Groups this run hid for their key's share come back soon: the queue only looks empty.
                surplus_due = self.surplus_back_at > now
                self.t.queue_empty = not self.inbox and not received and not self.outbox.in_flight and not surplus_due
                self.t.receive_after = now + (CONTROL_REFRESH_S if self.t.queue_empty else 0.5)
                break
            self.t.queue_empty = False
            received += messages
        if received:
            self.file(received, now, visibility)

    def long_poll(self, wait_s: float) -> None:
        now = self.clock.now()
        visibility = self.visibility(now)
        messages = self.queue.receive(10, visibility, wait_s=max(0, min(20, int(wait_s))))
        if messages:
            self.file(messages, self.clock.now(), visibility)

    def file(self, messages: list[QueuedMessage], now: float, visibility: int) -> None:
        config, pacer = self.in_force.config, self.in_force.pacer
        assert config is not None and pacer is not None
        fresh = self.intake.accept(messages, now, now + visibility, config, lambda again: self.known_done(again, now))
        keys = [h.key for h in fresh if h.key is not None and pacer.needs_key_meter(h.key)]
        if keys:
            self.usage.load_keys(keys)
            for key in keys:
                self.in_force.note_key(key)
        self.balance(now)

    def flush(self, now: float, whole_tens: bool = False) -> None:
        undeleted = self.outbox.flush_deletes(whole_tens)
        if undeleted:
            # Succeeded, but the message could not be deleted (its visibility lapsed first): it comes back, and
            # these records make the next run delete it instead of calling it again.
            self.store.mark_done(sorted(undeleted), now + DONE_TTL_S)
            self.usage.done_until = now + DONE_TTL_S
            self.usage.known_done |= set(undeleted)
        self.t.last_flush = now
        # A settled batch leaves the open list once all its successes are deleted (deletes go oldest first).
        closing = [b for b, due in self.settled if due <= self.inbox.deletes_sent]
        if closing:
            self.settled = [(b, due) for b, due in self.settled if due > self.inbox.deletes_sent]
            self.close_settled(closing)

    def note_settled(self, batch_ids: list[str]) -> None:
        """These batches settled: their successes are the newest pending deletes."""
        due = self.inbox.deletes_sent + len(self.inbox.pending_deletes)
        self.settled += [(b, due) for b in batch_ids]

    def known_done(self, again: list[Held], now: float) -> set[str]:
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
        # Success records are written by crash recovery and by a run whose delete came too late (its receipt
        # lapsed): that run may have ended without a commit to say so, so a message received again is always
        # looked up (one batched read per receive that brings such messages).
        rest = [j for j in ids if j not in done]
        if rest:
            done |= self.store.done_ids(rest)
        return done

    def recover_foreign(self, now: float) -> None:
        """Batches still listed open long after their workers must have finished: their run died before
        settling them. Their successes get durable records (never called again), then they are forgotten."""
        stale = self.usage.stale_foreign(now)
        if stale:
            stale = self.usage.drop_settled_elsewhere(stale)
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

    # ------------------------------------------------------------------ sharing and hiding
    def balance(self, now: float) -> None:
        """Only when the run holds all it may (it would receive nothing more): then a key past its share
        hides the rest, so that receives reach other keys, and nothing waits hidden while the stage has room
        for it. Its groups come back one after another at the rate the key can expect while the keys known
        to be backlogged share the stage (at most SURPLUS_HIDE_MAX_S ahead): hidden only until its fastest
        rate could send its share, each came back within a second and was hidden again (40 Zipf keys: 350
        AWS requests per job, the run receiving in a loop)."""
        keys = self.inbox.keys()
        target = self.held_target()
        if not keys or len(self.inbox) < target:
            return
        pacer = self.in_force.pacer
        assert pacer is not None
        stage_rate = pacer.stage.rate_per_s(now)
        weights = {k: self.in_force.weight(k) for k in keys}
        total_w = sum(weights.values())
        if len(keys) == 1:
            # One key held, and its own tiers keep it below the stage's rate: keys queued behind its groups
            # (SQS FIFO serves the oldest first) would wait for its whole backlog while the stage idles. Its
            # share leaves room for one more key.
            [only] = keys
            if only == NO_KEY or pacer.rate_per_s(now, only) >= stage_rate:
                return
            total_w += 1
        backlogged_w = total_w + self.hidden.weight_besides(now, weights)
        # A key whose own tiers give it fewer than two slots in HOLD_MAX_S takes turns through SQS, one call per
        # group: it keeps what its next slot uses, its other groups come back one slot apart, and the keys that can
        # use more share the rest of what the run holds (each group it kept beyond that was hidden again, one slot
        # at a time, and its messages were received again at each: promise 4, review rev13).
        slots = {k: pacer.slot_rate_per_s(now, quota_key(k)) for k in keys}  # how far apart its slots come
        stage_slots = pacer.stage.slot_rate_per_s(now)
        turns = {k for k in keys if takes_turns(slots[k], stage_slots)}
        shares = {k: min(math.floor(target * weights[k] / total_w), math.ceil(slots[k] * HOLD_MAX_S)) for k in turns}
        rest_w = total_w - sum(weights[k] for k in turns)
        for k in keys:
            if k not in turns:
                shares[k] = math.floor((target - sum(shares[t] for t in turns)) * weights[k] / rest_w)
        with self.intake.hides_together():
            for key in keys:
                fair = SURPLUS_RATE_SLACK * stage_rate * weights[key] / backlogged_w
                self._hide_surplus(key, now, max(1, shares[key]), fair, slots[key] if key in turns else None)

    def _hide_surplus(self, key: str, now: float, share: int, fair: float, turns: float | None) -> None:
        """Hide the key's groups beyond its share of what the run holds, each back about when its turn comes (for a
        key taking turns, `turns` is its slots' rate: one slot apart)."""
        surplus = self.intake.surplus_groups(key, share)
        if not surplus:
            return
        pacer = self.in_force.pacer
        assert pacer is not None
        fastest = max(0.1, pacer.rate_per_s(now, quota_key(key)))
        expected = min(fastest, 1000.0, max(0.01, fair))
        count = sum(len(self.inbox.groups.get(g, ())) for g in surplus)
        per_group = count / len(surplus)
        if turns:
            # One slot apart, over as long as SQS hides a message (a line cut to an hour brought the groups of a key
            # of one call every 10 s with 1,200 groups back faster than its slots: each received and hidden again).
            span = TURNS_SPAN_S
            stagger, due = min(1.0 / turns, span / len(surplus)), now + share / turns
        else:
            # A key held back by its own tiers has a rate known for sure: its groups may wait in SQS up to an
            # hour (back within a minute, a key with hours of backlog would have its messages received every
            # minute, and SQS's redrive would move them to the DLQ); a fair share of the stage is only a guess.
            span = HOLD_AT_MOST_S if fastest <= fair else SURPLUS_HIDE_MAX_S
            stagger, due = min(per_group / expected, span / len(surplus)), now + share / expected
        first = max(due, self._returns_at(key))
        first = min(first, now + span - len(surplus) * stagger)
        # Never back sooner than SURPLUS_HIDE_MIN_S: back at once, the group was received again in the same
        # step and hidden again, a loop that moved waiting jobs to the DLQ within seconds.
        first = max(first, now + SURPLUS_HIDE_MIN_S)
        self.returns_at[key] = first + len(surplus) * stagger
        self.surplus_back_at = max(self.surplus_back_at, self.returns_at[key])
        for back_at, receipt in self.hide(key, surplus, first, now, stagger):
            if turns is not None:  # back at its slots: recalled, they would lose them
                heapq.heappush(self.waiting_back.setdefault(key, []), back_at)
            else:
                heapq.heappush(self.recallable, (back_at, receipt, max(1, count // len(surplus)), key))

    def recall_wanted(self, now: float, target: int, received: list[QueuedMessage]) -> int:
        """How many messages to bring back early when the queue looks empty: up to half the target while the
        run holds less; or, when the keys held cannot use the stage's rate between them (their own tiers cap
        them), enough for the rest of that rate over two seconds."""
        if not self.recallable:
            return 0
        pacer = self.in_force.pacer
        assert pacer is not None
        held = len(self.inbox) + len(received)
        stage_rate = pacer.stage.rate_per_s(now)
        usable = sum(pacer.rate_per_s(now, quota_key(k)) for k in self.inbox.keys())
        missing = max(0.0, stage_rate - usable) if not received else 0.0
        return max(target // 2 - held, math.ceil(2 * missing) if math.isfinite(missing) else 0)

    def recall(self, now: float, wanted: int) -> bool:
        """The queue looks empty and the run cannot use the stage with what it holds: the rates guessed for
        the keys whose groups it hid were too low (other keys drained meanwhile). Bring back the groups due
        soonest of keys not held here, about `wanted` messages, in the order they were due (each key keeps
        its turns); False when there is nothing to bring."""
        while self.recallable and self.recallable[0][0] <= now + RECALL_MARGIN_S:
            heapq.heappop(self.recallable)  # back by itself soon (or already received again)
        if wanted <= 0 or not self.recallable:
            return False
        held = self.inbox.by_key
        room: dict[str, float] = {}  # groups each key may still bring back: what its slots within HOLD_MAX_S use
        receipts: list[str] = []
        passed: list[tuple[float, str, int, str]] = []
        while self.recallable and wanted > 0 and len(passed) < RECALL_SCAN:
            entry = heapq.heappop(self.recallable)
            key = entry[3]
            if key not in room:
                room[key] = self._recall_room(key, now)
            if key in held or room[key] < 1:
                passed.append(entry)  # its key has work here already, or no room: it would add none of the rate
                continue
            room[key] -= 1
            at, count = self.recalled.get(key, (now, 0))
            self.recalled[key] = (at, count + 1)
            receipts.append(entry[1])
            wanted -= entry[2]
        for entry in passed:
            heapq.heappush(self.recallable, entry)
        if not receipts:
            return False
        self.queue.change_visibility([(r, 0.0) for r in receipts])  # a failed one comes back when it was due
        self.summary.recalled += len(receipts)
        return True

    def _recall_room(self, key: str, now: float) -> float:
        """How many of a key's hidden groups a recall may bring back: none when its own tiers have no slot within
        HOLD_MAX_S, else as many as its rate uses in HOLD_MAX_S (at least one), less those recalled in the last
        HOLD_MAX_S (a run recalls at every step while the queue looks empty). Any more would only be hidden
        again after all the key's other groups, hours later (a key of one call a minute lost 46 minutes of slots
        to the first, 17 to the second)."""
        pacer = self.in_force.pacer
        if pacer is None:
            return math.inf
        slot = pacer.next_slot(now + self.t.lead_s, quota_key(key))
        if slot is None or slot > now + HOLD_MAX_S:  # (a group received for a nearer slot is held until then)
            return 0.0
        waiting = self.waiting_back.get(key)
        while waiting and waiting[0] <= now - HOLD_MAX_S:
            heapq.heappop(waiting)  # back long ago: received and held, called, or hidden again
        if waiting and waiting[0] <= now + HOLD_MAX_S:
            return 0.0  # a group hidden until this slot comes back by itself: one more would be hidden again
        at, count = self.recalled.get(key, (-math.inf, 0))
        if now - at >= HOLD_MAX_S:  # the groups of its last recall have been received (and held, or called)
            self.recalled[key] = (now, 0)
            count = 0
        return max(1.0, pacer.rate_per_s(now, quota_key(key)) * HOLD_MAX_S) - count

    def hide_waiting(self, key_next: dict[str, float | None], now: float, planned: frozenset[str] = frozenset()) -> None:
        """Hide the groups of keys whose next slot is far. Not the groups of the batch being planned: hiding a
        group releases all but its head, and a planned job released that way came back while its call
        succeeded (its delete then failed on the old receipt: a second call)."""
        pacer = self.in_force.pacer
        for key, when in key_next.items():
            near = when is not None and when - now <= HOLD_MAX_S
            served = self.inbox.served.get(key) if near else None
            if near and not served:
                continue
            rate = pacer.slot_rate_per_s(now, quota_key(key)) if pacer is not None else 0.0
            groups = [g for g in self.intake.groups_headed_by(key) if g not in planned]
            if served:
                # Its next slot goes to the group whose turn it is. A key taking turns whose groups wait hidden for
                # theirs sends the groups it served to the back of its line: kept, one took the slot of the next
                # group back, which was hidden again for a whole turn (promise 4, review rev13).
                if pacer is None or not takes_turns(rate, pacer.stage.slot_rate_per_s(now)) or self._returns_at(key) <= now:
                    continue
                groups = [g for g in groups if g in served]
            if groups:
                # Its slots come one at a time: its groups come back one slot apart, not all at the first.
                stagger = 1.0 / rate if 0 < rate < math.inf else 0.0
                if when is not None and stagger:
                    # After the groups this run already hid for the key: each returns near a slot of its own.
                    when = max(when, self._returns_at(key))
                    self.returns_at[key] = when + len(groups) * stagger
                heads = self.hide(key, groups, when, now, stagger)
                if when is not None:
                    waiting = self.waiting_back.setdefault(key, [])
                    for back_at, _ in heads:
                        heapq.heappush(waiting, back_at)
                self.summary.hidden += len(groups)

    def groups_due_back(self, now: float) -> bool:
        """Whether groups hidden for their key (by this run, or by the runs before it) are still to come back."""
        return bool(self._lines(now))

    def slot_due_before(self, now: float, before: float) -> bool:
        """Whether a key whose groups wait hidden in SQS for its slots (hidden by this run, or by the runs before it)
        has a slot before `before`: a group comes back for it (its line follows its slots), so the stage has a
        backlog, not nothing to do. A key whose tiers are spent for hours has no slot soon."""
        pacer = self.in_force.pacer
        if pacer is None:
            return False
        for key in self._lines(now):
            slot = pacer.next_slot(now, quota_key(key))
            if slot is not None and slot < before:
                return True
        return False

    def _returns_at(self, key: str) -> float:
        """When the key's next hidden group is due back: this run's own, else what the last run wrote."""
        if key not in self.returns_at:
            self.returns_at[key] = self._written_returns_at(key)
        return self.returns_at[key]

    def _lines(self, now: float) -> dict[str, float]:
        """The keys whose hidden groups are still to come back, and when the last is due: this run's line, or the
        one the runs before wrote."""
        keys = {*self.returns_at, *self.usage.keys_seen}
        ends = {k: max(self.returns_at.get(k, 0.0), self._written_returns_at(k)) for k in keys}
        return {k: at for k, at in ends.items() if at > now}

    def _written_returns_at(self, key: str) -> float:
        seen = self.usage.keys_seen.get(key)
        return float(seen.get("returns_at") or 0.0) if isinstance(seen, dict) else 0.0

    def hide(
        self, key: str, groups: list[str], until: float | None, now: float, stagger_s: float = 0.0
    ) -> list[tuple[float, str]]:
        count = sum(len(self.inbox.groups.get(g, ())) for g in groups)
        back_at = (until if until is not None else now + 300.0) + len(groups) * stagger_s
        self.hidden.add(key, back_at, count, self.in_force.weight(key), now)
        return self.intake.hide_groups(groups, until - self.t.lead_s if until is not None else None, now, stagger_s)

    def keys_summary(self, now: float, last: bool = False) -> dict[str, Any] | None:
        """The busiest keys' backlog as this run sees it (held here, hidden in SQS), at most every 5 s; and as the
        run ends, if it hid groups since: the next run hides a key's groups after these, not at the same times
        (each run lined up its key's groups from the same start: a few came back at each slot, one was called,
        the rest were received and hidden again)."""
        due = self.returns_at != self.returns_written if last else now - self.keys_written_at >= 5.0
        if not due:
            return None
        self.keys_written_at = now
        self.returns_written = dict(self.returns_at)
        backlog: dict[str, dict[str, Any]] = {}
        # The lines the runs before hid are carried on until they are back: dropped, the next run lined a key's groups
        # up from its next slot, among those still to come back, and a group came back at each slot after another
        # had taken it (received every 30 s for 20 minutes, review rev14).
        lines = self._lines(now)
        for key in set(self.inbox.keys()) | set(self.hidden) | set(lines):
            held = self.inbox.held_of_key(key)
            hidden = self.hidden.messages(key, now)
            seen = self.usage.keys_seen.get(key)
            if key in lines and not hidden and key not in self.hidden and isinstance(seen, dict):
                hidden = int(seen.get("hidden") or 0)  # hidden by the runs before, not back yet (as they saw it)
            if held or hidden or key in lines:
                backlog[key] = {"held": held, "hidden": hidden, "seen_at": round(now, 3)}
                if key in lines:
                    backlog[key]["returns_at"] = round(lines[key], 3)
        return dict(sorted(backlog.items(), key=lambda kv: -(kv[1]["held"] + kv[1]["hidden"]))[:50])
