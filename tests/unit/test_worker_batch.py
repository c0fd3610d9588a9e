"""The worker's batch state machine (promises 3 and 6): slots, chains, a 429 stops every later call."""

from __future__ import annotations

from itertools import pairwise

from throttler.core.outcome import JobResult, Outcome
from throttler.core.protocol import BatchRequest, JobSpec
from throttler.store.base import ThrottleSignal
from throttler.worker.batch import PAUSE_LOOK_EVERY_S, RECORD_EVERY_S, WATCH_EVERY_S, BatchExecution


def spec(job: str, group: str, at: float, tol: float = 0.002, key: str | None = None) -> JobSpec:
    return JobSpec(job, group, "{}", at, at + tol, key)


def request(
    *jobs: JobSpec, watch: tuple[str, ...] = (), key_scoped: bool = False, watch_throttle: bool = False
) -> BatchRequest:
    return BatchRequest(
        "b1", "run", tuple(jobs), watch, planned_at=0.0, key_scoped_429=key_scoped, watch_throttle=watch_throttle
    )


def ok(job: str, at: float) -> JobResult:
    return JobResult(job, Outcome.SUCCEEDED, sent_at=at, duration_s=0.01)


def test_each_job_starts_inside_its_slot_and_a_group_waits_for_its_previous_job() -> None:
    ex = BatchExecution(request(spec("a1", "a", 1.0), spec("a2", "a", 1.1), spec("b1", "b", 1.05)))
    step = ex.step(0.5)
    assert step.start == [] and step.wake_at == 1.0
    assert [s.id for s in ex.step(1.0).start] == ["a1"]
    assert [s.id for s in ex.step(1.05).start] == ["b1"]
    assert ex.step(1.1).start == []  # a1 still running: a2 may not start
    ex.on_result(ok("a1", 1.0), 1.101)
    assert [s.id for s in ex.step(1.101).start] == ["a2"]


def test_a_job_that_cannot_start_in_its_slot_is_skipped_and_its_group_stops() -> None:
    ex = BatchExecution(request(spec("a1", "a", 1.0), spec("a2", "a", 2.0)))
    step = ex.step(1.5)  # woke too late
    assert step.start == [] and step.finished
    results = {r.job_id: r for r in ex.ordered_results()}
    assert results["a1"].outcome is Outcome.SKIPPED and results["a1"].reason == "missed its slot"
    assert results["a2"].outcome is Outcome.SKIPPED


def test_a_429_stops_every_later_call_of_the_batch_at_once_and_is_published() -> None:
    # Issue 11, break 2: the 429 must be seen before the next slot's call, even one 1 ms later.
    ex = BatchExecution(request(spec("a1", "a", 1.0), spec("b1", "b", 1.001), spec("c1", "c", 1.2)))
    ex.step(1.0)
    ex.on_result(JobResult("a1", Outcome.THROTTLED, retry_after_s=30, sent_at=1.0), 1.0005)
    step = ex.step(1.001)
    assert step.start == [] and [s.retry_after_s for s in step.publish] == [30]
    assert all(r.outcome is not Outcome.SUCCEEDED for r in ex.ordered_results())
    assert ex.done


def test_two_keys_429s_met_before_one_step_are_both_published() -> None:
    # Found by the review of the key-scoped record: the batch kept one 429 to publish, the last one met, so a
    # key's 429 (or the stage's) answered in the same instant as another key's never reached the record.
    ex = BatchExecution(request(spec("a1", "a", 1.0, key="A"), spec("b1", "b", 1.0, key="B"), key_scoped=True))
    ex.step(1.0)
    ex.on_result(JobResult("a1", Outcome.THROTTLED, retry_after_s=30, sent_at=1.0), 1.05)
    ex.on_result(JobResult("b1", Outcome.THROTTLED, retry_after_s=2, sent_at=1.0), 1.05)
    assert [(s.key, s.retry_after_s) for s in ex.step(1.05).publish] == [("A", 30), ("B", 2)]
    assert ex.step(1.06).publish == []


def test_a_429_published_by_another_batch_stops_this_one_at_its_next_look() -> None:
    ex = BatchExecution(request(spec("a1", "a", 1.0), spec("b1", "b", 1.5), spec("c1", "c", 2.5), watch=("b0",)))
    step = ex.step(1.0)
    assert step.poll_watch and step.start == []  # look before the first call
    ex.on_watch([], set(), 1.0)
    assert [s.id for s in ex.step(1.0).start] == ["a1"]
    ex.on_result(ok("a1", 1.0), 1.02)
    assert [s.id for s in ex.step(1.5).start] == ["b1"]  # the last look is recent enough
    ex.on_result(ok("b1", 1.5), 1.52)
    step = ex.step(2.5)
    assert step.poll_watch  # more than WATCH_EVERY_S since the last look
    ex.on_watch([ThrottleSignal(2.0, 10.0, "b0")], set(), 2.5)
    step = ex.step(2.5)
    assert step.start == [] and ex.results["c1"].outcome is Outcome.SKIPPED
    assert WATCH_EVERY_S < 1.0


