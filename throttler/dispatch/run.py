"""One throttler run, as a state machine: `step(now)` does what is due and says when to call it again.

A run takes the lease (or asks the run holding it to hand over), then loops: settle finished batches,
re-read the configuration, pauses and lease every CONTROL_REFRESH_S, receive only when a slot is within
reach, plan the next batch, reserve it (one conditional write) and hand it to a worker. It ends when a
successor asks for the lease, when its deadline comes, when it is idle (latency=cost) or when nothing
can be sent before its deadline; then it releases what it holds and settles what is still in flight.
`drive` runs it against the real clock; the simulation drives `step` in virtual time. The parts:
config.py (what is in force), receiving.py, batching.py, outbox.py (sending, settling), handover.py.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Callable
from enum import StrEnum
from typing import NamedTuple

from throttler.core.clock import Clock
from throttler.core.envelope import Job
from throttler.core.errors import StoreError
from throttler.core.fairness import FairShare
from throttler.core.pacing import Pacer
from throttler.dispatch.batching import Batcher
from throttler.dispatch.config import InForce
from throttler.dispatch.control import Pauses
from throttler.dispatch.handover import POLL_S, Lease, LeaseOutcome
from throttler.dispatch.inbox import Inbox
from throttler.dispatch.intake import Intake
from throttler.dispatch.outbox import Outbox, RetryPolicy
from throttler.dispatch.receiving import Receiver
from throttler.dispatch.summary import RunSettings, RunSummary
from throttler.dispatch.timing import DELETE_FLUSH_S, RECEIVE_AHEAD_S, Timing
from throttler.dispatch.usage import UsageBook
from throttler.queue import JobQueue, QueuedMessage
from throttler.store.base import KEY_SIGNAL_KEEP_S, OPERATOR_SIGNAL, Control, StateStore, ThrottleSignal
from throttler.worker.invoker import Invoker

logger = logging.getLogger(__name__)
LONG_POLL_S = 2.0
# latency=cost: a run with nothing held stays while a key whose groups wait hidden for its slots has one within this
# (the schedule's period: later, the next scheduled run is there for it).
STAY_FOR_GROUP_S = 60.0
IDLE_POLL_S = 2.0  # latency=cost: how long an idle run waits on the queue for groups due back (once a run)
# Ended key signals removed from the shared record per control read (one conditional write).
FORGET_AT_ONCE = 100
FORGET_ONE_BY_ONE = 5


class Phase(StrEnum):
    START = "start"
    WAIT_LEASE = "wait_lease"
    RUNNING = "running"
    ENDING = "ending"
    SETTLING = "settling"
    DONE = "done"


class Wake(NamedTuple):  # one per step: a tuple costs a third of a frozen dataclass
    at: float
    long_poll: bool = False  # idle: the driver may wait on the queue itself (SQS long polling)


class ThrottlerRun:
    def __init__(
        self,
        *,
        settings: RunSettings,
        store: StateStore,
        queue: JobQueue,
        invoker: Invoker,
        clock: Clock,
        parse: Callable[[QueuedMessage], Job],
        owner: str | None = None,
    ):
        self.s, self.store, self.queue, self.clock = settings, store, queue, clock
        self.owner = owner or uuid.uuid4().hex
        self.summary = RunSummary(owner=self.owner)
        self.phase = Phase.START
        self.t = Timing(lead_s=settings.batch_lead_s)
        self.inbox = Inbox()
        self.wakeup = threading.Event()
        self.intake = Intake(queue=queue, store=store, parse=parse, inbox=self.inbox)
        self.outbox = Outbox(
            queue,
            store,
            invoker,
            self.inbox,
            RetryPolicy(settings.max_attempts, settings.retry_base_s, settings.retry_max_s),
            self.owner,
            on_done=self.wakeup.set,
            worker_timeout_s=settings.worker_timeout_s,
        )
        self.usage = UsageBook(store, self.owner)
        self.lease = Lease(store, self.owner)
        self.pauses = Pauses()
        self.in_force = InForce(settings, store, self.usage, FairShare(), self.summary)
        self.receiver = Receiver(
            settings=settings,
            queue=queue,
            store=store,
            inbox=self.inbox,
            intake=self.intake,
            usage=self.usage,
            in_force=self.in_force,
            outbox=self.outbox,
            timing=self.t,
            summary=self.summary,
            clock=clock,
        )
        self.batcher = Batcher(
            settings=settings,
            queue=queue,
            inbox=self.inbox,
            usage=self.usage,
            in_force=self.in_force,
            receiver=self.receiver,
            outbox=self.outbox,
            pauses=self.pauses,
            timing=self.t,
            summary=self.summary,
            clock=clock,
            owner=self.owner,
        )
        self.receiver.close_settled = self._close_settled
        self.successor: str | None = None
        self.lease_lost = False
        self.pause_unmirrored = False  # the operator's pause could not be written to the shared record yet
        self.released_for_pause = False
        self.idle_polled = False  # latency=cost: this run has waited once on the queue before ending idle
        self.end_reason = ""

    @property
    def pacer(self) -> Pacer | None:
        return self.in_force.pacer

    @property
    def deadline(self) -> float:
        return self.t.deadline

    # ------------------------------------------------------------------ the state machine
    def start(self, deadline: float) -> None:
        self.t.deadline = deadline
        self.lease.runs_until = deadline
        self.summary.started_at = self.clock.now()

    def step(self, now: float) -> Wake | None:
        if self.phase is Phase.START or self.phase is Phase.WAIT_LEASE:
            return self._take_lease(now)
        self._settle(now)
        if self.phase is Phase.RUNNING:
            if now >= self.t.next_refresh:
                self._refresh(now)
            if self.phase is Phase.RUNNING:
                wake = self._run(now)
                if self.phase is Phase.RUNNING:
                    return wake
        if self.phase is Phase.ENDING:
            if self._settle_before_hand_over():
                return Wake(now + 1.0)  # a finished batch wakes the run sooner
            self._end(now)
        if self.outbox.in_flight:
            return Wake(now + 1.0)
        self._close(now)
        return None

    def long_poll(self, wait_s: float) -> None:
        """Idle: wait on the queue itself for up to `wait_s` (SQS long polling), then file what came."""
        if self.phase is Phase.RUNNING and self.in_force.config is not None and self.pacer is not None:
            self.receiver.long_poll(wait_s)

    # ------------------------------------------------------------------ lease and control
    def _take_lease(self, now: float) -> Wake | None:
        outcome = self.lease.try_acquire(now)
        if outcome is LeaseOutcome.HELD:
            self.phase = Phase.RUNNING
            self.summary.waited_for_lease_s = round(now - self.summary.started_at, 3) if self.summary.started_at else 0.0
            self.usage.load()
            self._refresh(now)
            return Wake(now)
        if outcome is not LeaseOutcome.WAITING or now >= self.t.deadline:
            holder = self.lease.holder
            logger.info(
                "the run holding the lease goes on" if outcome is LeaseOutcome.NOT_NEEDED else "lease held elsewhere, giving up",
                extra={"holder": holder.owner if holder else None, "holder_runs_until": holder.runs_until if holder else None},
            )
            self.summary.lease_held_elsewhere = True
            self.summary.end_reason = "holder goes on" if outcome is LeaseOutcome.NOT_NEEDED else "lease held elsewhere"
            self.phase = Phase.DONE
            self.summary.finish(self, now)
            return None
        self.phase = Phase.WAIT_LEASE
        return Wake(now + POLL_S)

    def _refresh(self, now: float) -> None:
        self.t.refreshed_at = now
        control = self.store.read_control()
        mine, successor = self.lease.check(control.lease, now)
        if not mine or (self.lease.renew_due(now) and not self.lease.renew(now)):
            logger.warning("lease lost", extra={"holder": control.lease.owner if control.lease else None})
            self.lease_lost = True
            self._begin_end("lease lost")
            return
        if self.in_force.apply(control, now):
            self.t.next_plan_at, self.t.quiet_until = min(self.t.next_plan_at, now), -math.inf  # plan with it now
        newly_paused = control.pause_until is not None and control.pause_until > now and self.pauses.operator_until is None
        streak = self.pacer.stage.meter.api.streak if self.pacer is not None else 0
        self._read_signals(control, now, streak)
        self.pauses.check_unread_429(self.in_force.auto_window(None), streak)
        self._forget_ended_key_signals(control, now)
        still_paused = self.pauses.operator_until is not None
        if (newly_paused or (self.pause_unmirrored and still_paused)) and self.outbox.in_flight:
            # Workers of long batches look at the shared throttle record: tell them too.
            try:
                self.store.publish_throttle(ThrottleSignal(now, (control.pause_until or now) - now, OPERATOR_SIGNAL))
                self.pause_unmirrored = False
            except StoreError as exc:  # tried again at the next read; the run itself is paused already
                logger.error("could not mirror the pause to the workers", extra={"error": str(exc)})
                self.pause_unmirrored = True
        if self.pacer is not None:
            self.pacer.expire(now)
        self.receiver.recover_foreign(now)
        if successor is not None:
            self.successor = successor
            self._begin_end("successor")

    def _read_signals(self, control: Control, now: float, streak: int) -> None:
        """Pause for the 429s and pauses the record holds, then write there the 429s learnt from workers it lacks."""
        self.pauses.from_control(control, now, self.in_force.auto_window(None), streak, self.in_force.auto_window)
        self._publish(self.pauses.unpublished(), now)

    def _publish(self, signals: list[ThrottleSignal], now: float) -> None:
        """Write 429s the workers could not to the shared record (the one that ends later stays there)."""
        for signal in signals:
            try:
                self.store.publish_throttle(signal, now)
            except StoreError as exc:  # compared again at the next read
                logger.error("could not publish a 429 its worker could not", extra={"error": str(exc)})
                self.pauses.learnt.append(signal)

    def _forget_ended_key_signals(self, control: Control, now: float) -> None:
        """Key-scoped 429s ended a while ago leave the shared record, a few at a time, so that it stays small
        whatever the number of keys (each is removed only if it is still the one read)."""
        ended = [s for s in control.key_throttles.values() if s.bounded(now).ends_at + KEY_SIGNAL_KEEP_S < now]
        try:
            if ended and not self.store.forget_key_throttles(ended[:FORGET_AT_ONCE]):
                # One of them changed since the read (a new 429 of its key): the others one by one, a few.
                for signal in ended[:FORGET_ONE_BY_ONE]:
                    self.store.forget_key_throttles([signal])
        except StoreError as exc:  # the next read tries again
            logger.warning("could not forget ended key signals", extra={"error": str(exc)})

    # ------------------------------------------------------------------ dispatching
    def _run(self, now: float) -> Wake:
        t = self.t
        if self.pacer is None or now >= t.deadline:
            if now >= t.deadline:
                self._begin_end("deadline")
            return Wake(max(now + 0.001, min(t.next_refresh, t.deadline)))
        paused_until = self.pauses.until(now)
        if paused_until is not None:
            self.summary.paused_until = paused_until
            if self.usage.stage.dirty and self.pauses.api_until == paused_until:
                # The 429 streak that lengthens a storm's pauses (promise 4) lives in the usage item: written now,
                # not at the next batch or the run's end, which a run that dies during the pause never reaches.
                self.usage.commit(now)
            if not self.released_for_pause and not self._hold_through(paused_until, now):
                self.summary.released += self.intake.release_all()
                self.released_for_pause = True
            # latency=cost: a run paused past its deadline ends (`resume` starts the next one); latency=low: it
            # waits, reading the pause item at each refresh, so a `resume` takes effect within the refresh (5 s).
            if paused_until >= t.deadline and not self.outbox.in_flight and self.in_force.latency() == "cost":
                self._begin_end("paused")
            return Wake(min(paused_until, t.next_refresh, t.deadline))
        self.released_for_pause = False
        stage_next = self.pacer.stage.earliest(now + t.lead_s, 1)
        if math.isinf(stage_next) or stage_next >= t.deadline:
            if not self.outbox.in_flight:
                self._begin_end("blocked until after the deadline")
                return Wake(now)
            return Wake(min(t.next_refresh, t.deadline))
        target = self.receiver.held_target()
        if stage_next <= now + RECEIVE_AHEAD_S and now >= t.receive_after and len(self.inbox) < target:
            self.receiver.top_up(now)
        if not self.inbox and not self.outbox.in_flight and t.queue_empty:
            if self.in_force.latency() == "cost":
                if self.receiver.slot_due_before(now, min(t.deadline, now + STAY_FOR_GROUP_S)):
                    # Not idle: a key's groups wait hidden in SQS for its slots, and one comes back before the next
                    # scheduled run would (ended, the run left a key of one call every 10 s with a third of its
                    # slots); a key held back for hours keeps no run waiting (review rev14).
                    return Wake(min(t.next_refresh, t.deadline), long_poll=True)
                if not self.idle_polled and self.receiver.groups_due_back(now):
                    # A key's groups hidden for its own slots come back about now: one at its slot would find the
                    # run ended (a key of one call a minute lost one slot in three to that). Wait for it on the
                    # queue a moment: one receive, a second or two of the run's time.
                    self.idle_polled = True
                    return Wake(now + IDLE_POLL_S, long_poll=True)
                self._begin_end("idle")
                return Wake(now)
            return Wake(min(t.next_refresh, t.deadline), long_poll=True)
        if self.inbox and now >= t.next_plan_at:
            if self.pauses.last_signal_at > t.refreshed_at or self.pauses.unread_429 is not None:
                # A 429 came back in a batch since the last read of the shared record (or a lost answer's record
                # says one did): read it now, so that the next batch waits out its Retry-After, and its worker
                # does not stop for a 429 this run already knows of (it stops for any later).
                self._refresh(now)
                if self.phase is not Phase.RUNNING or self.pauses.until(now) is not None:
                    return Wake(now + 0.001)
            self.batcher.plan_and_send(self.clock.now())
        now = self.clock.now()
        if self.inbox.pending_deletes and now - t.last_flush >= DELETE_FLUSH_S:
            self.receiver.flush(now)
        elif len(self.inbox.pending_deletes) >= 10:
            self.receiver.flush(now, whole_tens=True)  # the rest goes with the next ten, or within DELETE_FLUSH_S
        return Wake(self._next_wake(now, stage_next, target))

    def _hold_through(self, paused_until: float, now: float) -> bool:
        """A short pause (a 429's Retry-After of a second or so) that ends before the deadline: keep what is
        held (hidden a little longer where its visibility would end first). Releasing it would cost each
        message a receive per pause, and a stream of 429s would then bring every waiting job to
        maxReceiveCount within hours. A longer pause releases everything (the next run receives it)."""
        if paused_until + RECEIVE_AHEAD_S >= self.t.deadline:
            return False
        short = [held for held in self.inbox if held.visible_until <= paused_until + RECEIVE_AHEAD_S]
        if short:
            visibility = self.receiver.visibility(now)
            self.queue.change_visibility([(held.msg.receipt, float(visibility)) for held in short])
            for held in short:
                held.visible_until = now + visibility
        return True

    def _next_wake(self, now: float, stage_next: float, target: int) -> float:
        """The next thing due: a refresh, the deadline, the next plan, the next receive, a delete flush. (A
        batch that finishes wakes the run on its own.) Never "now" again: every step must move time on."""
        t, soon = self.t, now + 0.001
        wake = min(t.next_refresh, t.deadline)
        recheck = self.outbox.next_recheck()
        if recheck is not None:
            wake = min(wake, max(recheck, soon))
        if self.inbox:
            wake = min(wake, max(t.next_plan_at, soon))
        if len(self.inbox) < target:
            wake = min(wake, max(stage_next - RECEIVE_AHEAD_S, t.receive_after, soon))
        if self.inbox.pending_deletes:
            wake = min(wake, max(t.last_flush + DELETE_FLUSH_S, soon))
        return max(wake, soon)

    # ------------------------------------------------------------------ settling and ending
    def _settle(self, now: float) -> None:
        if not self.outbox.in_flight:
            return
        done = self.outbox.settle_finished(now, self.pacer, self.pauses, self.in_force.auto_window)
        if not done:
            return
        self.receiver.note_settled(done)  # closed once their successes are deleted
        if self.phase is not Phase.RUNNING:
            # Not attempted jobs of the last batches went back to the inbox: nobody here will send them now.
            self.summary.released += self.intake.release_all()
        if self.outbox.worker_trouble:
            delay = min(30.0, 2.0 ** (self.outbox.worker_trouble - 1))
            self.t.next_plan_at = max(self.t.next_plan_at, now + delay)
        elif self.inbox:
            self.t.next_plan_at = min(self.t.next_plan_at, now)
        self.t.receive_after = -math.inf

    def _close_settled(self, batch_ids: list[str]) -> None:
        """Settled batches whose successes are now deleted leave the open list: with the next commit while
        the run still writes the usage item, else at once."""
        if self.phase is Phase.RUNNING or self.phase is Phase.ENDING:
            for batch_id in batch_ids:
                self.usage.settled(batch_id)
        else:
            self.store.close_open_batches(batch_ids)

    def _settle_before_hand_over(self) -> bool:
        """With a cost header, a batch's answers correct the units its calls used: those corrections must
        reach the successor's reservations, so the run settles its batches before it hands over (the gap
        is one call's latency; without a cost header the successor takes over at once)."""
        config = self.in_force.config
        if self.successor is None or self.lease_lost or config is None or not config.cost_header:
            return False
        if self.outbox.in_flight:
            self.summary.released += self.intake.release_all()
            return True
        return False

    def _begin_end(self, reason: str) -> None:
        if self.phase is Phase.RUNNING:
            self.phase = Phase.ENDING
            self.end_reason = reason

    def _end(self, now: float) -> None:
        """Stop planning: release what is held, write the last reservations, hand over or release the lease."""
        self.summary.released += self.intake.release_all()
        self.receiver.flush(now)
        # 429s learnt since the last read: the successor must pause for them too, published by their workers or not.
        # Compared with the record first: a `resume` since the last read lifted them (review rev10).
        if self.pauses.learnt:
            try:
                self._read_signals(self.store.read_control(), now, 0)
            except StoreError as exc:  # the successor may then miss a 429 whose worker could not publish it
                logger.error("could not compare the 429s learnt with the shared record", extra={"error": str(exc)})
            self.pauses.learnt.clear()  # not this run's to retry any more
        if not self.lease_lost:
            keys_summary = self.receiver.keys_summary(now, last=True)
            dirty = self.usage.to_close or self.usage.stage.dirty or any(m.dirty for m in self.usage.keys.values())
            if dirty or keys_summary is not None:
                self.usage.commit(now, keys_summary=keys_summary)
            if self.successor is not None and self.lease.hand_over(self.successor, now):
                self.summary.handed_over_to = self.successor
            else:
                self.lease.release()
        self.summary.end_reason = self.end_reason
        self.phase = Phase.SETTLING

    def _close(self, now: float) -> None:
        if self.phase is Phase.DONE:
            return
        self.receiver.flush(now)
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
