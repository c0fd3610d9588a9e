"""`status`: depth, in flight, dead letters, every tier (configured, learned, the API's word, use), what
dispatch follows and why, the pause, the time to drain in words that hold, the busiest keys or one key."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.cli.conftest import Cli, last_json, one_line_error
from throttler.core.pacing import ApiBudget, ApiPolicy, ApiState, Learned, Meter, Pacer
from throttler.core.quotas import parse_quota_item
from throttler.naming import StageNames
from throttler.queue import DeadLetter, QueueDepth, SqsJobQueue
from throttler.store import Control, DynamoStateStore, KeyMeterWrite, UsageRecord
from throttler_tools.status import (
    Snapshot,
    StageDefaults,
    build_report,
    drain_estimate,
    drain_text,
    duration_text,
)


@dataclass(frozen=True)
class UsageWithKeys(UsageRecord):
    """The usage record with the per-key backlog the throttler reports (`UsageRecord.keys`)."""

    keys: Mapping[str, Any] = field(default_factory=dict)


def meter_with_calls(item: dict[str, Any], calls: int, since_s: float, meter: Meter | None = None) -> Meter:
    """A stage meter holding `calls` reserved from `since_s` ago on, paced as the throttler paces them."""
    meter = meter or Meter()
    pacer = Pacer(parse_quota_item(item), meter)
    t = time.time() - since_s
    for _ in range(calls):
        slot = pacer.next_slot(t)
        assert slot is not None
        pacer.take(slot)
        t = slot
    return meter


def queue_jobs(run: Cli, n: int) -> SqsJobQueue:
    queue = SqsJobQueue(run.sqs, run.jobs_url, run.dlq_url)
    queue.send([(json.dumps({"task": "http", "payload": {}}), f"g{i % 3}", f"j{i}") for i in range(n)])
    return queue


# ----------------------------------------------------------------------------- the CLI, against the emulator
def test_status_reports_depth_in_flight_dlq_limits_use_and_drain_time(run: Cli) -> None:
    queue = queue_jobs(run, 30)
    queue.receive(2, 60)  # two in flight
    queue.dead_letter([DeadLetter(m, "http 400", 1) for m in queue.receive(1, 60)])
    assert run("quota", "set", "second=5", "minute=120").exit_code == 0
    meter = meter_with_calls({"second": 5, "minute": 120}, 12, 3)  # 12 calls reserved in the last seconds
    assert run.store.commit_usage(0, meter.to_json(), {}, {}, [])

    report = last_json(run("status", "--json"))
    assert report["queue"] == {"name": "throttler-local-jobs.fifo", "waiting": 27, "in_flight": 2}
    assert report["dlq"] == {"name": "throttler-local-dlq.fifo", "depth": 1}
    assert report["quota"]["source"] == "state table" and report["quota"]["in_force"] == "second=5 minute=120"
    assert report["tiers"]["minute"] == {"limit": 120, "used": 12}
    assert set(report["tiers"]) == {"second", "minute"}
    assert report["pause"]["paused"] is False
    assert report["follows"]["tier"] == "minute" and report["follows"]["by"] == "configured"
    assert report["follows"]["rate_per_s"] == pytest.approx(2.0, rel=0.01)
    drain = report["drain"]
    assert drain["jobs"] == 29
    assert drain["sustained_per_s"] == pytest.approx(2.0, rel=0.01)  # minute=120 binds in the long run
    # 29 calls paced 0.2 s apart (second=5 plus its margin); minute=120 has room for them all.
    assert drain["eta_s"] == pytest.approx(28 * 1.004 / 5, abs=0.3)

    text = run("status").stdout
    assert "27 waiting, 2 in flight" in text
    assert "1 dead-lettered" in text
    assert "minute 12/120" in text
    assert "follows   second=5 minute=120" not in text and "minute=120 is the tightest limit" in text
    assert "drain     29 jobs in ~6 s (about 5.1" in text and "1.99 calls/s sustained" in text


def test_status_of_an_empty_stage_with_default_quotas(run: Cli) -> None:
    report = last_json(run("status", "--json"))
    assert report["queue"]["waiting"] == 0 and report["drain"]["eta_s"] == 0
    assert report["quota"]["source"] == "stage default" and report["quota"]["defaults"] == "serverless.yml"
    assert report["tiers"] == {"second": {"limit": 10, "used": 0}, "minute": {"limit": 300, "used": 0}}
    assert report["keys"] == {} and report["history"] == {} and report["api_said"] is None
    assert "drain     nothing queued" in run("status").stdout


def test_status_when_a_limit_is_zero_never_drains(run: Cli) -> None:
    queue_jobs(run, 1)
    run("quota", "set", "second=0")
    assert last_json(run("status", "--json"))["drain"]["eta_s"] is None
    assert "1 job: never at these limits (a limit is 0)" in run("status").stdout


def test_status_with_an_invalid_item_shows_the_last_good_configuration(run: Cli) -> None:
    run.store.put_last_good({"second": 3})
    run.store.put_quotas({"second": "lots"})
    report = last_json(run("status", "--json"))
    assert report["quota"]["error"] and "second" in report["quota"]["error"]
    assert report["quota"]["source"] == "last good configuration"
    assert report["tiers"] == {"second": {"limit": 3, "used": 0}}
    assert "quota item invalid" in run("status").stdout


def test_status_from_an_installed_copy_before_the_first_run(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("throttler_tools.status.serverless_yml_defaults", lambda stage: None)
    report = last_json(run("status", "--json"))
    assert report["quota"]["in_force"] is None and "unknown here until the throttler's first run" in report["quota"]["error"]
    assert report["drain"] == {"jobs": 0, "eta_s": None, "calls_per_s": None, "sustained_per_s": None,
                               "why": "no quotas in force"}
    assert "quotas    none in force" in run("status").stdout


def test_status_json_reports_every_tier_in_the_spec_shape(run: Cli) -> None:
    """SPEC: {"limit": int or "auto:MAX", "learned" (auto tiers), "api": {limit, window_s, remaining, reset_s}
    (while the API's word applies), "used"}; a window only the API states is a tier of its own."""
    now = time.time()
    item = {"second": "auto:50", "minute": 120, "hour": 5000}
    run.store.put_quotas(item)
    meter = meter_with_calls({"second": 100, "minute": 120, "hour": 5000}, 6, 0.2)
    history = [[now - 90, 25, "raised"], [now - 30, 17, "429"]]
    meter.learned["second"] = Learned(17.6, bad=25, changed_at=now - 30, history=history)
    meter.api = ApiState([ApiPolicy(100, 60.0, now + 100), ApiPolicy(7, 10.0, now + 100)], ApiBudget(40, now + 30, now - 1, 2),
                         now - 1, "RateLimit-Policy q=100 w=60")
    assert run.store.commit_usage(0, meter.to_json(), {}, {}, [])

    report = last_json(run("status", "--json"))
    tiers = report["tiers"]
    assert list(tiers) == ["second", "minute", "hour", "api:10s"]
    assert tiers["second"] == {"limit": "auto:50", "learned": 17, "used": tiers["second"]["used"]}
    assert 0 <= tiers["second"]["used"] <= 6  # its window may have moved past some of them by now
    assert tiers["hour"] == {"limit": 5000, "used": 6}
    minute = tiers["minute"]
    assert set(minute) == {"limit", "api", "used"} and minute["limit"] == 120 and minute["used"] == 6
    assert set(minute["api"]) == {"limit", "window_s", "remaining", "reset_s"}
    assert minute["api"]["limit"] == 100 and minute["api"]["window_s"] == 60 and minute["api"]["remaining"] == 38
    assert 25 <= minute["api"]["reset_s"] <= 30
    assert tiers["api:10s"] == {"limit": 7, "api": {"limit": 7, "window_s": 10, "remaining": None, "reset_s": None},
                                "used": tiers["api:10s"]["used"]}
    # What it follows and why: the API's 7 per 10 s is the slowest of all.
    assert report["follows"]["tier"] == "api:10s" and report["follows"]["by"] == "api"
    assert "the API says 7 per 10 s" in report["follows"]["why"]
    assert report["history"] == {"second": [{"at": pytest.approx(now - 90, abs=0.01), "limit": 25, "why": "raised"},
                                            {"at": pytest.approx(now - 30, abs=0.01), "limit": 17, "why": "429"}]}
    assert report["api_said"]["summary"] == "RateLimit-Policy q=100 w=60"
    text = run("status").stdout
    assert re.search(r"second [0-6]/17 \(learned, auto:50\)", text), text
    assert "api says  minute: 100 per 60 s, 38 calls left, resets in" in text
    assert "follows   the API says 7 per 10 s" in text and "(api, 41.82 calls/min)" in text
    assert "learned   second: 25 (raised" in text and "17 (429" in text


def test_status_key_reports_one_keys_weight_backlog_and_tiers(run: Cli) -> None:
    run.store.put_quotas({"second": 20, "per_key": {"minute": 60}, "keys": {"tenant-a": {"minute": "auto:120", "weight": 3}}})
    key_meter = meter_with_calls({"minute": 60}, 4, 10)
    key_meter.learned["minute"] = Learned(44.0)
    assert run.store.commit_usage(0, None, {"tenant-a": KeyMeterWrite(key_meter.to_json(), time.time() + 3600)}, {}, [])
    report = last_json(run("status", "--key", "tenant-a", "--json"))
    assert list(report["keys"]) == ["tenant-a"]
    entry = report["keys"]["tenant-a"]
    assert entry["weight"] == 3
    assert entry["backlog"] is None  # not among the keys the throttler reported
    assert entry["tiers"] == {"minute": {"limit": "auto:120", "learned": 44, "used": 4}}
    assert entry["follows"]["by"] == "learned"
    other = last_json(run("status", "--key", "nobody", "--json"))["keys"]["nobody"]
    assert other["weight"] == 1 and other["tiers"] == {"minute": {"limit": 60, "used": 0}}
    text = run("status", "--key", "tenant-a").stdout
    assert "tenant-a  weight 3" in text and "minute 4/44 (learned, auto:120)" in text and "backlog ?" in text


def test_status_lists_the_busiest_keys_the_throttler_reported(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    run.store.put_quotas({"second": 20, "per_key": {"minute": 60}, "keys": {"heavy": {"weight": 4}}})
    seen = {f"k{i:02d}": {"held": i, "hidden": 1, "seen_at": 1.0} for i in range(15)}
    seen["heavy"] = {"held": 500, "hidden": 9500, "seen_at": 1.0}
    original = DynamoStateStore.load_usage

    def with_keys(self: DynamoStateStore) -> UsageRecord:
        record = original(self)
        return UsageWithKeys(record.version, record.stage_meter, record.open_batches, record.done_until, keys=seen)

    monkeypatch.setattr(DynamoStateStore, "load_usage", with_keys)
    report = last_json(run("status", "--json"))
    assert list(report["keys"]) == ["heavy", "k14", "k13", "k12", "k11", "k10", "k09", "k08", "k07", "k06"]
    heavy = report["keys"]["heavy"]
    assert heavy["weight"] == 4 and heavy["backlog"] == 10000 and heavy["tiers"] == {"minute": {"limit": 60, "used": 0}}
    assert heavy["drain"]["eta_s"] == pytest.approx(10000 / (60 / 60.24), rel=0.02)  # its own minute=60 binds
    assert set(heavy) >= {"weight", "backlog", "tiers"}
    assert "keys      10 keys (backlog as the throttler last saw it)" in run("status").stdout


# ----------------------------------------------------------------------------- the model, pure
FIXED_NOW = 1_800_000_000.0


def snapshot(item: dict[str, Any] | None, *, depth: int = 0, control: Control | None = None, meter: Meter | None = None,
             keys: Mapping[str, Any] | None = None, key_meters: Mapping[str, str | None] | None = None) -> Snapshot:
    return Snapshot(
        names=StageNames.of("dev"),
        jobs=QueueDepth(depth, 0),
        dlq=QueueDepth(0, 0),
        control=control or Control(item, None, None, None),
        usage=UsageWithKeys(1, meter.to_json() if meter else None, keys=keys or {}),
        defaults=StageDefaults("second=10", (), None, None, "test"),
        key_meters=key_meters or {},
    )


def test_drain_words_stay_sane_for_small_backlogs() -> None:
    """Issue 15: not "~5 s at 1.00 calls/s" for 17 jobs, and "1 job", "2 jobs"."""
    now = FIXED_NOW  # the figures depend on where `now` falls in the meter's buckets: not on the wall clock
    report = build_report(snapshot({"second": 10, "minute": 60, "margin_ms": 2}, depth=17), now)
    drain = report["drain"]
    assert drain["eta_s"] == pytest.approx(1.6, abs=0.05)
    assert drain["sustained_per_s"] == pytest.approx(1.0, rel=0.01)
    assert drain_text(drain) == "17 jobs in ~2 s (about 10.59 calls/s; 1.00 calls/s sustained)"
    one = build_report(snapshot({"second": 10}, depth=1), now)["drain"]
    assert drain_text(one) == "1 job in under 1 s (9.96 calls/s sustained)"
    assert drain_text(build_report(snapshot({"second": 10}, depth=2), now)["drain"]).startswith("2 jobs in under 1 s")


def test_drain_after_a_long_pause_is_not_a_huge_number() -> None:
    """Issue 15: not "~99999.0 d" after an open-ended pause."""
    now = FIXED_NOW
    open_ended = Control({"second": 10}, None, now + 10 * 365 * 86400, "operator")
    drain = build_report(snapshot({"second": 10}, depth=17, control=open_ended), now)["drain"]
    assert drain["eta_s"] is None and drain_text(drain) == "17 jobs: not while paused until resume"
    timed = Control({"second": 10}, None, now + 3600, "operator")
    drain = build_report(snapshot({"second": 10}, depth=17, control=timed), now)["drain"]
    assert drain["eta_s"] == pytest.approx(3601.6, abs=0.1)
    assert drain_text(drain) == "17 jobs in ~60 min (about 10.57 calls/s; 9.96 calls/s sustained)"
    assert duration_text(400 * 86400) == "over a year"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.2, "under 1 s"), (1.6, "~2 s"), (89, "~89 s"), (90, "~2 min"), (3600, "~60 min"), (5400, "~1.5 h"),
     (47 * 3600, "~47.0 h"), (3 * 86400, "~3.0 d"), (364 * 86400, "~364.0 d"), (365 * 86400, "over a year")],
)
def test_durations_read_at_a_glance(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_drain_estimate_paces_the_backlog_through_every_tier_and_waits_out_a_pause() -> None:
    config = parse_quota_item({"second": 10, "minute": 30, "margin_ms": 0.002 * 1000})
    now = 1_000_000.0

    def eta(depth: int, start: float | None) -> float | None:
        return drain_estimate(Pacer(config, Meter()), depth, now, start)["eta_s"]

    # 30 calls in the first 3 s, then the minute tier holds the rest until the first ones leave its window.
    assert eta(30, 0.0) == pytest.approx(2.9, abs=0.02)
    assert eta(40, 0.0) == pytest.approx(60.9, abs=0.2)
    assert eta(40, 100.0) == pytest.approx(160.9, abs=0.2)
    assert eta(0, 100.0) == 0.0
    assert eta(5, None) is None
    assert drain_estimate(Pacer(parse_quota_item({"second": 0}), Meter()), 5, now, 0.0)["why"] == "a limit is 0"


def test_a_limit_the_api_states_with_remaining_calls_is_followed_when_it_is_the_slowest() -> None:
    now = time.time()
    meter = Meter()
    meter.api = ApiState([], ApiBudget(3, now + 30, now - 1, 0), now - 1, "x-ratelimit-remaining: 3")
    report = build_report(snapshot({"second": 10, "minute": 300}, meter=meter), now)
    assert report["tiers"]["minute"]["api"] == {"limit": None, "window_s": None, "remaining": 3,
                                                "reset_s": pytest.approx(30, abs=0.5)}
    assert report["follows"]["by"] == "api" and "3 calls left until its reset in ~30 s" in report["follows"]["why"]


def test_a_learned_tier_that_binds_says_so() -> None:
    now = time.time()
    meter = Meter()
    meter.learned["second"] = Learned(4.0, history=[[now - 5, 4, "429"]])
    report = build_report(snapshot({"second": "auto:50", "minute": 600}, meter=meter), now)
    assert report["follows"]["by"] == "learned" and report["follows"]["tier"] == "second"
    assert report["follows"]["why"].startswith("second=auto:50 has learned 4 per 1 s; last change: 429 at ")


def test_keys_share_the_stage_by_weight_in_their_drain_estimate() -> None:
    now = time.time()
    item = {"second": 10, "keys": {"big": {"weight": 3}}}
    keys = {"big": {"held": 30, "hidden": 0, "seen_at": now}, "small": {"held": 10, "hidden": 0, "seen_at": now}}
    report = build_report(snapshot(item, depth=40, keys=keys), now)
    assert list(report["keys"]) == ["big", "small"]
    # Weights 3 and 1 of 10 calls/s: big drains at 7.5/s, small at 2.5/s.
    assert report["keys"]["big"]["drain"]["eta_s"] == pytest.approx(30 / (9.96 * 0.75), rel=0.02)
    assert report["keys"]["small"]["drain"]["eta_s"] == pytest.approx(10 / (9.96 * 0.25), rel=0.02)
    only = build_report(snapshot(item, depth=40, keys=keys), now, key="small")
    assert list(only["keys"]) == ["small"] and only["keys"]["small"]["backlog"] == 10


def test_the_same_report_comes_from_the_in_memory_twins() -> None:
    """One function builds the report for any backend (the CLI's AWS ones, a dashboard's, the simulation's)."""
    from throttler.core.clock import FakeClock
    from throttler.queue import MemoryJobQueue, MemorySqs
    from throttler.store import MemoryStateStore
    from throttler_tools.provision import provision_queues
    from throttler_tools.status import status_report

    clock = FakeClock(1_700_000_000.0)
    sqs = MemorySqs(clock)
    provision_queues(sqs, "dev")
    names = StageNames.of("dev")
    queue = MemoryJobQueue(sqs, names.jobs_queue, names.dlq)
    queue.send([(json.dumps({"task": "http", "payload": {}}), "g", f"j{i}") for i in range(3)])
    store = MemoryStateStore()
    store.put_quotas({"second": 2})
    report = status_report(store, queue, names, clock.now(), defaults=lambda control: StageDefaults())
    assert report["queue"]["waiting"] == 3 and report["tiers"] == {"second": {"limit": 2, "used": 0}}
    assert report["quota"]["defaults"] == "unknown here until the throttler's first run"
    assert drain_text(report["drain"]).startswith("3 jobs in ~1 s")


@pytest.mark.parametrize(
    "args", [["status", "--key", ""], ["status", "--key", "k" * 129], ["quota", "show", "--key", "tab\there"]]
)
def test_a_bad_key_name_is_exit_2_in_one_line(run: Cli, args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert "--key must be 1-128 printable ASCII characters" in one_line_error(result)


def test_a_large_backlog_is_estimated_window_by_window() -> None:
    """Beyond the calls it paces one by one, the estimate counts whole windows of each tier: 100,000 jobs
    under minute=300 and day=100000 take about 5.6 h (the day tier has room for them all), 250,000 two
    whole days and then 50,000 more at 5 calls/s."""
    config = parse_quota_item({"second": 10, "minute": 300, "day": 100000})
    now = 1_000_000.0
    assert drain_estimate(Pacer(config, Meter()), 100_000, now, 0.0)["eta_s"] == pytest.approx(100_000 / 300 * 60.24, rel=0.01)
    assert drain_estimate(Pacer(config, Meter()), 250_000, now, 0.0)["eta_s"] == pytest.approx(
        2 * 86400.25 + 50_000 / 300 * 60.24, rel=0.01)
