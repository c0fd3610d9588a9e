"""`python -m throttler local` in-process: ready with every resource, then SIGTERM ends it cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.request

import boto3
from click.testing import CliRunner

from tests.cli.conftest import one_line_error
from throttler_tools.cli import cli
from throttler_tools.local import port_is_free


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_provisioned(endpoint: str, deadline_s: float = 30.0, gave_up: threading.Event | None = None) -> bool:
    """Poll the emulator until the stage's queues and table exist (the command prints its banner then)."""
    session = boto3.session.Session()
    kwargs = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    sqs, dynamodb = session.client("sqs", **kwargs), session.client("dynamodb", **kwargs)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and not (gave_up and gave_up.is_set()):
        try:
            sqs.get_queue_url(QueueName="throttler-local-jobs.fifo")
            sqs.get_queue_url(QueueName="throttler-local-dlq.fifo")
            dynamodb.describe_table(TableName="throttler-local-state")
            return True
        except Exception:
            time.sleep(0.05)
    return False


def test_local_runs_until_sigterm_and_exits_0_with_its_port_closed_and_nothing_left_behind() -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    threads_before = set(threading.enumerate())
    environment_before = dict(os.environ)
    handler_before = signal.getsignal(signal.SIGTERM)
    provisioned: list[bool] = []
    returned = threading.Event()

    def terminate_when_ready() -> None:
        provisioned.append(wait_until_provisioned(endpoint, gave_up=returned))
        if provisioned[-1]:
            os.kill(os.getpid(), signal.SIGTERM)  # the command's own handler takes it

    killer = threading.Thread(target=terminate_when_ready)
    killer.start()
    try:
        result = CliRunner().invoke(cli, ["local", "--port", str(port), "--tick-seconds", "1"], prog_name="python -m throttler")
    finally:
        returned.set()  # a command that failed to start must not leave a SIGTERM for the test run itself
        killer.join()

    assert provisioned == [True]
    assert result.exit_code == 0, result.output
    banner = result.stdout
    assert f"ready at {endpoint} (region us-east-1)" in banner
    for name in (
        "throttler-local-jobs.fifo",
        "throttler-local-dlq.fifo",
        "throttler-local-state",
        "throttler-local-throttler",
        "throttler-local-worker",
    ):
        assert name in banner
    assert f"export AWS_ENDPOINT_URL={endpoint}" in banner
    assert "local stack stopped" in result.stderr
    assert port_is_free(port)
    assert dict(os.environ) == environment_before
    assert signal.getsignal(signal.SIGTERM) is handler_before
    stray = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    assert stray == []


def test_local_on_a_port_in_use_fails_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["local", "--port", str(port)], prog_name="python -m throttler")
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is in use" in one_line_error(result)


def test_local_refuses_a_bad_tick() -> None:
    result = CliRunner().invoke(cli, ["local", "--tick-seconds", "0"], prog_name="python -m throttler")
    assert result.exit_code == 2
    assert "--tick-seconds" in one_line_error(result)


def test_local_with_dashboard_serves_the_stage_page_and_prints_its_url() -> None:
    port, board_port = free_port(), free_port()
    endpoint, url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{board_port}/"
    seen: list[dict[str, object]] = []
    returned = threading.Event()

    def look_then_terminate() -> None:
        if not wait_until_provisioned(endpoint, gave_up=returned):
            return
        end = time.monotonic() + 30
        while time.monotonic() < end and not returned.is_set() and not seen:
            try:
                with urllib.request.urlopen(url + "api/state", timeout=10) as response:
                    seen.append(json.loads(response.read()))
            except OSError:
                time.sleep(0.05)  # the page is served right after the stage is provisioned
        if not returned.is_set():
            os.kill(os.getpid(), signal.SIGTERM)  # the command's own handler takes it

    killer = threading.Thread(target=look_then_terminate)
    killer.start()
    try:
        result = CliRunner().invoke(cli, ["local", "--port", str(port), "--tick-seconds", "1", "--dashboard",
                                          "--dashboard-port", str(board_port)], prog_name="python -m throttler")
    finally:
        returned.set()
        killer.join()

    assert result.exit_code == 0, result.output
    assert f"dashboard     {url}" in result.stdout
    assert len(seen) == 1 and seen[0]["stage"] == "local" and seen[0]["error"] is None, seen
    assert port_is_free(board_port)