def test_watching_stops_once_the_watched_batches_are_final() -> None:
    ex = BatchExecution(request(spec("a1", "a", 1.0), spec("b1", "b", 3.0), watch=("b0",)))
    assert ex.step(1.0).poll_watch
    ex.on_watch([], {"b0"}, 1.0)
    ex.step(1.0)
    ex.on_result(ok("a1", 1.0), 1.01)
    assert not ex.step(3.0).poll_watch and ex.watched_final == {"b0"}


def looks(ex: BatchExecution, until: float, step_s: float = 0.05) -> list[float]:
    """Drive the batch (every call answers at once) and return when it looked at the shared record."""
    seen, now = [], 0.0
    while now <= until and not ex.done:
        step = ex.step(now)
        if step.poll_watch:
            seen.append(round(now, 3))
            ex.on_watch([], set(), now)
            continue
        for started in step.start:
            ex.on_result(ok(started.id, now), now)
        now = round(now + step_s, 6)
    return seen


def test_a_long_batch_with_nothing_left_to_watch_looks_only_often_enough_for_a_pause() -> None:
    # Issue 12: these looks were a tenth of a request per job at 10 calls/s. With no earlier batch unsettled no
    # other 429 can come before its calls end (later batches' slots follow its own), so it looks for an
    # operator's pause only: 2 s for the run to mirror it + PAUSE_LOOK_EVERY_S stays within SPEC's 5 s.
    jobs = [spec(f"j{i}", f"g{i}", 1.0 + i * 0.1, tol=0.06) for i in range(40)]
    seen = looks(BatchExecution(request(*jobs, watch_throttle=True)), 6.0)
    assert seen and all(b - a >= PAUSE_LOOK_EVERY_S - 0.06 for a, b in pairwise(seen))
    assert all(b - a <= PAUSE_LOOK_EVERY_S + 0.06 for a, b in pairwise(seen))
    assert 2.0 + PAUSE_LOOK_EVERY_S + 0.1 < 5.0
    # While an earlier batch may still meet a 429, it looks every WATCH_EVERY_S as before.
    watching = looks(BatchExecution(request(*jobs, watch=("b0",), watch_throttle=True)), 6.0)
    assert all(b - a <= WATCH_EVERY_S + 0.06 for a, b in pairwise(watching))
    assert len(watching) > len(seen)
    # A short batch with nothing to watch does not look at all.
    assert looks(BatchExecution(request(*jobs[:5])), 6.0) == []


def test_a_key_scoped_429_stops_only_that_key() -> None:
    ex = BatchExecution(
        request(spec("a1", "a", 1.0, key="k1"), spec("a2", "b", 1.2, key="k1"), spec("c1", "c", 1.3, key="k2"), key_scoped=True)
    )
    ex.step(1.0)
    ex.on_result(JobResult("a1", Outcome.THROTTLED, sent_at=1.0), 1.01)
    assert ex.step(1.2).start == []
    assert [s.id for s in ex.step(1.3).start] == ["c1"]


def test_successes_are_recorded_within_a_second_and_all_before_the_end() -> None:
    ex = BatchExecution(request(spec("a1", "a", 1.0), spec("b1", "b", 2.5)))
    ex.step(1.0)
    ex.on_result(ok("a1", 1.0), 1.01)
    step = ex.step(1.02)
    assert step.record is None and step.wake_at is not None and step.wake_at <= 1.01 + RECORD_EVERY_S
    step = ex.step(1.01 + RECORD_EVERY_S)
    assert step.record == (["a1"], [])
    ex.step(2.5)
    ex.on_result(JobResult("b1", Outcome.RETRYABLE, "http 503", sent_at=2.5), 2.6)
    assert ex.final_record() == ([], ["b1"])


def test_the_record_keeps_the_429_that_ends_last_and_the_stages_for_two_keys() -> None:
    # Review rev9: two 429s in one batch (Retry-After 1 s, then 30 s), its answer lost and its publishes refused:
    # the record kept the first, and the run called again 1.5 s later.
    jobs = [spec("a1", "a", 1.0, key="A"), spec("b1", "b", 1.0, key="A"), spec("c1", "c", 1.0, key="B")]
    ex = BatchExecution(request(*jobs, key_scoped=True))
    assert {s.id for s in ex.step(1.0).start} == {"a1", "b1", "c1"}
    ex.on_result(JobResult("a1", Outcome.THROTTLED, retry_after_s=1, sent_at=1.0), 1.2)
    ex.on_result(JobResult("b1", Outcome.THROTTLED, retry_after_s=30, sent_at=1.0), 1.3)
    assert ex.met_429 == ThrottleSignal(1.3, 30.0, "b1", "A")
    ex.on_result(JobResult("c1", Outcome.THROTTLED, retry_after_s=5, sent_at=1.0), 1.4)  # another key's
    assert ex.met_429 == ThrottleSignal(1.3, 30.0, "b1", None)  # the record pauses the stage
