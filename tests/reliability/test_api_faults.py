"""API faults: 5xx, timeouts, connection resets, 429 with and without (or with a malformed) Retry-After,
and responses slower than the worker's timeout. The fake API's session is wrapped so that a call can
fail before it leaves (the API never saw it) or after the API handled it (the answer was lost).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from throttler.dispatcher import BACKOFF_429_S

from tests.conftest import Stage, http_job
from tests.reliability.conftest import (
    STAGE_TIERS,
    Campaign,
    Hook,
    ReservationAudit,
    Rig,
    Scheduler,
    account,
    wall_clock,
)

VICTIM = "x-0"


class NetworkFault(Hook):
    """The first `times` calls of the victim job fail with `error`: `before` the request leaves, or
    `after` the API handled it (its answer is lost; `slow_s` is how long the client waited for it)."""

    def __init__(self, stage: Stage, error: Exception, when: str, times: int = 1, slow_s: float = 0.0):
        self.stage = stage
        self.error = error
        self.when = when
        self.times = times
        self.slow_s = slow_s
        self.injected = 0
        self.lost_answers = 0

    def _hit(self, op: str, kwargs: dict[str, Any]) -> bool:
        return op == "api.request" and kwargs["headers"].get("Idempotency-Key") == VICTIM and self.injected < self.times

    def before(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.when == "before" and self._hit(op, kwargs):
            self.injected += 1
            raise self.error

    def after(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        if self.when == "after" and self._hit(op, kwargs):
            self.injected += 1
            self.lost_answers += 1
            if self.slow_s:
                # The API takes slow_s to answer; the client gives up at its timeout.
                self.stage.clock.sleep(min(self.slow_s, float(kwargs["timeout"])))
            raise self.error


def slow_job(timeout_s: float) -> str:
    body = json.loads(http_job("/ok", "x", 0))
    body["payload"]["timeout"] = timeout_s
    return json.dumps(body)


CONNECT_TIMEOUT = requests.exceptions.ConnectTimeout("injected: connect timed out")
REFUSED = requests.exceptions.ConnectionError("injected: [Errno 111] Connection refused")
RESET = requests.exceptions.ConnectionError("injected: [Errno 104] Connection reset by peer")
READ_TIMEOUT = requests.exceptions.ReadTimeout("injected: read timed out")

# (case, body of the victim job, fault, expected end of the victim: "succeeded" or a DLQ reason)
CASES: list[tuple[str, str, Any, str]] = [
    ("http-500-every-time", http_job("/status/500", "x", 0), None, "attempts exhausted: http 500"),
    ("http-503-twice-then-ok", http_job("/flaky/2", "x", 0), None, "succeeded"),
    ("connect-timeout-never-sent", http_job("/ok", "x", 0),
     lambda s: NetworkFault(s, CONNECT_TIMEOUT, "before"), "succeeded"),
    ("connection-refused-twice", http_job("/ok", "x", 0),
     lambda s: NetworkFault(s, REFUSED, "before", times=2), "succeeded"),
    ("connection-reset-before-send", http_job("/ok", "x", 0),
     lambda s: NetworkFault(s, RESET, "before", times=2), "succeeded"),
    ("connection-reset-answer-lost", http_job("/ok", "x", 0),
     lambda s: NetworkFault(s, RESET, "after"), "succeeded"),
    ("read-timeout-answer-lost", http_job("/ok", "x", 0),
     lambda s: NetworkFault(s, READ_TIMEOUT, "after"), "succeeded"),
    ("slower-than-worker-timeout", slow_job(30),
     lambda s: NetworkFault(s, READ_TIMEOUT, "after", slow_s=60.0), "succeeded"),
    ("429-retry-after-seconds", http_job("/throttle/12", "x", 0), None, "succeeded"),
    ("429-retry-after-http-date", http_job("/throttle/date/9", "x", 0), None, "succeeded"),
    ("429-no-retry-after", http_job("/throttle/none", "x", 0), None, "succeeded"),
    ("429-malformed-retry-after", http_job("/throttle/bad", "x", 0), None, "succeeded"),
]
EXPECTED_PAUSE_S = {  # how long a 429 must stop every group (an HTTP date has whole-second resolution)
    "429-retry-after-seconds": 12.0,
    "429-retry-after-http-date": 8.0,
    "429-no-retry-after": BACKOFF_429_S[0],
    "429-malformed-retry-after": BACKOFF_429_S[0],
}


@pytest.mark.parametrize(("case", "body", "fault", "expected"), [pytest.param(*c, id=c[0]) for c in CASES])
def test_fault_api_errors_end_safely(
    stage: Stage, campaign: Campaign, case: str, body: str, fault: Any, expected: str
) -> None:
    started = wall_clock()
    jobs = [(body, "x", VICTIM)] + [(http_job("/ok", "x", i), "x", f"x-{i}") for i in (1, 2, 3)]
    jobs += [(http_job("/ok", f"g{i % 4}", i // 4), f"g{i % 4}", f"g-{i}") for i in range(24)]
    stage.enqueue(jobs)
    audit = ReservationAudit(stage.clock)
    network = fault(stage) if fault else None

    scheduler = Scheduler(stage)
    scheduler.drain(lambda: Rig(stage, [*([network] if network else []), audit]), gap_s=1.0)

    tally = account(stage, [j[2] for j in jobs], tiers=STAGE_TIERS, audit=audit)
    # A call whose answer was lost may have had its effect: it goes again with the same Idempotency-Key.
    allowed = {VICTIM: network.lost_answers} if network and network.lost_answers else {}
    assert tally.repeated_keys == allowed
    tally.assert_safe(allowed)
    assert audit.unreserved == 0 and scheduler.failures == []
    if network:
        assert network.injected == network.times
    victim_calls = [c for c in stage.api.calls if c.key == VICTIM]
    if expected == "succeeded":
        assert VICTIM not in tally.dlq and stage.depth() == 0
    else:
        assert tally.dlq[VICTIM]["reason"] == expected
        assert tally.dlq[VICTIM]["attempts"] == str(len(victim_calls)) == "3"
    # Order: the rest of the victim's group went only after the victim was resolved.
    resolved_at = victim_calls[-1].at if victim_calls else 0.0
    assert all(c.at > resolved_at for c in stage.api.calls if c.group == "x" and c.key != VICTIM)
    if case in EXPECTED_PAUSE_S:
        throttled = [c for c in stage.api.calls if c.status == 429]
        assert len(throttled) == 1 and stage.store.get_attempts(VICTIM) == 0  # a 429 spends no attempt
        pause_s = EXPECTED_PAUSE_S[case]
        during = [c for c in stage.api.calls if throttled[0].at < c.at < throttled[0].at + pause_s - 1.0]
        assert during == [], f"{len(during)} call(s) during the pause"
    if case == "slower-than-worker-timeout":
        # The job's own timeout (at most 30 s, below the worker's 40 s) ended the wait; the jobs planned
        # behind it in that batch missed their slots and were planned again rather than sent late.
        assert stage.settings.worker_timeout_s > 30
        assert sum(s.skipped for s in scheduler.summaries) > 0
    outcome = f"{case}: victim {expected}, {len(victim_calls)} call(s) of it"
    fault_class = "api-5xx" if case.startswith("http") else "api-429" if case.startswith("429") else "api-network"
    campaign.record(fault_class, tally, outcome, repeated_same_key=sum(allowed.values()), started=started)
