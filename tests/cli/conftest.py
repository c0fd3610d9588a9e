"""Fixtures for the command line: one local stack (moto's server on a free port) per module, emptied
and provisioned again before each test, and a CliRunner that calls the CLI in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner, Result

from throttler_tools.cli import cli
from throttler_tools.local import LocalStack
from throttler.store import DynamoStateStore


@dataclass
class Cli:
    """Runs `python -m throttler ...` in-process against the module's local stack."""

    stack: LocalStack
    runner: CliRunner

    def __call__(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        return self.runner.invoke(cli, list(args), input=input, env=env, catch_exceptions=False, prog_name="python -m throttler")

    @property
    def sqs(self) -> Any:
        return self.stack.client("sqs")

    @property
    def store(self) -> DynamoStateStore:
        return DynamoStateStore(self.stack.client("dynamodb"), self.stack.env["STATE_TABLE"])

    @property
    def jobs_url(self) -> str:
        return self.stack.env["JOBS_QUEUE_URL"]

    @property
    def dlq_url(self) -> str:
        return self.stack.env["DLQ_URL"]

    def messages(self, url: str | None = None) -> list[dict[str, Any]]:
        """Every message of a queue, received once (all groups, up to 10 per group) and released again."""
        url = url or self.jobs_url
        found: dict[str, dict[str, Any]] = {}
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=30,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["MessageGroupId", "MessageDeduplicationId"],
            ).get("Messages", [])
            if not batch:
                break
            found.update((m["MessageId"], m) for m in batch)
        for m in found.values():
            self.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
        return list(found.values())

    def take_all(self, url: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Receive and delete every message, as a consumer would: per group, in delivery order."""
        url = url or self.jobs_url
        groups: dict[str, list[dict[str, Any]]] = {}
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=30,
                MessageSystemAttributeNames=["MessageGroupId"],
            ).get("Messages", [])
            if not batch:
                return groups
            for m in batch:
                groups.setdefault(m["Attributes"]["MessageGroupId"], []).append(m)
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    def depth(self, url: str | None = None) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url or self.jobs_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def one_line_error(result: Result) -> str:
    """The error a failing command printed: exactly one line on stderr, nothing on stdout, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def last_json(result: Result) -> Any:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def module_stack() -> Iterator[LocalStack]:
    # No scheduler: the commands' effects stay where the test can see them.
    stack = LocalStack(port=0, tick_seconds=3600).start(schedule=False)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def run(module_stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Cli:
    module_stack.reset()
    for name in ("THROTTLER_STAGE", "ALLOWED_HOSTS", "MAX_MESSAGE_BYTES", "TASKS_MODULE"):
        monkeypatch.delenv(name, raising=False)
    return Cli(module_stack, CliRunner())
