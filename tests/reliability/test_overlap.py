"""Overlapping throttler runs on one stage, on threads, for a minute of virtual time (SPEC promise 1).

The threads share a SteppedClock: each step of each run happens alone at an exact virtual time, and
the runs interleave wherever one of them waits, which is where real runs race. With the lease, all but
one back off; with the lease defeated (a lease that expires at once), the conditional writes of the
usage item alone must keep every window within its limit.
"""

from __future__ import annotations

import threading
from typing import Any

from throttler.dispatcher import RunSummary

from tests.conftest import Stage, http_job
from tests.reliability.conftest import (
    STAGE_TIERS,
    Campaign,
    LeaseAudit,
    ReservationAudit,
    Rig,
    Scheduler,
    account,
    wall_clock,
)
from throttler.core.clock import FakeClock, SteppedClock
from throttler_tools.fakeapi import FakeApi


class ExpiringLease:
    """A StateStore whose lease lasts a millisecond: a stuck run's lease that ran out, every time."""

    def __init__(self, store: Any):
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def acquire_lease(self, owner: str, now: float, ttl_s: float) -> bool:
        return bool(self._store.acquire_lease(owner, now, 0.001))


def run_on_threads(
    stage: Stage, starts_s: list[float], hooks: list[Any], **rig: Any
) -> tuple[list[RunSummary], FakeApi]:
    """One throttler run per start offset, each on its own thread, on one shared virtual clock; returns
    their summaries and the fake API they called. The stage's clock and API follow on afterwards."""
    clock = SteppedClock(stage.clock.now(), parties=len(starts_s), on_advance=stage.frozen.tick)
    api = FakeApi(tiers=list(STAGE_TIERS), clock=clock)
    summaries: list[RunSummary] = []
    errors: list[BaseException] = []
    audits = [h for h in hooks if isinstance(h, ReservationAudit)]
    for audit in audits:
        audit.clock = clock

    def one(i: int, start_s: float) -> None:
        try:
            clock.sleep(start_s)
            run = Rig(stage, hooks, clock=clock, api=api, **rig).build(owner=f"run-{i}")
            summaries.append(run.run(clock.now() + stage.settings.run_budget_s))
        except BaseException as exc:
            errors.append(exc)
        finally:
            clock.leave()

    threads = [threading.Thread(target=one, args=(i, s), name=f"run-{i}") for i, s in enumerate(starts_s)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a run did not finish"
    assert errors == []
    stage.clock = FakeClock(start=clock.now(), on_advance=stage.frozen.tick)
    api.clock = stage.clock
    stage.api = api
    for audit in audits:
        audit.clock = stage.clock
    return summaries, api


def backlog(jobs: int, groups: int) -> list[tuple[str, str, str]]:
    return [(http_job("/ok", f"g{i % groups}", i // groups), f"g{i % groups}", f"job-{i}") for i in range(jobs)]


def test_overlap_runs_started_at_once_one_holds_the_lease_the_rest_back_off(stage: Stage, campaign: Campaign) -> None:
    started = wall_clock()
    jobs = backlog(700, 20)  # more than a minute's quota (600): the holder is busy the whole minute
    stage.enqueue(jobs)
    lease, audit = LeaseAudit(), ReservationAudit(stage.clock)
    starts = [0.001] * 4 + [10.0, 20.0, 30.0, 40.0, 50.0]  # four at once, then one every 10 s

    summaries, api = run_on_threads(stage, starts, [lease, audit])

    holders = [s for s in summaries if not s.lease_held_elsewhere]
    assert len(holders) == 1 and holders[0].dispatched >= 590
    assert lease.granted == 1 and lease.refused == len(starts) - 1 and lease.max_live == 1
    assert api.violations == 0 and audit.unreserved == 0
    for window_s, limit in STAGE_TIERS:
        assert api.max_in_window(window_s) <= limit
    minute_calls = len(api.calls)

    Scheduler(stage).drain(lambda: Rig(stage, [lease, audit]))
    tally = account(stage, [j[2] for j in jobs], tiers=STAGE_TIERS, audit=audit, api=api)
    tally.assert_safe()
    assert lease.max_live == 1
    outcome = f"{len(starts)} runs in one minute: 1 held the lease ({minute_calls} calls), {lease.refused} backed off"
    campaign.record("overlap-lease", tally, outcome, started=started)


def test_overlap_runs_with_a_lease_that_expires_at_once_still_never_exceed_a_tier(
    stage: Stage, campaign: Campaign
) -> None:
    started = wall_clock()
    jobs = backlog(700, 350)  # many groups: FIFO group locks alone would otherwise keep the runs apart
    stage.enqueue(jobs)
    lease, audit = LeaseAudit(), ReservationAudit(stage.clock)
    starts = [0.001, 1.0, 2.0]  # each finds the previous lease already expired

    summaries, api = run_on_threads(stage, starts, [lease, audit], wrap_store=ExpiringLease)

    assert lease.granted == 3 and all(s.dispatched > 0 for s in summaries)  # three runs really overlapped
    conflicts = sum(s.reservation_conflicts for s in summaries)
    assert conflicts > 0  # and really raced for the usage item
    assert api.violations == 0 and audit.unreserved == 0
    for window_s, limit in STAGE_TIERS:
        assert api.max_in_window(window_s) <= limit
    assert api.max_in_window(60) >= 590  # sharing, not starving: the minute's quota was still used
    minute_calls = len(api.calls)

    Scheduler(stage).drain(lambda: Rig(stage, [audit], wrap_store=ExpiringLease))
    tally = account(stage, [j[2] for j in jobs], tiers=STAGE_TIERS, audit=audit, api=api)
    tally.assert_safe()
    outcome = f"3 runs overlapping for a minute: {minute_calls} calls, {conflicts} reservation conflicts"
    campaign.record("overlap-expired-lease", tally, outcome, started=started)
