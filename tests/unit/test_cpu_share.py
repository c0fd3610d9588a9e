"""A function whose memory size gives it too little CPU for its rate says so in its logs."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from throttler import observability
from throttler.observability import CPU_SHARE_WARN, composed_handler, cpu_share_used, warn_when_cpu_bound


def lambda_context(memory_mb: int | str | None) -> Any:
    return SimpleNamespace(
        function_name="throttler-test-throttler",
        aws_request_id="r1",
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:throttler-test-throttler",
        memory_limit_in_mb=memory_mb,
        get_remaining_time_in_millis=lambda: 60_000,
    )


class Warnings:
    """The warnings the shared logger was asked to write (other tests reconfigure its handlers and
    propagation, so the records are taken where they are made)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lines: list[SimpleNamespace] = []
        monkeypatch.setattr(observability.logger, "warning", self.warning)

    def warning(self, message: str, *args: Any, extra: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.lines.append(SimpleNamespace(message=message % args, **(extra or {})))

    def taken(self) -> list[SimpleNamespace]:
        lines, self.lines = self.lines, []
        return lines


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Warnings:
    return Warnings(monkeypatch)


def test_the_share_is_cpu_time_over_what_the_memory_size_gives() -> None:
    # 1,769 MB is one vCPU: half a second of CPU in a second is half the share.
    assert cpu_share_used(0.5, 1.0, 1769) == pytest.approx(0.5)
    assert cpu_share_used(0.5, 10.0, 256) == pytest.approx(0.5 / (10 * 256 / 1769))


def test_a_busy_invocation_warns_and_a_light_one_does_not(logged: Warnings) -> None:
    share = 256 / observability.VCPU_MB
    light = warn_when_cpu_bound(0.5 * CPU_SHARE_WARN * share * 60, 60.0, lambda_context(256))
    assert light is not None and light < CPU_SHARE_WARN
    assert logged.taken() == []
    busy = warn_when_cpu_bound(0.9 * share * 60, 60.0, lambda_context(256))
    assert busy == pytest.approx(0.9)
    [warning] = logged.taken()
    assert "CPU-bound" in warning.message and "throttlerMemory" in warning.message
    assert warning.cpu_share_used == pytest.approx(0.9)


def test_short_invocations_and_contexts_without_a_memory_size_say_nothing(logged: Warnings) -> None:
    assert warn_when_cpu_bound(1.0, observability.CPU_WATCH_MIN_S / 2, lambda_context(128)) is None
    assert warn_when_cpu_bound(100.0, 60.0, lambda_context(None)) is None
    assert warn_when_cpu_bound(100.0, 60.0, SimpleNamespace(memory_limit_in_mb="n/a")) is None
    assert logged.taken() == []


def test_every_handler_watches_its_cpu(monkeypatch: pytest.MonkeyPatch, logged: Warnings) -> None:
    # The body took 10 s of wall time and 9 s of CPU at 128 MB (0.07 vCPU): far past its share.
    cpu, wall = itertools.count(0.0, 9.0), itertools.count(0.0, 10.0)
    monkeypatch.setattr(observability.time, "process_time", lambda: next(cpu))
    monkeypatch.setattr(observability.time, "monotonic", lambda: next(wall))
    composition = SimpleNamespace(settings=SimpleNamespace(stage="test"))
    handler = composed_handler(lambda: composition, lambda c, event, context: {"ok": True})
    assert handler({}, lambda_context(128)) == {"ok": True}
    [warning] = logged.taken()
    assert warning.cpu_share_used > 1


@pytest.mark.parametrize("context", [lambda_context(float("inf")), lambda_context("1e999")])  # type: ignore[arg-type]
def test_the_watch_never_changes_what_a_handler_returns_or_raises(monkeypatch: pytest.MonkeyPatch, context: Any) -> None:
    # Found by the review: an infinite memory size raised OverflowError in the handler's `finally`.
    cpu, wall = itertools.count(0.0, 9.0), itertools.count(0.0, 10.0)
    monkeypatch.setattr(observability.time, "process_time", lambda: next(cpu))
    monkeypatch.setattr(observability.time, "monotonic", lambda: next(wall))
    composition = SimpleNamespace(settings=SimpleNamespace(stage="test"))
    assert composed_handler(lambda: composition, lambda c, event, ctx: {"ok": True})({}, context) == {"ok": True}

    def fails(c: Any, event: Any, ctx: Any) -> Any:
        raise KeyError("the handler's own error")

    with pytest.raises(KeyError, match="the handler's own error"):
        composed_handler(lambda: composition, fails)({}, context)
