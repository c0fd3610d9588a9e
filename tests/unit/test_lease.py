"""The run lease (dispatch/handover.py): one run at a time, and a hand-over only when one is needed."""

from __future__ import annotations

from throttler.dispatch.handover import FRESH_LEASE_S, SUCCESSION_AHEAD_S, Lease, LeaseOutcome
from throttler.store.memory import MemoryStateStore


def test_a_run_that_finds_a_holder_with_time_to_spare_ends_without_asking_for_the_lease() -> None:
    # Issue 12: a hand-over every minute cost about 0.045 AWS requests per job (the lease, held messages
    # released and received again); runs now last their budget and scheduled runs in between end at once.
    store = MemoryStateStore()
    holder = Lease(store, "run-1", runs_until=290.0)
    assert holder.try_acquire(0.0) is LeaseOutcome.HELD
    assert store.read_control().lease is not None and store.read_control().lease.runs_until == 290.0  # type: ignore[union-attr]
    assert holder.renew(50.0)  # its lease lasts LEASE_TTL_S from each renewal
    early = Lease(store, "run-2", runs_until=350.0)
    assert early.try_acquire(60.0) is LeaseOutcome.NOT_NEEDED
    assert store.read_control().lease.successor is None  # type: ignore[union-attr]
    # Within SUCCESSION_AHEAD_S of the holder's end (a scheduled run to spare), the next run asks to succeed it.
    assert holder.renew(170.0)
    late = Lease(store, "run-3", runs_until=470.0)
    assert late.try_acquire(290.0 - SUCCESSION_AHEAD_S + 1) is LeaseOutcome.WAITING
    assert store.read_control().lease.successor == "run-3"  # type: ignore[union-attr]
    assert holder.hand_over("run-3", 172.0)
    assert late.try_acquire(172.5) is LeaseOutcome.HELD
    assert store.read_control().lease.runs_until == 470.0  # type: ignore[union-attr]


def test_a_holder_that_did_not_say_until_when_it_runs_is_asked_to_hand_over_as_before() -> None:
    store = MemoryStateStore()
    assert Lease(store, "old-code").try_acquire(0.0) is LeaseOutcome.HELD  # a run of the earlier version
    assert Lease(store, "run-2", runs_until=350.0).try_acquire(20.0) is LeaseOutcome.WAITING


def test_a_renewal_keeps_the_deadline_and_an_expired_holder_is_replaced_at_once() -> None:
    store = MemoryStateStore()
    holder = Lease(store, "run-1", runs_until=290.0)
    assert holder.try_acquire(0.0) is LeaseOutcome.HELD
    assert holder.renew(10.0)
    lease = store.read_control().lease
    assert lease is not None and lease.runs_until == 290.0 and lease.expires_at == 40.0
    # A holder that died stops renewing: after its lease expires the next run takes it, whatever it said.
    assert Lease(store, "run-2", runs_until=400.0).try_acquire(41.0) is LeaseOutcome.HELD


def test_a_holder_that_missed_its_renewal_is_asked_for_the_lease_not_left_to_the_next_minute() -> None:
    # Found by the review of issue 12: a dead holder's lease ran on for up to 30 s with its deadline far ahead,
    # so the scheduled runs in between ended at once and dispatch waited for the next one (about 90 s in all).
    store = MemoryStateStore()
    holder = Lease(store, "run-1", runs_until=290.0)
    assert holder.try_acquire(0.0) is LeaseOutcome.HELD  # then it dies: no renewal at 10 s
    assert Lease(store, "run-2", runs_until=350.0).try_acquire(0.0 + 30.0 - FRESH_LEASE_S - 0.1) is LeaseOutcome.NOT_NEEDED
    late = Lease(store, "run-3", runs_until=360.0)
    assert late.try_acquire(30.0 - FRESH_LEASE_S + 0.1) is LeaseOutcome.WAITING  # renewal overdue: it asks and waits
    assert late.try_acquire(30.1) is LeaseOutcome.HELD  # and takes the lease when it expires
