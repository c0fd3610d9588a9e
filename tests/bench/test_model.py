"""The benchmark's yardsticks: the fastest legal schedule, fair shares, Jain's index, the bill, CPU sections."""

from __future__ import annotations

import math

import pytest

from throttler_tools.bench import cost
from throttler_tools.bench.meters import CpuMeter
from throttler_tools.bench.model import fastest_schedule_s, ideal, jain, parse_tiers, percentile, water_fill, zipf_backlog

TIERS = parse_tiers("second=20 minute=600 hour=30000")


def test_ideal_is_the_fastest_schedule_every_sliding_window_allows() -> None:
    # 20,000 jobs: the minute tier binds; the last partial minute bursts at the second tier's 20/s
    assert fastest_schedule_s(20_000, TIERS) == 33 * 60 + 9
    assert ideal(20_000, TIERS).binding_tier == "minute"
    best = ideal(200_000, TIERS)
    assert best.binding_tier == "hour" and best.drain_s == 6 * 3600 + 33 * 60 + 9
    assert fastest_schedule_s(25, parse_tiers("second=10")) == 2
    assert fastest_schedule_s(0, TIERS) == 0


def test_tiers_parse_finest_first_and_refuse_nonsense() -> None:
    assert parse_tiers("minute=600 second=20") == (("second", 1, 20), ("minute", 60, 600))
    for bad in ("second", "second=0", "fortnight=3", ""):
        with pytest.raises(Exception):
            parse_tiers(bad)


def test_fair_shares_follow_weights_under_caps() -> None:
    assert water_fill(90, [100, 100, 100], [1, 1, 1]) == pytest.approx([30, 30, 30])
    assert water_fill(90, [100, 100], [1, 2]) == pytest.approx([30, 60])
    assert water_fill(90, [10, 100, 100], [1, 1, 1]) == pytest.approx([10, 40, 40])


def test_jain_index() -> None:
    assert jain([1, 1, 1, 1]) == pytest.approx(1.0)
    assert jain([1, 0, 0, 0]) == pytest.approx(0.25)
    assert jain([]) is None


def test_zipf_backlog_and_percentiles() -> None:
    assert zipf_backlog(5, 100) == [100, 50, 33, 25, 20]
    assert zipf_backlog(3, 1) == [1, 1, 1]
    assert percentile([3, 1, 2, 4], 0.5) == 2 and percentile([], 0.5) is None


def test_the_bill_of_a_run() -> None:
    one_gb_hour = cost.bill(sqs_chunks=0, rru=0, wru=0, lambda_invocations=0, gb_s=3600)
    assert one_gb_hour.lambda_gb_s == pytest.approx(3600 * cost.LAMBDA_GB_S)
    requests = cost.bill(sqs_chunks=2_000_000, rru=8_000_000, wru=1_600_000, lambda_invocations=5_000_000, gb_s=0)
    assert requests.total == pytest.approx(1.0 + 1.0 + 1.0 + 1.0)
    assert cost.api_destinations(1_000_000).total == pytest.approx(1.2)


def test_a_function_is_billed_at_its_configured_memory_unless_its_cpu_share_cannot_carry_the_rate() -> None:
    configured = cost.configured_memory_mb("throttler")
    assert 128 <= configured <= 10240
    share = configured / cost.VCPU_MB
    light = cost.Sizing(configured, busy_vcpu=0.1 * share)
    assert light.billed_mb == configured and light.share_used == pytest.approx(0.1)
    # Busier than the headroom allows: billed at the next 64 MB step that brings it back to half its share.
    busy = cost.Sizing(configured, busy_vcpu=0.8 * share)
    assert busy.billed_mb > configured and busy.billed_mb % cost.MEMORY_STEP_MB == 0
    assert busy.busy_vcpu / (busy.billed_mb / cost.VCPU_MB) <= cost.CPU_HEADROOM
    assert busy.busy_vcpu / ((busy.billed_mb - cost.MEMORY_STEP_MB) / cost.VCPU_MB) > cost.CPU_HEADROOM
    assert cost.Sizing(128, busy_vcpu=0.0).needed_mb == 128  # Lambda's smallest size


def test_cpu_meter_charges_nested_sections_exclusively() -> None:
    meter = CpuMeter()
    with meter.section("throttler"):
        sum(range(50_000))
        with meter.section("twin"):
            sum(range(50_000))
    totals = meter.close()
    assert {"engine", "throttler", "twin"} <= set(totals)
    assert all(v >= 0 and math.isfinite(v) for v in totals.values())
