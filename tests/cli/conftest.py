"""Fixtures for the command line: one AWS emulator (moto's server on a free port) per module with stage
`local` provisioned from serverless.yml, emptied and provisioned again before each test, and a CliRunner
that calls the CLI in-process with AWS_ENDPOINT_URL pointing at it. No scheduler runs: the commands'
effects stay where the test can see them."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from click.testing import CliRunner, Result

from throttler.naming import StageNames
from throttler.store import DynamoStateStore
from throttler_tools.cli import cli

STAGE = "local"
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Settings the CLI reads from the environment: each test starts without them.
CLEARED = ("THROTTLER_STAGE", "ALLOWED_HOSTS", "MAX_MESSAGE_BYTES", "TASKS_MODULE", "SECRET_HEADERS",
           "AWS_PROFILE", "AWS_SESSION_TOKEN")


@dataclass
class Emulator:
    """moto's server on 127.0.0.1 with one stage's queues and table."""

    endpoint: str
    env: dict[str, str] = field(default_factory=dict)  # the functions' environment, resolved
    _clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = boto3.session.Session().client(  # type: ignore[call-overload]
                service, endpoint_url=self.endpoint, region_name=REGION,
                aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            )
        return self._clients[service]

    def reset(self) -> None:
        """Empty the emulator and create the stage's resources again (same names and URLs)."""
        from throttler_tools.provision import provision

        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass
        self.env = provision(self.client("sqs"), self.client("dynamodb"), STAGE)

    @property
    def aws_env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, **CREDENTIALS}


@dataclass
class Cli:
    """Runs `python -m throttler ...` in-process against the module's emulator."""

    stack: Emulator
    runner: CliRunner

    def __call__(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        return self.runner.invoke(cli, list(args), input=input, env=env, catch_exceptions=False, prog_name="python -m throttler")

    @property
    def names(self) -> StageNames:
        return StageNames.of(STAGE)

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
    assert result.stdout == "", result.stdout
    return lines[0]


def last_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def module_stack() -> Iterator[Emulator]:
    from moto.server import ThreadedMotoServer

    from throttler_tools import stackdef
    from throttler_tools.moto_patches import patch_moto_fifo_order

    raw = stackdef.load_raw()  # parsed once: each test provisions the stage again from it
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stackdef, "load_raw", lambda *args: copy.deepcopy(raw))
        yield from _emulator(ThreadedMotoServer, patch_moto_fifo_order)


def _emulator(server_class: Any, patch_moto_fifo_order: Any) -> Iterator[Emulator]:
    patch_moto_fifo_order()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = server_class(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    emulator = Emulator(f"http://{host}:{port}")
    try:
        emulator.reset()
        yield emulator
    finally:
        # moto's state lives in this process, shared by every server and mock in it: leave it clean.
        with contextlib.suppress(OSError):
            request = urllib.request.Request(f"{emulator.endpoint}/moto-api/reset", method="POST")
            urllib.request.urlopen(request, timeout=10).close()
        server.stop()


@pytest.fixture
def run(module_stack: Emulator, monkeypatch: pytest.MonkeyPatch) -> Cli:
    module_stack.reset()
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in module_stack.aws_env.items():
        monkeypatch.setenv(name, value)
    return Cli(module_stack, CliRunner())
