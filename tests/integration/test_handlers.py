"""The Lambda handlers end to end under moto, wired with the in-process invoker seam."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import handlers.throttler as throttler_handler
import handlers.worker as worker_handler
from tests.conftest import Stage, http_job
from throttler import composition
from throttler_tools.fakeapi import session_for
from throttler.invoker import InProcessInvoker
from throttler.settings import Settings
from throttler.worker import InlineExecutor


@dataclass
class Context:
    function_name: str = "throttler-local-throttler"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:throttler-local-throttler"
    aws_request_id: str = "req-1"
    remaining_ms: int = 90_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def wired(stage: Stage, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stage]:
    for name, value in stage.env.items():
        monkeypatch.setenv(name, value)
    composition.configure(composition.Wiring(
        clock=stage.clock,
        get_client=stage.client,
        invoker_factory=lambda s: InProcessInvoker(lambda event: worker_handler.handler(event, Context(aws_request_id="w"))),
        session=session_for(stage.api),
        executor_factory=lambda n: InlineExecutor(),
    ))
    yield stage
    composition.configure(None)


def test_handlers_drain_the_queue_within_the_quota(wired: Stage, capsys: pytest.CaptureFixture[str]) -> None:
    wired.enqueue([(http_job("/ok", f"g{i % 4}", i), f"g{i % 4}", f"h-{i}") for i in range(40)])
    summary = throttler_handler.handler({"source": "aws.events"}, Context())
    assert summary["succeeded"] == 40 and summary["dead_lettered"] == 0
    assert wired.depth() == 0 and wired.api.violations == 0 and wired.api.order_violations == 0
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    metrics = emitted[-1]
    assert metrics["Succeeded"] in (40.0, [40.0]) and metrics["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Throttler"


def test_invalid_quota_configuration_falls_back_to_the_last_good_one_with_a_metric(
    wired: Stage, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    wired.set_quotas(second=2, minute=100)
    wired.enqueue([(http_job("/ok", "a", 0), "a", "a-0")])
    throttler_handler.handler({}, Context())  # sees a good item and remembers it
    wired.store.put_quotas({"second": -5})  # an operator's typo in the console
    wired.enqueue([(http_job("/ok", "a", i), "a", f"a-{i}") for i in range(1, 7)])
    wired.advance(5)
    capsys.readouterr()
    summary = throttler_handler.handler({}, Context(aws_request_id="req-2"))
    assert summary["invalid_config"] and summary["succeeded"] == 6
    assert wired.api.max_in_window(1) <= 2  # the last good configuration still applies
    out = capsys.readouterr().out
    emitted = [json.loads(line) for line in out.splitlines() if '"_aws"' in line]
    assert "invalid quota configuration" in caplog.text and emitted[-1]["InvalidQuotaConfig"] in (1.0, [1.0])


def test_without_any_good_configuration_nothing_is_dispatched(wired: Stage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFAULT_QUOTAS", "")
    wired.store.put_quotas({"minute": "lots"})
    wired.enqueue([(http_job("/ok", "a", 0), "a", "a-0")])
    summary = throttler_handler.handler({}, Context())
    assert summary["dispatched"] == 0 and summary["invalid_config"]
    assert wired.api.calls == [] and wired.depth() == 1


def test_an_idle_minute_costs_one_short_invocation(wired: Stage) -> None:
    requests_made: list[str] = []
    for client in (wired.sqs, wired.dynamodb):
        client.meta.events.register("before-call.*.*", lambda model, **kw: requests_made.append(model.name))
    started = wired.clock.now()
    summary = throttler_handler.handler({}, Context())
    assert summary["dispatched"] == 0
    assert wired.clock.now() - started < 1.0
    assert len(requests_made) <= 6, requests_made  # lease, control, usage, one receive, release


def test_settings_refuse_missing_resource_names() -> None:
    from throttler.core.errors import ConfigError

    with pytest.raises(ConfigError, match="JOBS_QUEUE_URL"):
        Settings.from_env({"THROTTLER_STAGE": "dev"})
