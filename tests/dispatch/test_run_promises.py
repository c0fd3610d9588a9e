"""The throttler and the worker end to end in virtual time, on the in-memory SQS model and state table
(the same scenarios run on moto in tests/integration): each test names the SPEC promise it proves."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from tests.conftest import World, job_body
from throttler.core.protocol import BatchRequest
from throttler.dispatch.timing import CONTROL_REFRESH_S, QUIET_REFRESH_S
from throttler.store.base import Control, LeaseState, OpenBatch
from throttler.store.memory import MemoryStateStore
from throttler_tools.fakeapi import max_in_window

MakeWorld = Callable[..., World]


def reasons(world: World) -> dict[str, dict[str, object]]:
    return {
        d.job_id or d.message_id: {"reason": d.error_reason, "attempts": d.attempts, "group": d.group, "body": d.body}
        for d in world.dead_letters()
    }


def test_ordering_kept_across_interleaved_groups_with_a_failure_in_one(make_world: MakeWorld) -> None:
    world = make_world()
    jobs = []
    for seq in range(6):
        for group in ("a", "b", "c"):
            path = "/status/400" if (group == "b" and seq == 2) else "/ok"
            jobs.append((job_body(path, group, seq), group, f"{group}-{seq}"))
    world.enqueue(jobs)
    assert world.drain()
    assert world.api.order_violations == 0
    for group in ("a", "b", "c"):
        assert [c.seq for c in world.api.calls if c.group == group] == list(range(6))
    assert [d["reason"] for d in reasons(world).values()] == ["http 400"]


def test_nothing_lost_every_job_succeeds_once(make_world: MakeWorld) -> None:
    world = make_world()
    world.enqueue([(job_body("/ok", f"g{i % 7}", i), f"g{i % 7}", f"job-{i}") for i in range(120)])
    assert world.drain()
    assert world.dead_letters() == []
    assert world.api.successes_by_key() == {f"job-{i}": 1 for i in range(120)}
    assert world.api.violations == 0


def test_permanent_failure_dead_lettered_at_once_with_reason_attempts_body_and_group(make_world: MakeWorld) -> None:
    world = make_world()
    bad_body = job_body("/status/404", "p", 0)
    world.enqueue([(bad_body, "p", "perm-0"), (job_body("/ok", "p", 1), "p", "perm-1")])
    assert world.drain()
    assert reasons(world) == {"perm-0": {"reason": "http 404", "attempts": 1, "group": "p", "body": bad_body}}
    assert [c.seq for c in world.api.calls] == [0, 1]  # called once; the group then moved on


def test_a_redirect_is_a_permanent_failure_and_is_not_followed(make_world: MakeWorld) -> None:
    world = make_world()
    world.enqueue([(job_body("/status/302", "r", 0), "r", "redirect-0")])
    assert world.drain()
    assert reasons(world)["redirect-0"]["reason"] == "http 3xx redirect not followed"


def test_retryable_failure_retried_then_succeeds_in_order(make_world: MakeWorld) -> None:
    world = make_world()
    world.enqueue([(job_body("/flaky/2", "r", 0), "r", "r-0")] + [(job_body("/ok", "r", i), "r", f"r-{i}") for i in (1, 2, 3)])
    assert world.drain()
    assert [c.seq for c in world.api.calls] == [0, 0, 0, 1, 2, 3]
    assert [c.status for c in world.api.calls][:3] == [500, 500, 200]
    assert world.dead_letters() == []


def test_retryable_failure_dead_lettered_after_three_real_attempts(make_world: MakeWorld) -> None:
    world = make_world()
    world.enqueue([(job_body("/status/503", "x", 0), "x", "x-0"), (job_body("/ok", "x", 1), "x", "x-1")])
    assert world.drain()
    dlq = reasons(world)
    assert dlq["x-0"]["attempts"] == 3 and "http 503" in str(dlq["x-0"]["reason"])
    assert [c.seq for c in world.api.calls] == [0, 0, 0, 1]


def test_429_with_retry_after_pauses_every_group_and_spends_no_attempt(make_world: MakeWorld) -> None:
    world = make_world()
    jobs = [(job_body("/throttle/30", "t", 0), "t", "t-0")]
    jobs += [(job_body("/ok", f"o{i % 4}", i), f"o{i % 4}", f"o-{i}") for i in range(60)]
    world.enqueue(jobs)
    assert world.drain()
    throttled = [c for c in world.api.calls if c.status == 429]
    assert len(throttled) == 1
    paused_from = throttled[0].at
    # No call leaves more than a second after the 429 reached the worker (calls already sent may finish).
    assert not [c for c in world.api.calls if paused_from + 1.0 < c.at < paused_from + 30]
    assert world.store.get_attempts(["t-0"]) == {"t-0": 0}
    assert world.api.successes_by_key()["t-0"] == 1 and world.dead_letters() == []


def test_429_with_http_date_retry_after_pauses_until_that_date(make_world: MakeWorld) -> None:
    world = make_world()
    world.enqueue([(job_body("/throttle/date/20", "d", 0), "d", "d-0"), (job_body("/ok", "e", 0), "e", "e-0")])
    assert world.drain()
    first = world.api.calls[0]
    assert first.status == 429
    assert all(c.at >= first.at + 19 or c.at <= first.at + 1.0 for c in world.api.calls[1:])


def test_quota_never_exceeded_with_two_overlapping_runs(make_world: MakeWorld) -> None:
    """Two runs that both think they hold the lease (a stuck run whose lease expired) still share one
    usage item: its conditional writes keep every window within its limit."""
    world = make_world(quotas={"second": 4, "minute": 60, "margin_ms": 50}, api_tiers=[(1, 4), (60, 60)])

    class LeaseAlwaysGranted(MemoryStateStore):
        def acquire_lease(self, owner: str, now: float, ttl_s: float, runs_until: float | None = None) -> LeaseState:
            return LeaseState(owner, now + ttl_s)

        def renew_lease(self, owner: str, now: float, ttl_s: float, runs_until: float | None = None) -> bool:
            return True

    shared = world.store
    assert isinstance(shared, MemoryStateStore)
    shared.__class__ = LeaseAlwaysGranted
    shared.read_control_original = shared.read_control  # type: ignore[attr-defined]
    world.enqueue([(job_body("/ok", f"g{i % 10}", i), f"g{i % 10}", f"j-{i}") for i in range(90)])
    runs = [world.start_run(), world.start_run()]
    for run in runs:
        run.lease.check = lambda lease, now: (True, None)  # type: ignore[method-assign]
    world.run_for(60)
    assert all(r.summary.dispatched > 0 or r.outbox.tally.dispatched > 0 for r in runs)
    assert sum(r.usage.conflicts for r in runs) > 0  # they really raced
    assert world.api.violations == 0 and world.api.max_in_window(1) <= 4 and world.api.max_in_window(60) <= 60


def test_a_run_plans_its_calls_after_the_last_slot_of_batches_another_run_left_in_flight(make_world: MakeWorld) -> None:
    """Issue 12: a batch with no earlier batch left to watch looks at the shared record only for a pause. That
    is safe because no later batch's 429 can come before its calls end: every batch's slots follow the last
    slot of each batch committed before it, its own run's (planned in order) or another run's (here: the
    run before it handed over with a batch whose calls go on for 3 s more, on a stage with room to spare)."""
    world = make_world(quotas={"second": 40, "margin_ms": 10}, api_tiers=[(1, 40)])
    now = world.loop.now
    assert world.store.commit_usage(0, None, {}, {"old": OpenBatch("previous-run", now + 40.0, now + 3.0)}, [])
    firsts: list[float] = []
    setup = world.workers.setup

    def capture(request: BatchRequest) -> object:
        firsts.append(min(j.not_before for j in request.jobs))
        return setup(request)

    world.workers.setup = capture  # type: ignore[assignment]
    world.enqueue([(job_body("/ok", f"g{i}", 0), f"g{i}", f"j-{i}") for i in range(20)])
    world.start_run()
    world.run_for(20)
    assert firsts and min(firsts) > now + 3.0
    assert sorted(world.api.successes_by_key()) == sorted(f"j-{i}" for i in range(20))


def test_hand_overs_cost_no_recovery_of_batches_their_own_run_settled(make_world: MakeWorld) -> None:
    """Issue 12: a run that hands over settles its last batches itself; its successor, which loaded them as
    open, checks the open list before it recovers them, instead of writing success records for each."""
    world = make_world(quotas={"second": 10, "margin_ms": 10}, api_tiers=[(1, 10)])
    marked: list[str] = []
    mark_done = world.store.mark_done

    def spy(job_ids: Sequence[str], ttl_at: float) -> None:
        marked.extend(job_ids)
        mark_done(job_ids, ttl_at)

    world.store.mark_done = spy  # type: ignore[method-assign]
    world.enqueue([(job_body("/ok", f"g{i % 20}", i), f"g{i % 20}", f"j-{i}") for i in range(4500)])
    world.start_schedule()
    world.run_for(430)
    assert len(world.summaries) >= 3 and any(s.handed_over_to for s in world.summaries)
    assert marked == []
    assert world.api.violations == 0 and all(n == 1 for n in world.api.successes_by_key().values())


def test_messages_received_again_are_looked_up_in_one_read_per_top_up(make_world: MakeWorld) -> None:
    """Issue 12: a run that takes over receives what its predecessor released; whether those jobs already
    succeeded is one read for the lot, not one per receive of ten."""
    world = make_world(quotas={"second": 10, "margin_ms": 10}, api_tiers=[(1, 10)])
    world.enqueue([(job_body("/ok", f"g{i}", 0), f"g{i}", f"j-{i}") for i in range(45)])
    seen = []
    while batch := world.queue.receive(10, 1):
        seen += batch  # a run that died (or released them): every message comes back with a receive count of 2
    assert len(seen) == 45
    world.run_for(2)
    lookups: list[int] = []
    done_ids = world.store.done_ids

    def spy(job_ids: Sequence[str]) -> set[str]:
        lookups.append(len(job_ids))
        return done_ids(job_ids)

    world.store.done_ids = spy  # type: ignore[method-assign]
    world.start_run()
    world.run_for(15)
    assert lookups == [45]
    assert sorted(world.api.successes_by_key()) == sorted(f"j-{i}" for i in range(45))


def test_a_second_run_waits_for_the_lease_then_takes_over(make_world: MakeWorld) -> None:
    world = make_world()
    assert world.store.acquire_lease("someone-else", world.loop.now, 30).owner == "someone-else"
    world.enqueue([(job_body("/ok", "a", 0), "a", "a-0")])
    run = world.start_run()
    world.run_for(10)
    assert world.api.calls == [] and run.phase.value == "wait_lease"
    world.run_for(40)  # the other holder never hands over: its lease expires after 30 s
    assert world.api.successes_by_key() == {"a-0": 1}


def test_quota_change_mid_run_takes_effect_within_five_seconds(make_world: MakeWorld) -> None:
    world = make_world(quotas={"second": 20, "minute": 600, "margin_ms": 50})
    world.enqueue([(job_body("/ok", f"g{i % 10}", i), f"g{i % 10}", f"q-{i}") for i in range(300)])
    changed_at: list[float] = []

    def lower_quota(call: object) -> None:  # the operator edits the item while the run is going
        if len(world.api.calls) == 60 and not changed_at:
            world.store.put_quotas({"second": 2, "minute": 600, "margin_ms": 50})
            changed_at.append(world.loop.now)

    world.api.on_call = lower_quota
    world.start_run()
    world.run_for(60)
    after = [c.at for c in world.api.calls if c.at > changed_at[0] + 5]
    assert len(after) > 20
    assert max_in_window(after, 1) <= 2
    before = [c.at for c in world.api.calls if c.at <= changed_at[0]]
    assert max_in_window(before, 1) > 2  # it was faster before


def spent_minute_world(make_world: MakeWorld) -> World:
    """A minute tier spent in 30 s of bursts at the second tier: the next 30 s the stage cannot send."""
    world = make_world(quotas={"second": 20, "minute": 600, "margin_ms": 10}, api_tiers=[])
    world.enqueue([(job_body("/ok", f"g{i % 100}", i), f"g{i % 100}", f"w-{i}") for i in range(1500)])
    return world


def test_a_long_wait_reads_the_configuration_less_often_and_a_quota_raise_still_counts_within_five_seconds(
    make_world: MakeWorld,
) -> None:
    """Issue 12: while the stage cannot send and nothing is in flight, the run reads the configuration every
    QUIET_REFRESH_S instead of every CONTROL_REFRESH_S; an operator's raise still takes effect within 5 s of
    the write (SPEC)."""
    world = spent_minute_world(make_world)
    reads: list[float] = []
    read_control = world.store.read_control

    def count_reads() -> Control:
        reads.append(world.loop.now)
        return read_control()

    world.store.read_control = count_reads  # type: ignore[method-assign]
    start = world.loop.now
    world.start_run()
    world.run_for(50)
    assert len(world.api.calls) == 600  # the minute went in bursts; the rest waits for it
    waiting = [t for t in reads if start + 36 <= t < start + 50]
    assert len(waiting) <= 14 / QUIET_REFRESH_S + 1 < 14 / CONTROL_REFRESH_S
    world.store.put_quotas({"second": 20, "minute": 1200, "margin_ms": 10})
    raised_at = world.loop.now
    world.run_for(10)
    assert min(c.at for c in world.api.calls[600:]) <= raised_at + 5.0
    assert world.api.violations == 0


def test_messages_held_through_a_spent_window_need_no_visibility_change(make_world: MakeWorld) -> None:
    """Issue 12: a message is received invisible for as long as the stage may take to send what is held
    (a spent window counted), so the wait for the next minute costs next to no ChangeMessageVisibility."""
    world = spent_minute_world(make_world)
    changes: list[int] = []
    change_visibility = world.queue.change_visibility

    def count_changes(changed: Sequence[tuple[str, float]]) -> list[str]:
        changes.append(len(changed))
        return change_visibility(changed)

    world.queue.change_visibility = count_changes  # type: ignore[method-assign]
    world.start_run()
    world.run_for(80)
    assert 600 < len(world.api.calls) <= 1200 and world.api.violations == 0
    assert sum(changes) <= 5  # 61 messages when the wait counted the long-run rate only


def test_crash_after_successful_calls_before_delete_does_not_call_the_api_again(make_world: MakeWorld) -> None:
    world = make_world()
    world.enqueue([(job_body("/ok", f"c{i % 3}", i), f"c{i % 3}", f"c-{i}") for i in range(12)])
    run = world.start_run()

    def die(*args: object, **kwargs: object) -> list[str]:
        raise RuntimeError("process died before deleting")

    run.queue = type("Dying", (), {"__getattr__": lambda self, name: getattr(world.queue, name), "delete": die})()  # type: ignore[assignment]
    run.outbox.queue = run.queue  # type: ignore[assignment]
    run.intake.queue = run.queue  # type: ignore[assignment]
    world.run_for(60)
    assert run.owner in world.crashed and len(world.api.calls) >= 1
    assert world.drain()
    assert world.api.successes_by_key() == {f"c-{i}": 1 for i in range(12)}


def test_bad_messages_dead_lettered_at_once_with_reason_while_other_groups_flow(make_world: MakeWorld) -> None:
    world = make_world(max_message_bytes=100_000)
    bad = {
        "not-json": "{not json",
        "wrong-envelope": json.dumps({"task": "http", "payload": [1, 2]}),
        "extra-key": json.dumps({"task": "http", "payload": {}, "colour": "red"}),
        "unknown-task": json.dumps({"task": "fax", "payload": {}}),
        "bad-host": json.dumps({"task": "http", "payload": {"method": "GET", "url": "https://evil.example.org/x"}}),
        "backslash": json.dumps({"task": "http", "payload": {"method": "GET", "url": "http://127.0.0.1:1\\@evil.example.org/x"}}),
        "crlf-header": json.dumps(
            {"task": "http", "payload": {"method": "GET", "url": "http://127.0.0.1/ok", "headers": {"X-A": "a\r\nX-B: b"}}}
        ),
        "host-header": json.dumps(
            {"task": "http", "payload": {"method": "GET", "url": "http://127.0.0.1/ok", "headers": {"Host": "x"}}}
        ),
        "missing-url": json.dumps({"task": "http", "payload": {"method": "GET"}}),
        "too-big": json.dumps(
            {"task": "http", "payload": {"method": "GET", "url": "http://127.0.0.1/ok", "data": "x" * 120_000}}
        ),
        "cost-over-limit": job_body("/ok", cost=100),
    }
    jobs = []
    for name, body in bad.items():
        jobs.append((body, f"bad-{name}", name))
        jobs.append((job_body("/ok", f"bad-{name}", 1), f"bad-{name}", f"{name}-after"))
    jobs += [(job_body("/ok", f"good{i % 3}", i), f"good{i % 3}", f"good-{i}") for i in range(30)]
    world.enqueue(jobs)
    assert world.drain()
    dlq = reasons(world)
    assert set(dlq) == set(bad)
    assert "not valid JSON" in str(dlq["not-json"]["reason"])
    assert "colour" in str(dlq["extra-key"]["reason"]) and "unknown task 'fax'" in str(dlq["unknown-task"]["reason"])
    assert "evil.example.org" in str(dlq["bad-host"]["reason"]) and "backslash" in str(dlq["backslash"]["reason"])
    assert "limit" in str(dlq["too-big"]["reason"]) and "cost 100" in str(dlq["cost-over-limit"]["reason"])
    assert {d["attempts"] for d in dlq.values()} == {0}
    succeeded = world.api.successes_by_key()
    assert all(succeeded[f"good-{i}"] == 1 for i in range(30)) and all(succeeded[f"{n}-after"] == 1 for n in bad)


def test_concurrency_limit_caps_groups_in_flight(make_world: MakeWorld) -> None:
    world = make_world(quotas={"second": 20, "minute": 600, "concurrency": 2, "margin_ms": 50})
    world.enqueue([(job_body("/ok", f"g{i % 6}", i), f"g{i % 6}", f"k-{i}") for i in range(36)])
    sizes: list[int] = []
    invoke = world.workers.invoke

    def watch(request: BatchRequest):  # type: ignore[no-untyped-def]
        sizes.append(len({j.group for j in request.jobs}))
        return invoke(request)

    world.workers.invoke = watch  # type: ignore[method-assign]
    assert world.drain()
    assert sizes and max(sizes) <= 2 and len(world.api.successes_by_key()) == 36


def test_rate_limit_headers_tighten_pacing_before_a_429(make_world: MakeWorld) -> None:
    # The API says: 1 call left, count resets in 10 s. Nothing more may go before then.
    world = make_world()
    world.enqueue(
        [(job_body("/remaining/1/10", "h", 0), "h", "h-0")]
        + [(job_body("/ok", f"o{i % 3}", i), f"o{i % 3}", f"ho-{i}") for i in range(30)]
    )
    world.start_run()
    world.run_for(30)
    first = world.api.calls[0]
    assert len([c for c in world.api.calls[1:] if c.at < first.at + 10]) <= 1
    assert world.api.violations == 0 and [c.status for c in world.api.calls].count(429) == 0


def test_receives_only_what_it_is_about_to_dispatch_and_releases_the_rest(make_world: MakeWorld) -> None:
    world = make_world(quotas={"second": 2, "margin_ms": 50}, api_tiers=[(1, 2)])
    world.enqueue([(job_body("/ok", f"g{i % 20}", i), f"g{i % 20}", f"p-{i}") for i in range(100)])
    world.start_run(budget_s=10)
    world.run_for(12)
    summary = world.summaries[0]
    assert 15 <= summary.succeeded <= 21
    # A few seconds ahead, not the whole backlog: at 2 calls/s the run holds about 20 (a receive brings up to 10).
    assert summary.received <= summary.succeeded + 30
    depth = world.queue.depth()
    assert depth.visible == 100 - summary.succeeded and depth.in_flight == 0  # released, none hidden
