"""Crash injection at every step of a throttler run (SPEC promises 1, 3, 4 and 5).

The simulated process dies at one chosen call (every later call dies too, so the run's `finally`
gets nowhere); after the crashed run's lease and its messages' visibility run out, fresh scheduled
runs carry on. For every point: nothing is lost, no success is repeated (except the one call whose
response died with the worker, which goes again with the same Idempotency-Key), no tier is exceeded,
nothing is called without a reservation, and every group keeps its order.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Stage, http_job
from tests.reliability.conftest import (
    LEASE_WAIT_S,
    STAGE_TIERS,
    Campaign,
    Crash,
    Match,
    ProcessDied,
    ReservationAudit,
    Rig,
    Scheduler,
    account,
    assert_lost_records_bounded,
    to_queue,
    wall_clock,
)

GROUPS = "abcdef"
PER_GROUP = 6


def workload() -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """36 jobs in 6 groups with one job of each kind of trouble; returns jobs and the expected DLQ."""
    special = {
        ("a", 2): http_job("/flaky/1", "a", 2),  # fails once, then succeeds
        ("b", 3): http_job("/status/400", "b", 3),  # permanent: dead-lettered after one call
        ("c", 1): "{not json",  # bad message: dead-lettered on receipt
        ("d", 4): http_job("/throttle/1", "d", 4),  # 429 once (pauses the stage), then succeeds
        ("e", 1): http_job("/flaky/3", "e", 1),  # fails 3 times: attempts exhausted (a 4th call would pass)
    }
    jobs = []
    for seq in range(PER_GROUP):
        for group in GROUPS:
            body = special.get((group, seq), http_job("/ok", group, seq))
            jobs.append((body, group, f"{group}-{seq}"))
    return jobs, {"b-3": "http 400", "c-1": "not valid JSON", "e-1": "attempts exhausted"}


def _succeeded_2xx(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> bool:
    return result is not None and 200 <= result.status_code < 300


def _of_e1(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> bool:
    """add_attempt for, or the DLQ copy of, the job whose attempts run out."""
    if args:
        return bool(args[0] == "e-1")
    entries = kwargs.get("Entries", [])
    return any(e.get("MessageAttributes", {}).get("job_id", {}).get("StringValue") == "e-1" for e in entries)


# (point, op, when, match, which occurrences to crash at)
POINTS: list[tuple[str, str, str, Match | str | None, tuple[int, ...]]] = [
    ("after-receive", "queue.receive", "after", None, (1, 3)),
    ("after-reservation", "store.save_usage", "after", None, (1, 3)),
    ("invoke-not-sent", "invoker.submit", "before", None, (1, 2)),
    ("during-invoke", "invoker.submit", "after", None, (1, 2)),  # the worker ran; the throttler died waiting
    ("api-succeeded-not-recorded", "api.request", "after", _succeeded_2xx, tuple(range(1, 31, 3))),  # worker died
    ("success-recorded-not-deleted", "worker_store.mark_done", "after", None, (1, 5)),
    ("before-delete", "queue.delete", "before", None, (1, 2)),
    ("after-delete", "queue.delete", "after", None, (1, 2)),
    ("after-attempt-counted", "store.add_attempt", "after", None, (1, 2)),
    ("after-last-attempt-counted", "store.add_attempt", "after", _of_e1, (3,)),
    ("after-pause-written", "store.set_pause", "after", None, (1,)),
    ("dead-letter-before-send", "queue.dead_letter", "before", None, (1, 2)),
    ("dead-letter-sent-not-deleted", "sqs.send_message_batch", "after", "DLQ_URL", (1, 2)),
    ("exhausted-dead-letter-sent-not-deleted", "sqs.send_message_batch", "after", _of_e1, (1,)),
]
CASES = [
    pytest.param(point, op, when, match, nth, id=f"{point}-{nth}")
    for point, op, when, match, nths in POINTS
    for nth in nths
]


@pytest.mark.parametrize(("point", "op", "when", "match", "nth"), CASES)
def test_crash_at_every_step_loses_nothing_and_repeats_no_success(
    stage: Stage, campaign: Campaign, point: str, op: str, when: str, match: Any, nth: int
) -> None:
    started = wall_clock()
    jobs, expected_dlq = workload()
    stage.enqueue(jobs)
    audit = ReservationAudit(stage.clock)
    crash = Crash(op, nth, when, to_queue(match, stage) if isinstance(match, str) else match)

    # Given scheduled runs, one of which dies at the chosen call
    for _ in range(10):
        try:
            Rig(stage, [audit, crash]).run()
        except ProcessDied:
            break
        stage.advance(3.0)
    assert crash.dead, f"{op} was called fewer than {nth} times"

    # When its lease and its messages' visibility run out and scheduled runs carry on
    stage.advance(LEASE_WAIT_S)
    scheduler = Scheduler(stage)
    scheduler.drain(lambda: Rig(stage, [audit]))

    # Then every job ended exactly once, within quota, in order, and never unreserved
    tally = account(stage, [j[2] for j in jobs], tiers=STAGE_TIERS, audit=audit)
    if point == "api-succeeded-not-recorded":
        # The answer died with the worker before it could record the success: that job is called once
        # more, with the same Idempotency-Key (an idempotent API answers it without a second effect),
        # and so is any success of the last RECORD_EVERY_S whose record was not written yet.
        assert crash.fatal is not None
        key = crash.fatal[1]["headers"]["Idempotency-Key"]
        died_at = min(c.at for c in stage.api.calls if c.key == key and c.status == 200)
        assert key in tally.repeated_keys
        assert_lost_records_bounded(tally, stage.api, [died_at])
    else:
        assert tally.repeated_keys == {}
    allowed = dict(tally.repeated_keys)
    tally.assert_safe(allowed)
    assert audit.calls == tally.api_calls and audit.unreserved == 0
    if "e-1" not in tally.dlq:
        # A call of it was made by a batch whose throttler (or worker) died before the attempt was
        # counted: the job had a fourth call, which succeeded. At least 3 attempts, as promised.
        assert point in ("during-invoke", "api-succeeded-not-recorded")
        assert sum(1 for c in stage.api.calls if c.key == "e-1") == 4
        expected_dlq.pop("e-1")
    assert tally.dlq.keys() == expected_dlq.keys()
    for job_id, reason in expected_dlq.items():
        # A crash after the worker's calls and before the throttler counted them leaves one uncounted.
        calls = sum(1 for c in stage.api.calls if c.key == job_id)
        attempts = int(tally.dlq[job_id]["attempts"])
        assert reason in tally.dlq[job_id]["reason"] and attempts <= calls <= attempts + 1, (calls, tally.dlq[job_id])
    uncounted = point in ("during-invoke", "api-succeeded-not-recorded")
    assert sum(1 for c in stage.api.calls if c.key == "e-1") <= 3 + uncounted
    assert scheduler.failures == []  # the fresh runs themselves never crash
    campaign.record("crash", tally, f"{point}#{nth}", repeated_same_key=sum(allowed.values()), started=started)
