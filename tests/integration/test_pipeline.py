"""The handlers' library end to end under moto: each test names the SPEC promise it proves."""

from __future__ import annotations

from tests.conftest import Stage, http_job


def test_ordering_kept_across_interleaved_groups_with_a_failure_in_one(stage: Stage) -> None:
    jobs = []
    for seq in range(6):
        for group in ("a", "b", "c"):
            path = "/status/400" if (group == "b" and seq == 2) else "/ok"
            jobs.append((http_job(path, group, seq), group, f"{group}-{seq}"))
    stage.enqueue(jobs)
    stage.drain()
    assert stage.api.order_violations == 0
    for group in ("a", "b", "c"):
        seqs = [c.seq for c in stage.api.calls if c.group == group]
        assert seqs == list(range(6)), (group, seqs)
    dlq = stage.dlq_messages()
    assert [m["MessageAttributes"]["error_reason"]["StringValue"] for m in dlq] == ["http 400"]
    assert stage.depth() == 0


def test_nothing_lost_every_job_succeeds_once(stage: Stage) -> None:
    stage.enqueue([(http_job("/ok", f"g{i % 7}", i), f"g{i % 7}", f"job-{i}") for i in range(120)])
    stage.drain()
    assert stage.depth() == 0
    assert stage.dlq_messages() == []
    assert sorted(stage.api.successes_by_key()) == sorted(f"job-{i}" for i in range(120))
    assert set(stage.api.successes_by_key().values()) == {1}
    assert stage.api.violations == 0


def _reasons(stage: Stage) -> dict[str, dict[str, str]]:
    return {
        m["MessageAttributes"]["job_id"]["StringValue"]: {
            "reason": m["MessageAttributes"]["error_reason"]["StringValue"],
            "attempts": m["MessageAttributes"]["attempts"]["StringValue"],
            "group": m["Attributes"]["MessageGroupId"],
            "body": m["Body"],
        }
        for m in stage.dlq_messages()
    }


def test_permanent_failure_dead_lettered_at_once_with_reason_attempts_body_and_group(stage: Stage) -> None:
    bad_body = http_job("/status/404", "p", 0)
    stage.enqueue([(bad_body, "p", "perm-0"), (http_job("/ok", "p", 1), "p", "perm-1")])
    stage.drain()
    dlq = _reasons(stage)
    assert dlq == {"perm-0": {"reason": "http 404", "attempts": "1", "group": "p", "body": bad_body}}
    assert [c.seq for c in stage.api.calls] == [0, 1]  # called once; the group then moved on
    assert stage.depth() == 0


def test_retryable_failure_retried_then_succeeds_in_order(stage: Stage) -> None:
    stage.enqueue([(http_job("/flaky/2", "r", 0), "r", "r-0")] + [(http_job("/ok", "r", i), "r", f"r-{i}") for i in (1, 2, 3)])
    stage.drain()
    assert [c.seq for c in stage.api.calls] == [0, 0, 0, 1, 2, 3]
    assert [c.status for c in stage.api.calls][:3] == [500, 500, 200]
    assert stage.dlq_messages() == []
    assert stage.depth() == 0


def test_retryable_failure_dead_lettered_after_three_real_attempts(stage: Stage) -> None:
    stage.enqueue([(http_job("/status/503", "x", 0), "x", "x-0"), (http_job("/ok", "x", 1), "x", "x-1")])
    stage.drain()
    dlq = _reasons(stage)
    assert dlq["x-0"]["attempts"] == "3"
    assert "http 503" in dlq["x-0"]["reason"]
    assert [c.seq for c in stage.api.calls] == [0, 0, 0, 1]


def test_429_with_retry_after_pauses_every_group_and_spends_no_attempt(stage: Stage) -> None:
    jobs = [(http_job("/throttle/30", "t", 0), "t", "t-0")]
    jobs += [(http_job("/ok", f"o{i % 4}", i), f"o{i % 4}", f"o-{i}") for i in range(60)]
    stage.enqueue(jobs)
    stage.drain(gap_s=1.0)
    throttled = [c for c in stage.api.calls if c.status == 429]
    assert len(throttled) == 1
    paused_from = throttled[0].at
    assert not [c for c in stage.api.calls if paused_from < c.at < paused_from + 30]
    assert stage.store.get_attempts("t-0") == 0
    assert stage.api.successes_by_key()["t-0"] == 1
    assert stage.dlq_messages() == []
    assert stage.depth() == 0


