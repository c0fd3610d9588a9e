"""The regression set: seeds that once broke a promise (they failed before the commit named), and a seed
for each break of issue 11 whose checks the simulation makes. `make test` runs them all
(tests/sim/test_regression_seeds.py); so does `python -m throttler sim --regression`. Each replays alone
with `python -m throttler sim --seed N --days 1`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    seed: int
    profile: str  # the profile the seed draws (a check that the scenario did not move)
    why: str
    days: float = 1.0
    jobs: int | None = None
    scale: float = 0.05


REGRESSION: tuple[Case, ...] = (
    # Seeds that broke a promise.
    Case(19, "storms", "promise 4 / issue 11 break 1: a 429 storm with Retry-After 0.5 s released every held message "
         "at each pause: 202 receives a day for a waiting job (fixed by 'core fix: a short pause no longer releases')"),
    Case(34, "edits", "promise 5: a planned job released when its key's groups were hidden after the plan, called twice "
         "(fixed by 'core fix: a planned job is no longer released')"),
    Case(15, "big", "promise 6: a 429 whose publish the state table refused once: calls went on 1.7 s after it "
         "(fixed by 'core fix: a worker tries a refused 429 publish again')"),
    Case(20, "storms", "promise 4 / break 1: six storms, every Retry-After form, a 5xx outage, pauses (58 receives a day "
         "before the short-pause fix); promise 6 / break 2: slow calls beside 429s, no call 1 s after a 429"),
    Case(963, "bursts", "promise 5: a worker answered after its messages' visibility lapsed; the deletes of its "
         "successes failed and the next run called them again (now recorded as done, looked up on every receive again)"),
    Case(9501, "edits", "promise 1 (the simulation's fidelity): an operator set second=0, then wrote an invalid item; "
         "the idle runs the simulation skipped would have read the first and recorded it as the last good one, so "
         "the stage fell back to an older second=5 and the checker saw calls under second=0 (idle runs after an "
         "edit are no longer skipped)", days=0.5),
    # One seed per break of issue 11 that the checker covers.
    Case(4, "daily", "break 1: a spent day tier; the backlog waits for the next day's window with few receives"),
    Case(3, "edits", "break 3: tiers added (also longer than a day), lowered, removed and set to 0, no window over"),
    Case(6, "big", "break 5: near-256 KiB bodies, ASCII and not: batches sized in the bytes Lambda counts"),
    Case(1, "chaos", "breaks 6 and 7: duplicate Invoke deliveries, lost responses, worker and run crashes, store and "
         "queue errors: no duplicate call, every job succeeded or dead-lettered with a reason"),
    Case(2, "bursts", "break 8 and promise 2: bursts at full use, margin >= 2 ms against the seed's jitter"),
)
