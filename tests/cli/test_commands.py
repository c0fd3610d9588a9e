"""What every command of `python -m throttler` shares: help, exit codes, one-line errors, the stage.

The commands' own behaviour: test_enqueue, test_quota, test_pause_resume, test_status, test_dlq (in-process
against an AWS emulator); every validation error is exit 2 with one line, every other failure exit 1 with one.
"""

from __future__ import annotations

import sys
import types

import pytest

from tests.cli.conftest import Cli, one_line_error


# ----------------------------------------------------------------------------- help
@pytest.mark.parametrize(
    "command",
    [
        [],
        ["local"],
        ["demo"],
        ["enqueue"],
        ["quota"],
        ["quota", "show"],
        ["quota", "set"],
        ["pause"],
        ["resume"],
        ["status"],
        ["dlq"],
        ["dlq", "list"],
        ["dlq", "redrive"],
        ["bench"],
    ],
)
def test_every_command_explains_itself(run: Cli, command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0
    usage, summary = result.stdout.splitlines()[0], result.stdout.splitlines()[2]
    assert usage.startswith("Usage: ")
    assert summary.strip() and not summary.startswith(" " * 4), summary
    if command not in ([], ["quota"], ["dlq"]):
        assert "--help" in result.stdout


def test_subcommands_of_the_main_group_are_listed(run: Cli) -> None:
    result = run("--help")
    for name in ("local", "demo", "enqueue", "quota", "pause", "resume", "status", "dlq", "bench"):
        assert f"  {name} " in result.stdout


# ----------------------------------------------------------------------------- bench
def _fake_bench(monkeypatch: pytest.MonkeyPatch, main: object) -> None:
    """The benchmark package as the command imports it (its `main` and `model.parse_tiers`), faked."""
    from throttler_tools.bench.model import parse_tiers

    fake = types.ModuleType("throttler_tools.bench")
    fake.main = main  # type: ignore[attr-defined]
    model = types.ModuleType("throttler_tools.bench.model")
    model.parse_tiers = parse_tiers  # type: ignore[attr-defined]
    fake.model = model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "throttler_tools.bench", fake)
    monkeypatch.setitem(sys.modules, "throttler_tools.bench.model", model)


def test_bench_passes_its_options_to_the_benchmark(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def main(**kwargs: object) -> int:
        seen.update(kwargs)
        return 0

    _fake_bench(monkeypatch, main)
    result = run("bench", "--json", "--full", "--jobs", "500", "--groups", "7", "--plot", "/tmp", "--tiers", "second=10",
                 "--api-latency-ms", "250", "--keys", "20")
    assert result.exit_code == 0, result.output
    assert seen == {"jobs": 500, "groups": 7, "tiers": "second=10", "api_latency_ms": 250.0, "keys": 20, "full": True,
                    "as_json": True, "plot": "/tmp", "smoke": False, "profile": False}
    seen.clear()
    assert run("bench").exit_code == 0
    assert seen["jobs"] == 20_000 and seen["keys"] is None and seen["full"] is False and seen["plot"] is None


def test_bench_refuses_bad_tiers_in_one_line(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_bench(monkeypatch, lambda **kwargs: 0)
    result = run("bench", "--tiers", "second=fast")
    assert result.exit_code == 2
    assert "--tiers" in one_line_error(result)


def test_bench_exit_code_comes_from_the_benchmark(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_bench(monkeypatch, lambda **kwargs: 1)
    assert run("bench").exit_code == 1


def test_bench_without_the_benchmark_module_fails_in_one_line(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "throttler_tools.bench", None)  # import fails
    result = run("bench")
    assert result.exit_code == 1
    assert "the benchmark is not available" in one_line_error(result)


# ----------------------------------------------------------------------------- failures
def test_aws_unreachable_is_one_line_and_exit_1(run: Cli) -> None:
    from throttler_tools.local import port_is_free

    port = 1
    while not port_is_free(port + 40000):
        port += 1
    result = run("status", env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port + 40000}"})
    assert result.exit_code == 1
    assert "cannot reach http://127.0.0.1:" in one_line_error(result)
    assert "is `python -m throttler local` running?" in result.stderr


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        (["status", "--stage", "dev"], "queue throttler-dev-jobs.fifo"),
        (["dlq", "list", "--stage", "dev"], "queue throttler-dev-jobs.fifo"),
        (["quota", "show", "--stage", "staging"], "table throttler-staging-state"),
        (["quota", "set", "second=1", "--stage", "staging"], "table throttler-staging-state"),
        (["pause", "--stage", "staging"], "table throttler-staging-state"),
        (["resume", "--stage", "staging"], "table throttler-staging-state"),
    ],
)
def test_a_stage_that_is_not_deployed_says_so_in_one_line(run: Cli, args: list[str], missing: str) -> None:
    result = run(*args)
    assert result.exit_code == 1
    assert one_line_error(result) == f"Error: {missing} does not exist: is the stage deployed (or the local stack running)?"


def test_the_stage_comes_from_the_option_or_the_environment(run: Cli) -> None:
    assert run("--stage", "prod", "pause").exit_code == 1  # no such table on the local stack
    assert run("pause", env={"THROTTLER_STAGE": "prod"}).exit_code == 1
    assert run("pause", "--stage", "local", env={"THROTTLER_STAGE": "prod"}).exit_code == 0


def test_an_unknown_command_is_a_usage_error_in_one_line(run: Cli) -> None:
    result = run("drain")
    assert result.exit_code == 2
    assert "No such command 'drain'" in one_line_error(result)
