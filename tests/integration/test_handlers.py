"""The Lambda handlers end to end on moto's SQS and DynamoDB (built from serverless.yml), in real time:
the throttler handler drives a run, invokes the worker handler in-process, and emits its metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from moto import mock_aws

from handlers.throttler import make_handler as throttler_handler
from handlers.worker import make_handler as worker_handler
from throttler.composition import Composition
from throttler.core.clock import SystemClock
from throttler.core.errors import ConfigError
from throttler.dispatch import config as config_module
from throttler.queue import SqsJobQueue
from throttler.settings import Settings
from throttler.store import DynamoStateStore
from throttler.worker.invoker import InProcessInvoker
from throttler_tools.fakeapi import FakeApi, session_for
from throttler_tools.provision import provision
from throttler_tools.sim.world import job_body


@dataclass
class Context:
    function_name: str = "throttler-local-throttler"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:throttler-local-throttler"
    aws_request_id: str = "req-1"
    remaining_ms: int = 170_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@dataclass
class Stage:
    env: dict[str, str]
    sqs: Any
    dynamodb: Any
    api: FakeApi
    requests: list[str] = field(default_factory=list)

    def composition(self, **overrides: str) -> Composition:
        settings = Settings.from_env({**self.env, "RUN_BUDGET_S": "20", **overrides})
        clients = {"sqs": self.sqs, "dynamodb": self.dynamodb}
        worker = worker_handler(
            lambda: Composition(settings, clients=clients.__getitem__, new_session=lambda n: session_for(self.api))
        )
        return Composition(
            settings,
            clients=clients.__getitem__,
            clock=SystemClock(),
            invoker=lambda c: InProcessInvoker(
                lambda event: worker(event, Context("throttler-local-worker", aws_request_id="w"))
            ),
        )

    def run(self, **overrides: str) -> dict[str, Any]:
        composition = self.composition(**overrides)
        return throttler_handler(lambda: composition)({"source": "aws.events"}, Context())

    @property
    def store(self) -> DynamoStateStore:
        return DynamoStateStore(self.dynamodb, self.env["STATE_TABLE"])

    def enqueue(self, jobs: list[tuple[str, str, str]]) -> None:
        SqsJobQueue(self.sqs, self.env["JOBS_QUEUE_URL"], self.env["DLQ_URL"]).send(jobs)

    def depth(self) -> int:
        return SqsJobQueue(self.sqs, self.env["JOBS_QUEUE_URL"], self.env["DLQ_URL"]).depth().total


@pytest.fixture
def stage() -> Iterator[Stage]:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        env = provision(sqs, dynamodb, "local")
        env["DEFAULT_QUOTAS"] = "second=20 minute=600 margin_ms=20"
        made = Stage(env, sqs, dynamodb, FakeApi(tiers=[(1, 20), (60, 600)], clock=SystemClock()))
        for client in (sqs, dynamodb):
            client.meta.events.register("before-call.*.*", lambda model, **kw: made.requests.append(model.name))
        yield made


def metrics_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if '"_aws"' in line]


def test_handlers_drain_the_queue_within_the_quota(stage: Stage, capsys: pytest.CaptureFixture[str]) -> None:
    stage.enqueue([(job_body("/ok", f"g{i % 4}", i), f"g{i % 4}", f"h-{i}") for i in range(40)])
    summary = stage.run()
    assert summary["succeeded"] == 40 and summary["dead_lettered"] == 0
    assert stage.depth() == 0 and stage.api.violations == 0 and stage.api.order_violations == 0
    emitted = metrics_lines(capsys.readouterr().out)
    throttler_metrics = next(m for m in emitted if "Succeeded" in m)
    dimensions = throttler_metrics["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]
    assert throttler_metrics["Succeeded"] in (40.0, [40.0]) and throttler_metrics["stage"] == "local"
    assert "stage" in dimensions and throttler_metrics["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Throttler"


def test_invalid_quota_configuration_falls_back_to_the_last_good_one_with_a_metric(
    stage: Stage, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The logger's calls, not caplog's records: other tests reconfigure logging (the simulation quiets it).
    errors: list[str] = []
    monkeypatch.setattr(config_module.logger, "error", lambda msg, *a, **kw: errors.append(str(msg)))
    stage.store.put_quotas({"second": 2, "minute": 100, "margin_ms": 20})
    stage.enqueue([(job_body("/ok", "a", 0), "a", "a-0")])
    stage.run()  # sees a good item and remembers it
    stage.store.put_quotas({"second": -5})  # an operator's typo in the console
    stage.enqueue([(job_body("/ok", "a", i), "a", f"a-{i}") for i in range(1, 7)])
    capsys.readouterr()
    summary = stage.run()
    assert summary["invalid_config"] and summary["succeeded"] == 6
    assert stage.api.max_in_window(1) <= 2  # the last good configuration still applies
    emitted = metrics_lines(capsys.readouterr().out)
    assert "invalid quota configuration" in errors
    assert any(m.get("InvalidQuotaConfig") in (1.0, [1.0]) for m in emitted)


def test_without_any_good_configuration_nothing_is_dispatched(stage: Stage) -> None:
    stage.store.put_quotas({"minute": "lots"})
    stage.enqueue([(job_body("/ok", "a", 0), "a", "a-0")])
    summary = stage.run(DEFAULT_QUOTAS="", RUN_BUDGET_S="3")
    assert summary["dispatched"] == 0 and summary["invalid_config"]
    assert stage.api.calls == [] and stage.depth() == 1


def test_an_idle_minute_costs_one_short_invocation(stage: Stage) -> None:
    stage.run()  # the first run of a stage records its settings and its quota: not an idle minute's cost
    stage.requests.clear()
    summary = stage.run()
    assert summary["dispatched"] == 0 and summary["ended_at"] - summary["started_at"] < 1.0
    # lease, control, usage, one receive, lease release
    assert len(stage.requests) <= 6, stage.requests


def test_settings_refuse_missing_resource_names_and_a_bad_allow_list() -> None:
    with pytest.raises(ConfigError, match="JOBS_QUEUE_URL"):
        Settings.from_env({"THROTTLER_STAGE": "dev"})
    env = {
        "THROTTLER_STAGE": "dev",
        "JOBS_QUEUE_URL": "q",
        "DLQ_URL": "d",
        "STATE_TABLE": "t",
        "WORKER_FUNCTION": "w",
        "ALLOWED_HOSTS": "*",
    }
    with pytest.raises(ConfigError):
        Composition(Settings.from_env(env)).validation()  # `*` is refused outside the local stage
