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


class _Lambda:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[dict[str, object]] = []
        self.error = error

    def invoke(self, **kwargs: object) -> dict[str, object]:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return {"StatusCode": 202}


def test_resume_on_a_deployed_stage_starts_a_run_at_once_or_says_when_dispatch_restarts() -> None:
    # Found by the operator review: a run paused past its deadline ends, so with latency=cost `resume` waited for
    # the next scheduled run (up to a minute) while it printed "within 5 s".
    from botocore.exceptions import ClientError

    from throttler.store.memory import MemoryStateStore
    from throttler_tools.cli.base import StageAws

    for error, expected in [(None, "a run was started: dispatch restarts within 5 s"),
                            (ClientError({"Error": {"Code": "AccessDeniedException"}}, "Invoke"),
                             "next scheduled run, within a minute (could not start one now: AccessDeniedException)")]:
        aws = StageAws("prod")
        aws.store = MemoryStateStore()  # type: ignore[misc]
        fake = _Lambda(error)
        aws._clients["lambda"] = fake
        aws.store.set_pause(2e9, "operator", extend_only=False)
        message = aws.resume(now=1e9)
        assert message.startswith("stage prod resumed: lifted the operator's pause; ") and message.endswith(expected)
        assert [c["FunctionName"] for c in fake.calls] == ["throttler-prod-throttler"]
        assert fake.calls[0]["InvocationType"] == "Event"
        assert aws.resume(now=1e9) == "stage prod was not paused: nothing to lift"
        assert len(fake.calls) == 1


def test_resume_does_not_claim_to_lift_a_429_pause_that_has_ended(run: Cli) -> None:
    run.store.publish_throttle(ThrottleSignal(time.time() - 3600, 5.0, "b1"))
    assert "was not paused: nothing to lift" in run("resume").stdout


@pytest.mark.parametrize(("args", "message"), [
    (("pause", "--for", ""), "--for needs a duration"),  # an empty variable in a script must not pause for ever
    (("pause", "--for", "  "), "--for needs a duration"),
    (("pause", "--stage", ""), "--stage needs a stage name"),
    (("quota", "set", "second=5", "second=6"), "second is given twice"),
])
def test_empty_or_repeated_values_are_usage_errors_and_write_nothing(run: Cli, args: tuple[str, ...], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert message in one_line_error(result)
    assert run.store.read_control().pause_until is None
