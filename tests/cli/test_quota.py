"""`quota show` / `quota set`: operators read and change the limits at run time; every bad value is exit 2
with a one-line reason and nothing written."""

from __future__ import annotations

import pytest

from tests.cli.conftest import Cli, last_json, one_line_error
from throttler.core.pacing import Learned, Meter
from throttler.core.quotas import parse_quota_item
from throttler.store import KeyMeterWrite


def stored(run: Cli) -> dict:
    item = run.store.read_control().quotas
    assert item is not None
    return {k: v for k, v in parse_quota_item(item).raw.items() if not k.startswith("updated")}


# ----------------------------------------------------------------------------- show
def test_quota_show_without_an_item_shows_the_stage_defaults(run: Cli) -> None:
    result = run("quota", "show")
    assert result.exit_code == 0
    assert "stage default, serverless.yml" in result.stdout
    assert "second" in result.stdout and "minute" in result.stdout
    assert last_json(run("quota", "show", "--json")) == {
        "stage": "local",
        "source": "stage default",
        "error": None,
        "defaults": "serverless.yml",
        "quotas": {"second": 10, "minute": 300},
        "tiers": {"second": {"limit": 10}, "minute": {"limit": 300}},
        "concurrency": None,
        "margin_ms": None,
        "aligned": [],
        "latency": "cost",
        "cost_header": None,
        "signals_scope": "stage",
        "per_key": None,
        "keys": {},
    }


def test_quota_show_json_gives_configured_and_learned_values_in_the_status_shape(run: Cli) -> None:
    run.store.put_quotas({"second": "auto:50", "day": 10000, "concurrency": 4, "per_key": {"minute": 60},
                          "keys": {"tenant-a": {"minute": "auto:120", "weight": 3}, "tenant-b": {"minute": "off"}}})
    stage_meter = Meter()
    stage_meter.learned["second"] = Learned(17.4, history=[[1000.0, 17, "raised"]])
    key_meter = Meter()
    key_meter.learned["minute"] = Learned(44.0)
    assert run.store.commit_usage(0, stage_meter.to_json(), {"tenant-a": KeyMeterWrite(key_meter.to_json(), 2e9)}, {}, [])

    shown = last_json(run("quota", "show", "--json"))
    assert shown["source"] == "state table" and shown["concurrency"] == 4
    assert shown["tiers"] == {"second": {"limit": "auto:50", "learned": 17}, "day": {"limit": 10000}}
    assert shown["per_key"] == {"tiers": {"minute": {"limit": 60}}}
    assert shown["keys"] == {
        "tenant-a": {"weight": 3, "tiers": {"minute": {"limit": "auto:120", "learned": 44}}, "override": True},
        "tenant-b": {"weight": 1, "tiers": {}, "override": True},
    }
    one = last_json(run("quota", "show", "--key", "tenant-z", "--json"))
    assert one["keys"] == {"tenant-z": {"weight": 1, "tiers": {"minute": {"limit": 60}}, "override": False}}
    text = run("quota", "show", "--key", "tenant-a").stdout
    assert "key tenant-a: its override, weight 3" in text and "auto:120 calls per 60 s (sliding, learned 44 so far)" in text
    text = run("quota", "show").stdout
    assert "auto:50 calls per 1 s (sliding, learned 17 so far)" in text and "per key" in text and "tenant-a" in text


def test_an_auto_tier_before_any_learning_shows_where_it_starts(run: Cli) -> None:
    assert run("quota", "set", "second=auto:40").exit_code == 0
    assert last_json(run("quota", "show", "--json"))["tiers"]["second"] == {"limit": "auto:40", "learned": 10}


def test_quota_show_warns_about_an_item_edited_into_an_invalid_state(run: Cli) -> None:
    run.store.put_quotas({"second": -3})
    result = run("quota", "show")
    assert result.exit_code == 0
    assert "invalid" in result.stderr and "last good" in result.stderr
    assert last_json(run("quota", "show", "--json"))["error"] == "second must not be negative (-3)"


