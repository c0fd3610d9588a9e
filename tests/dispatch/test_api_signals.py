"""SPEC "The API's own signals" (promise 6): learned limits (auto:MAX), the draft RateLimit fields and
cost units, in virtual time against fake APIs that enforce limits the quota item does not state."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.conftest import World, job_body
from throttler_tools.fakeapi import FakeApi, max_in_window

MakeWorld = Callable[..., World]


class HiddenLimitApi(FakeApi):
    """Enforces `limit` calls per sliding second (a refused call does not count), answers 429 without
    Retry-After; `limit` may change while the test runs."""

    limit: int = 6

    def _count_arrival(self, now: float) -> bool:
        arrivals = self._windows.setdefault(1.0, __import__("collections").deque())
        while arrivals and arrivals[0] <= now - 1.0:
            arrivals.popleft()
        if len(arrivals) >= self.limit:
            self.violations += 1
            return True
        arrivals.append(now)
        return False

    def _behave(self, path: str, key: str | None, now: float) -> tuple[int, dict[str, str]]:
        return 200, {}


class DraftHeadersApi(FakeApi):
    """Enforces 5 calls per calendar second and says so on every answer, as the IETF draft has it:
    `RateLimit-Policy: "default";q=5;w=1` and `RateLimit: "default";r=<left>;t=<s to reset>`."""

    def _count_arrival(self, now: float) -> bool:
        second = int(now)
        used = self._periods[(1.0, second)]
        if used >= 5:
            self.violations += 1
            return True
        self._periods[(1.0, second)] = used + 1
        return False

    def _behave(self, path: str, key: str | None, now: float) -> tuple[int, dict[str, str]]:
        left = 5 - self._periods[(1.0, int(now))]
        return 200, {"RateLimit-Policy": '"default";q=5;w=1', "RateLimit": f'"default";r={left};t=1'}


def with_api(world: World, api: FakeApi) -> World:
    from throttler_tools.fakeapi import session_for

    api.clock = world.clock
    world.api = api
    world.session = session_for(api)
    return world


def backlog(world: World, count: int, groups: int = 20, **job: object) -> None:
    world.enqueue([(job_body("/ok", f"g{i % groups}", i, **job), f"g{i % groups}", f"j-{i}") for i in range(count)])  # type: ignore[arg-type]


def rate_between(api: FakeApi, start: float, end: float) -> tuple[float, float]:
    """(successful calls per second, share of 429s) over [start, end)."""
    calls = [c for c in api.calls if start <= c.at < end]
    ok = sum(1 for c in calls if c.status == 200)
    return ok / (end - start), (len(calls) - ok) / max(1, len(calls))


def test_a_learned_limit_reaches_90_percent_of_a_hidden_limit_within_two_minutes_with_few_429s(make_world: MakeWorld) -> None:
    world = with_api(make_world(quotas={"second": "auto:20", "margin_ms": 20}), HiddenLimitApi(tiers=[]))
    backlog(world, 2000)
    t0 = world.loop.now
    world.start_schedule()
    world.run_until(t0 + 180)
    rate, share_429 = rate_between(world.api, t0 + 120, t0 + 180)
    assert rate >= 0.9 * 6, rate
    assert share_429 <= 0.02, share_429


def test_a_learned_limit_follows_an_api_that_halves_its_limit_within_a_minute(make_world: MakeWorld) -> None:
    api = HiddenLimitApi(tiers=[])
    world = with_api(make_world(quotas={"second": "auto:20", "margin_ms": 20}), api)
    backlog(world, 3000)
    t0 = world.loop.now
    world.start_schedule()
    world.run_until(t0 + 150)
    api.limit = 3
    world.run_until(t0 + 210)
    learned = json.loads(world.store.load_usage().stage_meter or "{}")["a"]["second"]
    assert int(learned["v"]) == 3, learned  # followed within a minute (and holds below the limit that failed)
    world.run_until(t0 + 270)
    rate, share_429 = rate_between(api, t0 + 210, t0 + 270)
    # at most one probe of the failed limit in that minute: a few 429s, a second's pause
    assert rate >= 0.85 * 3 and share_429 <= 0.05, (rate, share_429)


def test_the_drafts_ratelimit_policy_is_followed_with_no_429(make_world: MakeWorld) -> None:
    world = with_api(make_world(quotas={"second": 20, "margin_ms": 20}), DraftHeadersApi(tiers=[]))
    backlog(world, 600)
    t0 = world.loop.now
    world.start_schedule()
    world.run_until(t0 + 100)
    assert world.api.violations == 0 and all(c.status == 200 for c in world.api.calls)
    rate, _ = rate_between(world.api, t0 + 10, t0 + 100)
    assert rate >= 4.5, rate


class CostHeaderApi(FakeApi):
    """Says each call cost 10 units (a GraphQL-style points header), whatever the job declared."""

    def _behave(self, path: str, key: str | None, now: float) -> tuple[int, dict[str, str]]:
        return 200, {"X-Cost-Units": "10"}


def test_costly_jobs_never_exceed_a_window_and_an_upward_cost_correction_slows_later_calls(make_world: MakeWorld) -> None:
    world = make_world(quotas={"minute": 60, "margin_ms": 20}, api_tiers=[])
    backlog(world, 40, cost=5)
    world.start_schedule()
    world.run_for(200)
    assert max_in_window([c.at for c in world.api.calls], 60) <= 12  # 60 units a minute at 5 units a call

    corrected = with_api(
        make_world(quotas={"minute": 60, "margin_ms": 20, "cost_header": "X-Cost-Units"}), CostHeaderApi(tiers=[])
    )
    backlog(corrected, 40)
    t0 = corrected.loop.now
    corrected.start_schedule()
    corrected.run_until(t0 + 200)
    later = [c.at for c in corrected.api.calls if t0 + 70 < c.at <= t0 + 190]
    # Each call really used 10 units, not the 1 declared: once the answers say so, about 6 calls fit in a
    # minute (a call planned before the answer of the one before it may still go: at most a batch's worth).
    assert 8 <= len(later) <= 16, len(later)
