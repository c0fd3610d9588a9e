"""The local stack as a user meets it: a plain boto3 producer against the endpoint, the scheduled
throttler, the in-process worker, a real HTTP API; then a clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import boto3

from throttler import composition
from throttler_tools.fakeapi import FakeApi, FakeApiServer
from throttler_tools.local import LocalStack, port_is_free
from throttler.store import DynamoStateStore

ROOT = Path(__file__).resolve().parents[2]


def eventually(condition: Callable[[], bool], within_s: float = 30.0) -> bool:
    """Wait for an outcome of the running stack (polling, with a deadline)."""
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def plain_sqs(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.session.Session().client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_a_plain_boto3_producer_works_against_the_local_stack() -> None:
    api = FakeApi(tiers=[(1, 5)])
    server = FakeApiServer(api).start()
    threads_before = set(threading.enumerate())
    environment_before = dict(os.environ)
    wiring_before = composition.wiring()
    try:
        with LocalStack(port=0, tick_seconds=1) as stack:
            sqs = plain_sqs(stack.endpoint)
            url = sqs.get_queue_url(QueueName="throttler-local-jobs.fifo")["QueueUrl"]
            for seq in range(4):
                body = {
                    "task": "http",
                    "payload": {"method": "POST", "url": f"{server.url}/ok?group=c1&seq={seq}", "json": {"seq": seq}},
                }
                sqs.send_message(
                    QueueUrl=url, MessageBody=json.dumps(body), MessageGroupId="c1", MessageDeduplicationId=f"job-{seq}"
                )

            def drained() -> bool:
                attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
                return (
                    len(api.successes_by_key()) == 4
                    and attributes["ApproximateNumberOfMessages"] == "0"
                    and attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
                )

            assert eventually(drained)
            assert [c.seq for c in api.calls] == [0, 1, 2, 3]
            assert sorted(api.successes_by_key()) == [f"job-{i}" for i in range(4)]
            assert api.violations == 0
            port = stack.port
        assert port_is_free(port)
        assert dict(os.environ) == environment_before
        assert composition.wiring() is wiring_before
    finally:
        server.stop()
    # The stack closed its connections: the API's per-connection threads end (asynchronously) too.
    assert eventually(lambda: [t for t in threading.enumerate() if t not in threads_before and t.is_alive()] == [], 5)


def test_stopping_ends_the_run_in_progress_and_leaves_the_rest_queued() -> None:
    api = FakeApi(tiers=[(1, 1)])
    server = FakeApiServer(api).start()
    try:
        stack = LocalStack(port=0, tick_seconds=3600).start(schedule=False)
        try:
            DynamoStateStore(stack.client("dynamodb"), stack.env["STATE_TABLE"]).put_quotas({"second": 1})
            sqs = plain_sqs(stack.endpoint)
            for seq in range(30):
                body = {"task": "http", "payload": {"method": "GET", "url": f"{server.url}/ok?group=g&seq={seq}"}}
                sqs.send_message(
                    QueueUrl=stack.env["JOBS_QUEUE_URL"],
                    MessageBody=json.dumps(body),
                    MessageGroupId="g",
                    MessageDeduplicationId=str(seq),
                )
            stack.start_scheduler()
            assert eventually(lambda: len(api.calls) >= 2)
        finally:
            stack.stop()
        # One run of up to an hour was under way: stopping ended it after a few calls, in order, and it
        # settled and returned what it held instead of running on.
        summary = stack.last_summary
        assert summary is not None and stack.runs == 1
        assert summary["dispatched"] - summary["skipped"] == len(api.calls) < 30
        assert [c.seq for c in api.calls] == list(range(len(api.calls)))
    finally:
        server.stop()


def test_the_local_command_stops_on_ctrl_c() -> None:
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "throttler", "local", "--port", str(port), "--tick-seconds", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert f"ready at http://127.0.0.1:{port}" in banner, banner
        sqs = plain_sqs(f"http://127.0.0.1:{port}")
        assert sqs.get_queue_url(QueueName="throttler-local-dlq.fifo")["QueueUrl"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert port_is_free(port)
        assert "local stack stopped" in process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
