"""The benchmark end to end on a tiny backlog (shape and safety only: no timing assertions)."""

from __future__ import annotations

import json
import math

import pytest

from throttler_tools import bench

PER_STRATEGY = {
    "jobs",
    "drain_s",
    "ideal_s",
    "quota_use",
    "violations",
    "api_429s",
    "aws_requests_per_job",
    "cpu_ms_per_job",
    "requests_by_action",
    "requests_per_job_by_action",
    "reservation_writes_per_s",
    "completed",
    "drained",
}


def test_bench_json_shape_and_throttler_stays_within_every_tier(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    # Given a tiny backlog, when the benchmark runs with --json and --plot
    png = tmp_path / "bench.png"
    assert bench.main(jobs=60, groups=6, as_json=True, plot=str(png)) == 0

    # Then the last line of stdout is one JSON object with every strategy and the figures it promises
    last = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads(last)
    assert set(report["strategies"]) == {"throttler", "seed-2019", "floor"}
    for name, result in report["strategies"].items():
        assert PER_STRATEGY <= set(result), name
        assert result["jobs"] == 60
    assert [scale["jobs"] for scale in report["scales"]] == [6, 60]
    assert {"nproc", "cpu", "python"} <= set(report["machine"])
    assert report["rate_probe"]["violations"] == 0 and report["rate_probe"]["api_429s"] == 0
    assert set(report["targets"]) == {"quota_use", "violations", "api_429s", "aws_requests_per_job", "cpu_vs_floor"}

    # And the throttler drained everything without a single violation or 429, in order
    throttler = report["strategies"]["throttler"]
    assert throttler["drained"] and throttler["completed"] == 60
    assert throttler["violations"] == 0
    assert throttler["api_429s"] == 0
    assert throttler["order_violations"] == 0
    assert throttler["requests_by_action"]["sqs:ReceiveMessage"] > 0
    assert throttler["requests_by_action"]["lambda:Invoke"] > 0
    # The floor only receives and deletes
    assert set(report["strategies"]["floor"]["requests_by_action"]) == {"sqs:ReceiveMessage", "sqs:DeleteMessageBatch"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ideal_is_the_fastest_schedule_every_sliding_window_allows() -> None:
    # 20,000 jobs: the minute tier binds; the last partial minute bursts at the second tier's 20/s
    assert bench.fastest_schedule_s(20_000, bench.TIERS) == 33 * 60 + 9
    assert bench.ideal(20_000).binding_tier == "minute"
    # 200,000 jobs: the hour tier binds (30,000 an hour), then the minute and second tiers shape the rest
    best = bench.ideal(200_000)
    assert best.binding_tier == "hour"
    assert best.drain_s == 6 * 3600 + 33 * 60 + 9
    # One tier alone: `limit` calls at once, then `limit` more each window
    assert bench.fastest_schedule_s(25, (("second", 1, 10),)) == 2
    assert bench.fastest_schedule_s(0, bench.TIERS) == 0


def test_scales_are_a_tenth_the_headline_and_ten_times_it_with_full() -> None:
    assert bench.scales_for(20_000, full=False) == [2_000, 20_000]
    assert bench.scales_for(20_000, full=True) == [2_000, 20_000, 200_000]


def test_cpu_meter_charges_nested_sections_exclusively() -> None:
    meter = bench.CpuMeter()
    meter.start()
    with meter.section("emulator"):
        sum(range(100_000))
    meter.stop()
    assert set(meter.totals) == {"strategy", "emulator"}
    assert all(v >= 0 and math.isfinite(v) for v in meter.totals.values())
