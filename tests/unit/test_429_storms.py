"""Promise 4 under a storm of 429s (found by the reliability review): every pause costs a waiting job a receive,
and SQS moves a message to the DLQ at its 1,000th, so 429s in a row are counted across runs and from the
fourth on every pause lasts at least a backoff doubling to 30 minutes, whatever Retry-After says."""

from __future__ import annotations

from throttler.core.pacing import ApiState, Meter
from throttler.dispatch.control import STORM_AFTER, STORM_MAX_S, Pauses
from throttler.store.base import ThrottleSignal


def test_the_streak_of_429s_survives_the_run_in_the_stages_meter() -> None:
    meter = Meter()
    for at in (1.0, 2.0, 3.0):
        meter.api.note_429(at)
    meter.api.note_429(3.0)  # the same 429 seen twice counts once
    again = Meter.from_json(meter.to_json())
    assert again.api.streak == 3 and again.api.streak_at == 3.0
    assert ApiState.from_data(ApiState().to_data()).streak == 0


def test_a_short_retry_after_is_obeyed_until_the_storm_then_the_pause_grows_to_half_an_hour() -> None:
    pauses = Pauses()
    assert pauses.on_429(ThrottleSignal(100.0, 1.0, "b"), None, streak=1) == 101.0
    lengths = [Pauses().on_429(ThrottleSignal(0.0, 1.0, "b"), None, streak=n) for n in range(STORM_AFTER, STORM_AFTER + 12)]
    assert lengths[0] >= 5.0 and lengths == sorted(lengths)
    assert lengths[-1] == STORM_MAX_S
    # 14 days of uninterrupted 429s at one receive per pause stay far below maxReceiveCount (1,000).
    assert 14 * 86400 / STORM_MAX_S < 1000


def test_a_new_run_reads_the_streak_with_the_shared_429_record() -> None:
    from throttler.store.base import Control

    control = Control(quotas=None, last_good=None, pause_until=None, pause_reason=None, throttle=ThrottleSignal(1000.0, 1.0, "b"))
    pauses = Pauses()
    pauses.from_control(control, now=1000.5, auto_window_s=None, streak=12)
    assert pauses.until(1000.5) is not None and pauses.until(1000.5) >= 1000.0 + 5 * 2 ** (12 - STORM_AFTER) - 1e-6