def test_429_with_http_date_retry_after_pauses_until_that_date(stage: Stage) -> None:
    stage.enqueue([(http_job("/throttle/date/20", "d", 0), "d", "d-0"), (http_job("/ok", "e", 0), "e", "e-0")])
    stage.drain(gap_s=1.0)
    first = stage.api.calls[0]
    later = [c for c in stage.api.calls[1:] if c.key != "e-0" or c.at > first.at]
    assert first.status == 429
    assert all(c.at >= first.at + 19 for c in later)
    assert stage.depth() == 0


def test_quota_never_exceeded_with_two_overlapping_runs(stage: Stage) -> None:
    """Two runs that both think they hold the lease (a stuck run whose lease expired) still share
    one usage ledger: the conditional reservation writes keep every window within its limit."""
    import threading

    from throttler.store import DynamoStateStore

    stage.set_quotas(second=4, minute=60)
    stage.api.tiers = [(1, 4), (60, 60)]
    stage.enqueue([(http_job("/ok", f"g{i % 10}", i), f"g{i % 10}", f"j-{i}") for i in range(90)])

    class LeaseAlwaysGranted(DynamoStateStore):
        def acquire_lease(self, owner: str, now: float, ttl_s: float) -> bool:
            return True

    from throttler.core.clock import SteppedClock

    clock = SteppedClock(stage.clock.now(), parties=2, on_advance=lambda s: stage.frozen.tick(s))
    stage.clock = clock  # type: ignore[assignment]
    stage.api.clock = clock
    runs = [stage.make_run(owner=f"run-{i}") for i in range(2)]
    for run in runs:
        run.store = LeaseAlwaysGranted(stage.dynamodb, stage.env["STATE_TABLE"])
    deadline = clock.now() + 57

    def run_then_leave(run) -> None:
        try:
            run.run(deadline)
        finally:
            clock.leave()

    threads = [threading.Thread(target=run_then_leave, args=(run,)) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r.summary.dispatched > 0 for r in runs), [r.summary.to_dict() for r in runs]
    assert sum(r.summary.reservation_conflicts for r in runs) > 0  # they really raced
    assert stage.api.violations == 0
    assert stage.api.max_in_window(1) <= 4
    assert stage.api.max_in_window(60) <= 60


def test_second_run_backs_off_while_the_lease_is_held(stage: Stage) -> None:
    assert stage.store.acquire_lease("someone-else", stage.clock.now(), 90)
    stage.enqueue([(http_job("/ok", "a", 0), "a", "a-0")])
    summary = stage.run()
    assert summary.lease_held_elsewhere and summary.dispatched == 0
    assert stage.api.calls == []
    stage.advance(91)
    assert stage.run().succeeded == 1


def test_quota_change_mid_run_takes_effect_within_five_seconds(stage: Stage) -> None:
    stage.enqueue([(http_job("/ok", f"g{i % 10}", i), f"g{i % 10}", f"q-{i}") for i in range(300)])
    changed_at: list[float] = []

    def lower_quota(call) -> None:  # the operator edits the item while the run is going
        if len(stage.api.calls) == 60 and not changed_at:
            stage.set_quotas(second=2, minute=600)
            changed_at.append(call.at)

    stage.api.on_call = lower_quota
    stage.run()
    after = [c.at for c in stage.api.calls if c.at > changed_at[0] + 5]
    assert len(after) > 20
    assert max(sum(1 for t in after if s <= t < s + 1) for s in after) <= 2
    before = [c.at for c in stage.api.calls if c.at <= changed_at[0]]
    assert max(sum(1 for t in before if s <= t < s + 1) for s in before) > 2  # it was faster before


def test_crash_after_successful_call_before_delete_does_not_call_api_again(stage: Stage) -> None:
    import pytest

    stage.enqueue([(http_job("/ok", f"c{i % 3}", i), f"c{i % 3}", f"c-{i}") for i in range(12)])
    run = stage.make_run()

    def die(*args, **kwargs):
        raise RuntimeError("process died before deleting")

    run.queue.delete = die  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        run.run(stage.clock.now() + 57)
    assert len(stage.api.calls) >= 1
    stage.advance(200)  # visibility and lease run out
    summaries = stage.drain()
    assert summaries[0].duplicates >= 1
    assert set(stage.api.successes_by_key().values()) == {1}
    assert len(stage.api.successes_by_key()) == 12
    assert stage.depth() == 0


