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
