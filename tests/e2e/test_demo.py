"""The demo end to end: the local stack, the fake API enforcing its quotas, the JSON report and the chart."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from throttler_tools.cli import cli


def test_demo_report_shows_no_violations_ordering_kept_and_the_expected_dead_letters(tmp_path: Path) -> None:
    chart = tmp_path / "demo.png"
    result = CliRunner().invoke(
        cli, ["demo", "--jobs", "30", "--groups", "3", "--json", "--plot", str(chart)], prog_name="python -m throttler"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["complete"] is True
    assert report["quota_violations"] == 0
    assert report["violation_429s"] == 0
    for tier in report["tiers"].values():
        assert tier["max_calls_in_any_window"] <= tier["limit"]
    assert report["ordering_verified"] is True
    assert report["order_violations"] == 0
    assert report["duplicate_calls"] == 0
    assert report["dlq"]["reasons"] == {"http 400": 3}
    assert report["succeeded"] == 27
    assert report["api_429s"] == 1  # the one the API was told to answer, honoured
    assert report["retried_calls"] == 1  # the flaky job: 500 once, then 200
    assert report["ok"] is True
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_refuses_fewer_jobs_than_groups() -> None:
    result = CliRunner().invoke(cli, ["demo", "--jobs", "10", "--groups", "20"], prog_name="python -m throttler")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["Error: --jobs (10) must be at least --groups (20)"]