def test_bad_messages_dead_lettered_with_reason_while_other_groups_flow(stage: Stage) -> None:
    import json

    bad = {
        "not-json": "{not json",
        "wrong-envelope": json.dumps({"task": "http", "payload": [1, 2]}),
        "extra-key": json.dumps({"task": "http", "payload": {}, "colour": "red"}),
        "unknown-task": json.dumps({"task": "fax", "payload": {}}),
        "bad-host": json.dumps({"task": "http", "payload": {"method": "GET", "url": "https://evil.example.org/x"}}),
        "missing-url": json.dumps({"task": "http", "payload": {"method": "GET"}}),
        "too-big": json.dumps(
            {"task": "http", "payload": {"method": "GET", "url": "http://127.0.0.1/ok", "data": "x" * 300_000}}
        ),
    }
    jobs = []
    for name, body in bad.items():
        jobs.append((body, f"bad-{name}", name))
        jobs.append((http_job("/ok", f"bad-{name}", 1), f"bad-{name}", f"{name}-after"))
    jobs += [(http_job("/ok", f"good{i % 3}", i), f"good{i % 3}", f"good-{i}") for i in range(30)]
    stage.extra_env["MAX_MESSAGE_BYTES"] = "262144"
    for body, group, job_id in jobs:
        if len(body) > 250_000:  # SQS itself refuses bodies over 256 KiB: lower the limit to exercise ours
            stage.extra_env["MAX_MESSAGE_BYTES"] = "100000"
    jobs = [(b if len(b) < 250_000 else b[:200_000] + '"}}', g, i) for b, g, i in jobs]
    stage.enqueue(jobs)
    stage.drain()
    dlq = _reasons(stage)
    assert set(dlq) == set(bad)
    assert "not valid JSON" in dlq["not-json"]["reason"]
    assert "payload" in dlq["wrong-envelope"]["reason"]
    assert "colour" in dlq["extra-key"]["reason"]
    assert "unknown task 'fax'" in dlq["unknown-task"]["reason"]
    assert "not in ALLOWED_HOSTS" in dlq["bad-host"]["reason"]
    assert "url" in dlq["missing-url"]["reason"]
    assert "limit" in dlq["too-big"]["reason"]
    assert {d["attempts"] for d in dlq.values()} == {"0"}
    succeeded = stage.api.successes_by_key()
    assert all(succeeded[f"good-{i}"] == 1 for i in range(30))
    assert all(succeeded[f"{name}-after"] == 1 for name in bad)
    assert stage.depth() == 0


def test_concurrency_limit_caps_groups_in_flight(stage: Stage) -> None:
    from throttler.invoker import InProcessInvoker

    stage.set_quotas(second=20, minute=600, concurrency=2)
    stage.enqueue([(http_job("/ok", f"g{i % 6}", i), f"g{i % 6}", f"k-{i}") for i in range(36)])
    worker = stage.worker()
    groups_per_batch: list[int] = []

    def watch(request: dict) -> dict:
        groups_per_batch.append(len({j["group"] for j in request["jobs"]}))
        return worker.run_batch(request)

    stage.make_run(invoker=InProcessInvoker(watch)).run(stage.clock.now() + 57)
    assert groups_per_batch and max(groups_per_batch) <= 2
    assert len(stage.api.successes_by_key()) == 36


def test_rate_limit_headers_tighten_pacing_before_a_429(stage: Stage) -> None:
    # The API says: 1 call left, count resets in 10 s. Nothing more may go before then.
    stage.enqueue([(http_job("/remaining/1/10", "h", 0), "h", "h-0")]
                  + [(http_job("/ok", f"o{i % 3}", i), f"o{i % 3}", f"ho-{i}") for i in range(30)])
    stage.run(30)
    first = stage.api.calls[0]
    window = [c for c in stage.api.calls[1:] if c.at < first.at + 10]
    assert len(window) <= 1
    assert stage.api.violations == 0 and [c.status for c in stage.api.calls].count(429) == 0


def test_pulls_only_what_it_is_about_to_dispatch_and_releases_the_rest(stage: Stage) -> None:
    stage.set_quotas(second=2)
    stage.api.tiers = [(1, 2)]
    stage.enqueue([(http_job("/ok", f"g{i % 20}", i), f"g{i % 20}", f"p-{i}") for i in range(100)])
    summary = stage.run(10)
    assert 15 <= summary.succeeded <= 21
    assert summary.received <= summary.succeeded + 20  # a few seconds ahead, not the whole backlog
    stage.advance(0.01)
    attrs = stage.sqs.get_queue_attributes(QueueUrl=stage.env["JOBS_QUEUE_URL"],
                                           AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert int(attrs["ApproximateNumberOfMessages"]) == 100 - summary.succeeded  # released, none hidden
