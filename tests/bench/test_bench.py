"""The benchmark end to end on tiny sizes: the shape of `bench --json` (no timing assertions)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from throttler_tools.cli import cli

PER_STRATEGY = {
    "jobs",
    "completed",
    "drained",
    "drain_s",
    "ideal_s",
    "quota_use",
    "violations",
    "api_429s",
    "aws_requests_per_job",
    "aws_requests_by_action",
    "aws_requests_per_job_by_action",
    "cpu_ms_per_job",
    "own_cpu_ms_per_job",
    "aws_client_cpu_ms_per_job",
    "reservation_writes_per_s",
    "usd_per_million_jobs",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    plots = tmp_path_factory.mktemp("plots")
    result = CliRunner().invoke(cli, ["bench", "--smoke", "--json", "--jobs", "60", "--groups", "12", "--plot", str(plots)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    report["_plots"] = sorted(p.name for p in plots.iterdir())
    return report


def test_bench_json_is_one_object_with_every_strategy_and_the_figures_they_promise(report: dict) -> None:
    assert set(report["strategies"]) == {"throttler", "seed-2019", "floor"}
    for name, result in report["strategies"].items():
        assert PER_STRATEGY <= set(result), name
        assert result["jobs"] == 60
    assert [scale["jobs"] for scale in report["scales"]] == [6, 60]
    assert set(report["strategies"]["floor"]["aws_requests_by_action"]) == {"sqs:ReceiveMessage", "sqs:DeleteMessageBatch"}
    assert isinstance(report["cpu_vs_floor"], float)
    assert {"nproc", "cpu", "python"} <= set(report["machine"])


def test_bench_json_has_the_scenarios_of_issues_12_13_and_14(report: dict) -> None:
    for mode in ("low", "cost"):
        assert set(report["idle_latency_s"][mode]) == {"p50", "p99"}
    assert {"api_latency_ms", "tiers", "quota_use", "violations"} <= set(report["slow_api"])
    assert report["slow_api"]["tiers"] == "second=200" and report["slow_api"]["api_latency_ms"] >= 250
    assert [r["tiers"] for r in report["slow_api_tiers"]] == ["minute=600", "second=10"]
    assert all(r["violations"] == 0 for r in report["slow_api_tiers"])
    assert set(report["usd_per_million_jobs"]) == {"throttler", "seed-2019", "api-destinations"}
    keys = report["keys"]["10"]
    assert {
        "violations_stage",
        "violations_key",
        "global_quota_use",
        "fairness_jain",
        "light_wait_p99_s",
        "reservation_writes_per_s",
        "usd_per_million_jobs",
    } <= set(keys)
    assert {"after_2_min", "last_minute_of_first_2", "learned_at_120_s"} <= set(report["adaptive"]["steady"])
    assert {"learned_60_s_after", "minute_after"} <= set(report["adaptive"]["halved"])
    assert report["_plots"] == ["bench-idle-latency.png", "bench-slow-api.png"]


def test_the_throttler_stays_within_every_tier_in_every_scenario(report: dict) -> None:
    throttler = report["strategies"]["throttler"]
    assert throttler["drained"] and throttler["violations"] == 0 and throttler["order_violations"] == 0
    assert report["slow_api"]["violations"] == 0
    assert report["keys"]["10"]["violations_stage"] == 0 and report["keys"]["10"]["violations_key"] == 0
    assert report["idle_latency_detail"]["low"]["violations"] == 0


def test_twins_and_moto_count_the_same_requests(report: dict) -> None:
    check = report["request_count_check"]
    assert check["moto_completed"] == check["jobs"]
    for action, row in check["by_action"].items():
        assert row["twins"] == row["moto"], action


def test_bad_tiers_are_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["bench", "--tiers", "fortnight=5"])
    assert result.exit_code == 2
