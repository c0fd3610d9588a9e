"""What a run takes from the shared 429 record: the stage's signal and each key's, each on its own."""

from __future__ import annotations

from throttler.dispatch.control import Pauses
from throttler.store.base import Control, ThrottleSignal


def control(stage: ThrottleSignal | None = None, **keys: ThrottleSignal) -> Control:
    return Control(None, None, None, None, stage, key_throttles=keys)


def test_a_stage_429_is_applied_even_after_a_key_429_dated_later() -> None:
    # Found by the review of the key-scoped record: a key's 429 dated a little ahead (a worker's clock within
    # the allowed skew) made the run skip the stage's 429 read after it; dispatch went on for up to 6 s.
    pauses = Pauses()
    pauses.from_control(control(Z=ThrottleSignal(101.0, 2.0, "bz", "Z")), 100.2, None)
    assert pauses.key_paused(100.2) == {"Z": 103.0} and pauses.until(100.2) is None
    pauses.from_control(control(ThrottleSignal(100.1, 30.0, "bs"), Z=ThrottleSignal(101.0, 2.0, "bz", "Z")), 100.3, None)
    assert pauses.until(100.3) == 130.1


def test_each_keys_signal_is_applied_once_and_resume_forgets_them_all() -> None:
    pauses = Pauses()
    both = control(A=ThrottleSignal(10.0, 30.0, "b1", "A"), B=ThrottleSignal(10.5, 2.0, "b2", "B"))
    pauses.from_control(both, 11.0, None)
    assert pauses.key_paused(11.0) == {"A": 40.0, "B": 12.5}
    pauses.from_control(both, 11.5, None)
    assert pauses.consecutive_429 == 2  # read again: not counted again
    pauses.from_control(control(), 12.0, None)  # `resume` deleted the record
    assert pauses.key_paused(12.0) == {} and pauses.until(12.0) is None


def test_an_empty_record_lifts_only_pauses_read_from_it_while_in_force() -> None:
    # Review rev8: a worker's publish was refused (three times); the run paused from its answer, then read the
    # empty record, took it for a `resume` and dispatched again within the Retry-After.
    pauses = Pauses()
    pauses.on_429(ThrottleSignal(10.0, 30.0, ""), None)  # from an answer: never in the record
    pauses.from_control(control(), 11.0, None)
    assert pauses.until(11.0) == 40.0
    pauses.from_control(control(ThrottleSignal(12.0, 5.0, "b2")), 12.5, None)  # a later, shorter one, read
    pauses.from_control(control(), 13.0, None)  # it left while in force: `resume`, which lifts every 429
    assert pauses.until(13.0) is None
    pauses.from_control(control(ThrottleSignal(20.0, 1.0, "b3")), 20.5, None)
    pauses.on_429(ThrottleSignal(30.0, 10.0, ""), None)  # from an answer, after the read one had ended
    # Emptied when nothing read from it was in force: a `resume` then looks like a publish that never landed, and
    # the run keeps the 429 it knows (the safe way; README, "Deviations").
    pauses.from_control(control(), 31.0, None)
    assert pauses.until(31.0) == 40.0


def test_a_signal_that_replaced_one_dated_later_is_applied_and_resume_lifts_it() -> None:
    # Review rev9: a worker whose clock ran 3 s ahead published a 429 (Retry-After 1 s); a real one dated earlier
    # (Retry-After 300 s) took its place in the record. The run applied only signals dated later than the last it
    # read: it never paused for the second, and an operator's `resume` then did not lift the answer's copy of it.
    pauses = Pauses()
    pauses.from_control(control(ThrottleSignal(103.0, 1.0, "b1")), 100.6, None)
    pauses.from_control(control(ThrottleSignal(100.5, 300.0, "b2")), 101.0, None)
    assert pauses.until(104.5) == 400.5
    pauses.from_control(control(), 110.0, None)  # `resume`
    assert pauses.until(110.0) is None


def test_a_key_signal_forgotten_after_its_end_is_not_a_resume() -> None:
    # Review rev9: the run forgets a key's ended signal (its end + 10 s) while the key's backoff still runs; the
    # empty record then lifted every pause, a stage 429 learnt from an answer (Retry-After 60 s) too.
    pauses = Pauses()
    pauses.from_worker(ThrottleSignal(0.0, 60.0, "b0"), None)
    pauses.from_control(control(A=ThrottleSignal(1.0, None, "b1", "A")), 1.1, None, streak=6)
    pauses.from_control(control(), 11.5, None, streak=6)
    assert pauses.until(11.5) == 60.0 and "A" in pauses.key_paused(11.5)


def test_429s_learnt_from_workers_that_the_record_lacks_are_the_runs_to_publish() -> None:
    pauses = Pauses()
    published, refused = ThrottleSignal(5.0, 30.0, "b1"), ThrottleSignal(6.0, 20.0, "b2", "A")
    pauses.from_worker(published, None)
    pauses.from_worker(refused, None)
    pauses.from_control(control(published), 6.5, None)
    assert pauses.unpublished() == [refused] and pauses.unpublished() == []  # compared once


def test_a_429_that_resume_lifted_is_not_written_back() -> None:
    # Review rev10: the worker's answer came after the run had read its published 429; the next read found the
    # record empty (`resume`) and lifted it, and the run then wrote its own copy back, re-creating the pause.
    pauses = Pauses()
    signal = ThrottleSignal(5.0, 60.0, "b1")
    pauses.from_control(control(signal), 5.5, None)
    pauses.from_worker(signal, None)  # the answer, after the read
    pauses.from_control(control(), 7.0, None)  # `resume`
    assert pauses.until(7.0) is None and pauses.unpublished() == []
