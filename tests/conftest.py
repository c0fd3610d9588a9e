"""Shared fixtures: an AWS stage in moto built from serverless.yml, on freezegun's virtual time."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Throttler")
os.environ.setdefault("POWERTOOLS_DEV", "false")

from freezegun import freeze_time
from moto import mock_aws

from throttler.core.clock import FakeClock
from throttler.composition import build_run, build_worker
from throttler.dispatcher import RunSummary, ThrottlerRun
from throttler_tools.fakeapi import FakeApi, session_for
from throttler.invoker import InProcessInvoker
from throttler_tools.provision import provision
from throttler.queue import JobQueue, SqsJobQueue
from throttler.settings import Settings
from throttler.store import DynamoStateStore
from throttler.worker import InlineExecutor, WorkerService

START = "2026-03-02 09:00:00"


def http_job(path: str, group: str | None = None, seq: int | None = None, **extra: Any) -> str:
    query = f"?group={group}&seq={seq}" if group is not None and seq is not None else ""
    return json.dumps({"task": "http", "payload": {"method": "POST", "url": f"http://127.0.0.1{path}{query}", **extra}})


@dataclass
class Stage:
    """A stage in moto plus the fake API, the clock and ways to run the pipeline."""

    frozen: Any
    clock: FakeClock
    sqs: Any
    dynamodb: Any
    env: dict[str, str]
    api: FakeApi
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return Settings.from_env({**self.env, **self.extra_env})

    @property
    def queue(self) -> JobQueue:
        return SqsJobQueue(self.sqs, self.env["JOBS_QUEUE_URL"], self.env["DLQ_URL"], clock=self.clock)

    @property
    def store(self) -> DynamoStateStore:
        return DynamoStateStore(self.dynamodb, self.env["STATE_TABLE"])

    def client(self, name: str) -> Any:
        return {"sqs": self.sqs, "dynamodb": self.dynamodb}[name]

    def worker(self) -> WorkerService:
        return build_worker(
            self.settings,
            clock=self.clock,
            get_client=self.client,
            session=session_for(self.api),
            executor_factory=lambda n: InlineExecutor(),
        )

    def make_run(self, owner: str | None = None, invoker: Any = None) -> ThrottlerRun:
        return build_run(
            self.settings,
            invoker=invoker or InProcessInvoker(self.worker().run_batch),
            clock=self.clock,
            get_client=self.client,
            owner=owner,
        )

    def run(self, seconds: float = 57.0) -> RunSummary:
        return self.make_run().run(self.clock.now() + seconds)

    def set_quotas(self, **tiers: Any) -> None:
        self.store.put_quotas(tiers)

    def enqueue(self, jobs: list[tuple[str, str, str]]) -> None:
        """(body, group, job id) triples, in order."""
        self.queue.send(jobs)

    def advance(self, seconds: float) -> None:
        self.clock.sleep(seconds)

    def drain(self, max_runs: int = 20, gap_s: float = 3.0) -> list[RunSummary]:
        """Scheduled runs until the queue holds nothing (visible or not) and nothing is left to retry."""
        summaries = []
        for _ in range(max_runs):
            summaries.append(self.run())
            if self.depth() == 0:
                break
            self.advance(gap_s)
        return summaries

    def depth(self, url: str | None = None) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url or self.env["JOBS_QUEUE_URL"],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def dlq_messages(self) -> list[dict[str, Any]]:
        """Every DLQ message (received once, then made visible again)."""
        found: dict[str, dict[str, Any]] = {}
        while True:
            response = self.sqs.receive_message(
                QueueUrl=self.env["DLQ_URL"], MaxNumberOfMessages=10, VisibilityTimeout=30,
                MessageAttributeNames=["All"], MessageSystemAttributeNames=["MessageGroupId"],
            )
            messages = response.get("Messages", [])
            if not messages:
                break
            for m in messages:
                found[m["MessageId"]] = m
        for m in found.values():
            self.sqs.change_message_visibility(
                QueueUrl=self.env["DLQ_URL"], ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
            )
        if found:
            self.advance(0.001)  # under frozen time a message released "now" is visible only after now
        return list(found.values())


@pytest.fixture
def stage() -> Iterator[Stage]:
    # moto 5.2 can hand out a FIFO group's later message first after a release; SQS never does.
    # Patched for every test (idempotent), so results do not depend on which tests ran before.
    from throttler_tools.moto_patches import patch_moto_fifo_order

    patch_moto_fifo_order()
    with freeze_time(START) as frozen, mock_aws():
        clock = FakeClock(start=time.time(), on_advance=lambda s: frozen.tick(s))
        sqs = boto3.client("sqs", region_name="us-east-1")
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        env = provision(sqs, dynamodb, "local")
        env["DEFAULT_QUOTAS"] = "second=20 minute=600"
        env["RETRY_BASE_S"] = "5"
        api = FakeApi(tiers=[(1, 20), (60, 600)], clock=clock)
        yield Stage(frozen, clock, sqs, dynamodb, env, api)