def test_quota_show_from_an_installed_copy_before_the_first_run_says_the_defaults_are_unknown(
    run: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("throttler_tools.status.serverless_yml_defaults", lambda stage: None)
    result = run("quota", "show")
    assert result.exit_code == 0, result.output
    assert "unknown here until the throttler's first run" in result.stdout
    shown = last_json(run("quota", "show", "--json"))
    assert shown["quotas"] is None and shown["source"] == "none" and "unknown" in shown["error"]
    # `set` then writes only what is named, and says so.
    result = run("quota", "set", "second=3")
    assert result.exit_code == 0 and "holds only what you name" in result.stderr
    assert stored(run) == {"second": 3}


# ----------------------------------------------------------------------------- set
def test_quota_set_changes_only_the_named_tiers(run: Cli) -> None:
    result = run("quota", "set", "second=5", "minute=100", "day=10000", "concurrency=4")
    assert result.exit_code == 0, result.output
    assert "in force within 5 s" in result.stdout
    assert stored(run) == {"second": 5, "minute": 100, "day": 10000, "concurrency": 4}
    assert (run.store.read_control().quotas or {})["updated_by"].startswith("cli:")

    assert run("quota", "set", "minute=off", "hour=2000").exit_code == 0
    shown = last_json(run("quota", "show", "--json"))["quotas"]
    assert {k: v for k, v in shown.items() if not k.startswith("updated")} == {
        "second": 5, "day": 10000, "hour": 2000, "concurrency": 4,
    }
    assert "state table" in run("quota", "show").stdout


def test_quota_set_without_an_item_keeps_the_unnamed_default_tiers(run: Cli) -> None:
    assert run("quota", "set", "day=5000").exit_code == 0
    config = parse_quota_item(run.store.read_control().quotas or {})
    assert {t.name: t.limit for t in config.tiers} == {"second": 10, "minute": 300, "day": 5000}


def test_quota_set_margin_and_alignment(run: Cli) -> None:
    assert run("quota", "set", "day=1000", "aligned=day", "margin_ms=40").exit_code == 0
    config = parse_quota_item(run.store.read_control().quotas or {})
    assert [t.name for t in config.tiers if t.aligned] == ["day"]
    assert config.margin_ms == 40
    assert "calendar-aligned" in run("quota", "show").stdout


def test_quota_set_an_auto_tier(run: Cli) -> None:
    result = run("quota", "set", "second=auto:50")
    assert result.exit_code == 0, result.output
    assert stored(run)["second"] == "auto:50"
    assert "auto:50 calls per 1 s (sliding, learned 12 so far)" in result.stdout


def test_quota_set_per_key_defaults_and_one_keys_override(run: Cli) -> None:
    assert run("quota", "set", "--per-key", "minute=60", "hour=1000").exit_code == 0
    result = run("quota", "set", "--key", "tenant-a", "minute=120", "weight=2")
    assert result.exit_code == 0, result.output
    assert "key tenant-a's quotas set" in result.stdout and "weight 2" in result.stdout
    assert run("quota", "set", "--key", "tenant-b", "hour=off").exit_code == 0
    assert stored(run) == {
        "second": 10, "minute": 300,
        "per_key": {"minute": 60, "hour": 1000},
        "keys": {"tenant-a": {"minute": 120, "weight": 2}, "tenant-b": {"hour": "off"}},
    }
    config = parse_quota_item(stored(run))
    assert {t.name: t.limit for t in config.key_quota("tenant-a").tiers} == {"minute": 120, "hour": 1000}
    assert {t.name: t.limit for t in config.key_quota("tenant-b").tiers} == {"minute": 60}
    assert {t.name: t.limit for t in config.key_quota("anyone").tiers} == {"minute": 60, "hour": 1000}
    # Removing the last thing a key sets removes its override.
    assert run("quota", "set", "--key", "tenant-b", "hour=1000").exit_code == 0
    assert run("quota", "set", "--per-key", "hour=off").exit_code == 0
    assert stored(run)["per_key"] == {"minute": 60}


@pytest.mark.parametrize(
    ("assignments", "reason"),
    [
        (["second=-1"], "second must be a whole number >= 0 (or auto:MAX, or off), not '-1'"),
        (["minute=1.5"], "minute must be a whole number >= 0"),
        (["second=ten"], "second must be a whole number"),
        (["second=" + "9" * 46], "second is too large (46 digits)"),
        (["second=" + "9" * 23], "second is too large"),
        (["second=1000000000001"], "second is too large (1000000000001): at most 1000000000000"),
        (["second=auto:0"], "auto:MAX needs 1 <= MAX"),
        (["second=auto:lots"], "must be a whole number or auto:MAX"),
        (["second=auto:" + "9" * 46], "must be a whole number or auto:MAX"),
        (["seconds=5"], "unknown tier 'seconds'"),
        (["40d=5"], "longer than 31 days"),
        (["second"], "expected TIER=LIMIT"),
        (["concurrency=0"], "concurrency must be at least 1"),
        (["concurrency=-2"], "concurrency must be a whole number >= 0"),
        (["margin_ms=-5"], "margin_ms must be between"),
        (["margin_ms=nan"], "margin_ms must be between"),
        (["aligned=hour"], "aligned names tiers that are not set: hour"),
        (["latency=fast"], "latency must be one of low, cost"),
        (["signals_scope=tenant"], "signals_scope must be one of stage, key"),
        (["cost_header=bad header"], "cost_header must be an HTTP header name"),
        (["second=off", "minute=off"], "at least one rate tier"),
        (["60s=5"], "two tiers have the same window length"),
        (["weight=2"], "weight is a key's: use quota set --key KEY"),
        (["per_key=5"], "per_key is set with --per-key or --key"),
        ([], "Missing argument 'TIER=LIMIT...'"),
    ],
)
def test_quota_set_refuses_invalid_limits(run: Cli, assignments: list[str], reason: str) -> None:
    result = run("quota", "set", *assignments)
    assert result.exit_code == 2, result.output
    assert reason in one_line_error(result)
    assert run.store.read_control().quotas is None


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--key", "k", "weight=0"], "weight must be a whole number from 1 to 1000, not '0'"),
        (["--key", "k", "weight=1001"], "weight must be a whole number from 1 to 1000"),
        (["--key", "k", "weight=" + "1" * 46], "weight must be a whole number from 1 to 1000"),
        (["--key", "k", "weight=-1"], "weight must be a whole number from 1 to 1000"),
        (["--key", "k", "minute=-1"], "minute must be a whole number >= 0"),
        (["--key", "k", "minutes=5"], "unknown tier 'minutes'"),
        (["--key", "k", "concurrency=2"], "unknown tier 'concurrency'"),
        (["--key", "k", "minute=" + "7" * 46], "minute is too large"),
        (["--key", "", "minute=5"], "--key must be 1-128 printable ASCII characters"),
        (["--key", "k" * 129, "minute=5"], "--key must be 1-128 printable ASCII characters"),
        (["--per-key", "hour=-5"], "hour must be a whole number >= 0"),
        (["--per-key", "hours=5"], "unknown tier 'hours'"),
        (["--per-key", "weight=2"], "weight is a key's"),
        (["--key", "k", "--per-key", "minute=5"], "--key and --per-key exclude each other"),
    ],
)
def test_quota_set_for_keys_refuses_invalid_values(run: Cli, args: list[str], reason: str) -> None:
    result = run("quota", "set", *args)
    assert result.exit_code == 2, result.output
    assert reason in one_line_error(result)
    assert run.store.read_control().quotas is None


def test_a_limit_of_one_reads_one_call_not_one_calls(run: Cli) -> None:
    result = run("quota", "set", "second=1", "minute=60", "concurrency=1")
    assert result.exit_code == 0, result.output
    assert "1 call  per 1 s" in result.stdout and "1 call  in flight at once" in result.stdout
    assert "60 calls per 60 s" in result.stdout and "1 calls" not in result.stdout
