"""The stage's run lease, and how a run hands over to the next one without a gap.

One run dispatches at a time: it holds the lease (renewed every LEASE_RENEW_S, expiring after
LEASE_TTL_S if its run dies), which says until when that run may go on. A scheduled run that finds a
holder with more than SUCCESSION_AHEAD_S left ends at once: a hand-over costs requests (the lease, the
held messages released and received again), so runs last their budget, not a minute. A run that finds
the holder nearer its end asks to succeed it; the holder
sees that at its next control read, stops planning, releases what it holds, writes its last
reservations and hands the lease over, then settles its batches still in flight while the successor
already plans the slots that follow its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from throttler.dispatch.timing import QUIET_REFRESH_S
from throttler.store.base import LeaseState, StateStore

LEASE_TTL_S = 30.0
LEASE_RENEW_S = 10.0
POLL_S = 0.5  # how often a waiting successor looks at the lease
WAIT_GRACE_S = 5.0
# A holder with longer than this to go needs no successor yet: the schedule (every minute) brings another
# run before it must stop, with one to spare should a scheduled run come late or not at all.
SUCCESSION_AHEAD_S = 120.0
# A live holder renews within LEASE_RENEW_S plus one control read (at most 4 s apart): a lease with less left
# than this was not renewed on time, and its holder may be dead: ask for it (and take it when it expires)
# rather than leave the stage to the next scheduled run.
FRESH_LEASE_S = LEASE_TTL_S - LEASE_RENEW_S - QUIET_REFRESH_S - 0.5


class LeaseOutcome(StrEnum):
    HELD = "held"  # ours: run
    WAITING = "waiting"  # another live run holds it; we asked to succeed it
    REFUSED = "refused"  # another successor already waits, or we waited too long: give up
    NOT_NEEDED = "not_needed"  # a live holder goes on past the next scheduled runs: end at once


@dataclass
class Lease:
    store: StateStore
    owner: str
    renewed_at: float = 0.0
    waiting_since: float | None = None
    holder: LeaseState | None = None
    runs_until: float | None = None  # this run's deadline, written with the lease

    def try_acquire(self, now: float) -> LeaseOutcome:
        state = self.store.acquire_lease(self.owner, now, LEASE_TTL_S, self.runs_until)
        if state.owner == self.owner:
            self.renewed_at, self.waiting_since, self.holder = now, None, None
            return LeaseOutcome.HELD
        self.holder = state
        goes_on = (state.runs_until or 0.0) > now + SUCCESSION_AHEAD_S and state.expires_at - now >= FRESH_LEASE_S
        if self.waiting_since is None and state.successor is None and goes_on:
            return LeaseOutcome.NOT_NEEDED
        if self.waiting_since is None:
            self.waiting_since = now
        if now - self.waiting_since > LEASE_TTL_S + WAIT_GRACE_S:
            return LeaseOutcome.REFUSED
        wait_s = max(POLL_S, state.expires_at - now) + WAIT_GRACE_S
        if state.successor not in (None, self.owner) and (state.successor_until or 0.0) > now:
            return LeaseOutcome.REFUSED
        if state.successor != self.owner and not self.store.request_handover(self.owner, state.owner, now, wait_s):
            return LeaseOutcome.WAITING  # the holder changed meanwhile: look again
        return LeaseOutcome.WAITING

    def check(self, lease: LeaseState | None, now: float) -> tuple[bool, str | None]:
        """From a control read: (still ours, the successor waiting for it or None)."""
        if lease is None or lease.owner != self.owner:
            return False, None
        if lease.successor and (lease.successor_until or 0.0) > now:
            return True, lease.successor
        return True, None

    def renew_due(self, now: float) -> bool:
        return now - self.renewed_at >= LEASE_RENEW_S

    def renew(self, now: float) -> bool:
        if self.store.renew_lease(self.owner, now, LEASE_TTL_S, self.runs_until):
            self.renewed_at = now
            return True
        return False

    def hand_over(self, successor: str, now: float) -> bool:
        return self.store.hand_over(self.owner, successor, now, LEASE_TTL_S)

    def release(self) -> None:
        self.store.release_lease(self.owner)
