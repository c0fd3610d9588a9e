"""`pause` / `resume`: an operator stops and restarts dispatch; the words say how long, and open-ended means
until `resume`."""

from __future__ import annotations

import time

import pytest

from tests.cli.conftest import Cli, last_json, one_line_error
from throttler.store import ThrottleSignal


def test_pause_for_a_while_then_resume(run: Cli) -> None:
    before = time.time()
    result = run("pause", "--for", "10m")
    assert result.exit_code == 0, result.output
    assert "paused for ~10 min, until 20" in result.stdout and "UTC" in result.stdout
    assert "dispatch stops within 5 s" in result.stdout
    control = run.store.read_control()
    assert control.pause_reason == "operator"
    assert control.pause_until is not None and before + 600 <= control.pause_until <= time.time() + 600
    pause = last_json(run("status", "--json"))["pause"]
    assert pause["paused"] and not pause["until_resume"] and pause["until"] == pytest.approx(before + 600, abs=5)
    assert "~10 min from now (operator)" in run("status").stdout
    resumed = run("resume")
    assert resumed.exit_code == 0
    assert "resumed: lifted the operator's pause; dispatch restarts within 5 s" in resumed.stdout
    assert run.store.read_control().pause_until is None


def test_pause_without_a_duration_lasts_until_resume(run: Cli) -> None:
    assert "paused until `python -m throttler resume`" in run("pause").stdout
    until = run.store.read_control().pause_until
    assert until is not None and until > time.time() + 365 * 86400
    status = last_json(run("status", "--json"))
    assert status["pause"] == {
        "paused": True, "until": None, "until_resume": True, "reason": "operator",
        "operator": {"until": until, "until_resume": True, "reason": "operator"}, "api": None, "keys": {},
    }
    text = run("status").stdout
    assert "paused    until resume" in text
    assert " d " not in text and "99999" not in text and "year" not in text


def test_pause_replaces_a_longer_pause(run: Cli) -> None:
    run("pause")
    run("pause", "--for", "90s")
    until = run.store.read_control().pause_until
    assert until is not None and until < time.time() + 91


def test_resume_lifts_a_pause_a_429_started(run: Cli) -> None:
    run.store.publish_throttle(ThrottleSignal(time.time(), 300.0, "batch-1"))
    pause = last_json(run("status", "--json"))["pause"]
    assert pause["paused"] and pause["api"]["retry_after_s"] == 300 and not pause["until_resume"]
    assert "429" in pause["reason"]
    result = run("resume")
    assert result.exit_code == 0
    assert "lifted the pause of the API's latest 429" in result.stdout
    control = run.store.read_control()
    assert control.pause_until is None and control.throttle is None
    assert last_json(run("status", "--json"))["pause"]["paused"] is False


def test_resume_when_nothing_is_paused_says_so(run: Cli) -> None:
    result = run("resume")
    assert result.exit_code == 0 and "was not paused" in result.stdout


@pytest.mark.parametrize("duration", ["soon", "-5m", "0", "10w", "1.5.2h", "400d", "1" * 46, "1e9s"])
def test_pause_refuses_an_invalid_duration(run: Cli, duration: str) -> None:
    result = run("pause", "--for", duration)
    assert result.exit_code == 2
    assert "invalid duration" in one_line_error(result)
    assert run.store.read_control().pause_until is None
