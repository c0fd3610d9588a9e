"""Soak: 10,000 jobs over 200 groups with 5% seeded random failures, in virtual time (promises 1, 3-5).

Producers add jobs in waves of 1,000 as the queue drains (moto's SQS costs O(queue depth) per request,
so a bounded depth keeps the soak fast; it is also how a real backlog arrives). At the end every job is
accounted for: succeeded plus dead-lettered equals enqueued, no success twice, no tier exceeded, no
call unreserved, every group in order, and the DLQ holds exactly the jobs that had to go there.
"""

from __future__ import annotations

import random

from tests.conftest import Stage, http_job
from tests.reliability.conftest import STAGE_TIERS, Campaign, ReservationAudit, Rig, account, wall_clock

JOBS = 10_000
GROUPS = 200
WAVE = 1_000
SEED = 20_260_302
# 5% of jobs misbehave: (share, path or None for a bad message, expected end)
FAILURES = [
    (0.020, "/flaky/1", "succeeded"),  # one 5xx, then fine
    (0.010, "/flaky/2", "succeeded"),  # two 5xx, then fine
    (0.005, "/throttle/1", "succeeded"),  # a 429 (pauses the stage for 1 s), then fine
    (0.005, "/status/500", "attempts exhausted: http 500"),
    (0.005, "/status/404", "http 404"),
    (0.005, None, "body is not valid JSON"),
]


def soak_jobs() -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """The jobs in queue order, and the DLQ reason expected for each job that must end there."""
    rng = random.Random(SEED)
    jobs, expected_dlq = [], {}
    for i in range(JOBS):
        group, seq, job_id = f"g{i % GROUPS}", i // GROUPS, f"job-{i}"
        path, end = "/ok", "succeeded"
        draw = rng.random()
        for share, failing_path, failing_end in FAILURES:
            if draw < share:
                path, end = failing_path, failing_end
                break
            draw -= share
        jobs.append((http_job(path, group, seq) if path else "{not json", group, job_id))
        if end != "succeeded":
            expected_dlq[job_id] = end
    return jobs, expected_dlq


def test_soak_10000_jobs_200_groups_5_percent_failures(stage: Stage, campaign: Campaign) -> None:
    started = wall_clock()
    jobs, expected_dlq = soak_jobs()
    failing = sum(1 for body, _, _ in jobs if "/ok?" not in body)
    assert 0.04 * JOBS < failing < 0.06 * JOBS
    audit = ReservationAudit(stage.clock)
    waiting = list(reversed(jobs))
    runs = 0
    first_call_at = stage.clock.now()

    while True:
        if waiting and stage.depth() < WAVE // 2:  # producers add the next wave as the queue drains
            stage.enqueue([waiting.pop() for _ in range(min(WAVE, len(waiting)))])
        summary = Rig(stage, [audit]).run()
        runs += 1
        assert not summary.lease_held_elsewhere and summary.invalid_config is False
        if not waiting and stage.depth() == 0:
            break
        assert runs < 60, f"not drained after {runs} runs"
        stage.advance(3.0)

    tally = account(stage, [j[2] for j in jobs], tiers=STAGE_TIERS, audit=audit)
    tally.assert_safe()
    assert tally.succeeded + tally.dead_lettered == JOBS
    assert audit.calls == tally.api_calls and audit.unreserved == 0
    assert {k: r["reason"] for k, r in tally.dlq.items()}.keys() == expected_dlq.keys()
    for job_id, reason in expected_dlq.items():
        record = tally.dlq[job_id]
        attempts = {"attempts exhausted: http 500": "3", "http 404": "1", "body is not valid JSON": "0"}[reason]
        assert record["reason"].startswith(reason) and record["attempts"] == attempts, record
    virtual_minutes = (stage.clock.now() - first_call_at) / 60
    elapsed = wall_clock() - started
    campaign.record(
        "soak", tally,
        f"{tally.succeeded} succeeded + {tally.dead_lettered} dead-lettered = {JOBS}; {runs} runs over"
        f" {virtual_minutes:.0f} virtual minutes, {tally.api_calls} calls, {elapsed:.0f} s real",
        started=started,
    )

