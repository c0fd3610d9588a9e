"""The local stack as a user meets it: `python -m throttler local --echo-api` in a terminal, the variables it
prints exported in another, a job enqueued with the producer, the request seen at the echo API; Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from tests.e2e.conftest import ROOT, eventually, free_port, get_json, plain_client
from tests.unit.http_servers import LocalApi
from throttler_tools.local import LocalStack, port_is_free

PRODUCE = """
from throttler.client import Producer
producer = Producer.for_stage("local")
print(producer.send("http", {"method": "POST", "url": "%s/hello", "json": {"hi": 1}}, group="customer-42"))
"""


def read_banner(process: subprocess.Popen[str], within_s: float = 60.0) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("Ctrl-C"):
            return lines
    raise AssertionError(f"no banner: {lines}")


def exported(lines: list[str]) -> dict[str, str]:
    line = next(x for x in lines if x.strip().startswith("export "))
    return dict(pair.split("=", 1) for pair in shlex.split(line.strip()[len("export "):]))


def test_a_job_enqueued_with_the_printed_variables_reaches_the_echo_api_and_ctrl_c_stops_cleanly() -> None:
    port, echo_port = free_port(), free_port()
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "THROTTLER_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "throttler", "local", "--port", str(port), "--echo-api", "--echo-port", str(echo_port),
         "--tick-seconds", "2", "--json-logs"],
        cwd=ROOT, env=clean_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr or []), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        banner = read_banner(process)
        text = "\n".join(banner)
        assert f"ready at http://127.0.0.1:{port} (region us-east-1)" in text
        env = exported(banner)
        # Every variable boto3, the AWS CLI v2, a Producer and the command line need (issue 15: the region twice).
        assert env == {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_REGION": "us-east-1",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        assert f"aws --endpoint-url http://127.0.0.1:{port} sqs " in text  # the AWS CLI v1 form
        echo = f"http://127.0.0.1:{echo_port}"
        assert f"echo API      {echo}" in text

        # A producer in another shell: only the printed variables (no region, no credentials of its own).
        enqueued_at = time.monotonic()
        produced = subprocess.run([sys.executable, "-c", PRODUCE % echo], cwd=ROOT, env={**clean_env, **env},
                                  capture_output=True, text=True, timeout=60)
        assert produced.returncode == 0, produced.stderr
        job_id = produced.stdout.strip()

        def arrived() -> list[dict[str, Any]]:
            return [r for r in get_json(f"{echo}/requests") if r["headers"].get("Idempotency-Key") == job_id]

        assert eventually(lambda: bool(arrived()), within_s=10)
        assert time.monotonic() - enqueued_at < 10
        seen = arrived()[0]
        assert (seen["method"], seen["path"], seen["body_bytes"]) == ("POST", "/hello", len('{"hi": 1}'))

        # Let a run end after the worker ran in this process: its lines must still name the throttler.
        assert eventually(lambda: any('"run finished"' in line and '"succeeded":1' in line
                                      for line in stderr), within_s=15)
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=90)
        reader.join(timeout=5)
    assert code == 0
    assert port_is_free(port) and port_is_free(echo_port)
    records = [json.loads(line) for line in stderr if line.startswith("{")]
    finished = [r for r in records if r.get("message") == "run finished"]
    assert finished and {r["function_name"] for r in finished} == {"throttler-local-throttler"}
    assert {r["function_name"] for r in records if r.get("message") == "request received"} == {"echo-api"}
    assert stderr[-1].strip() == "local stack stopped"


def test_the_human_log_format_is_one_short_line_per_event() -> None:
    port = free_port()
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "THROTTLER_"))}
    process = subprocess.Popen([sys.executable, "-m", "throttler", "local", "--port", str(port), "--tick-seconds", "1"],
                               cwd=ROOT, env=clean_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        read_banner(process)
        time.sleep(2.5)  # a few hand-overs: one line each
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=90)
    assert process.returncode == 0
    lines = [line for line in err.splitlines() if line.strip()]
    finished = [line for line in lines if "run finished" in line]
    assert finished, err
    for line in finished:
        assert re.match(r"^\d\d:\d\d:\d\d\.\d{3} throttler +run finished  end=", line), line
        assert len(line) < 200 and "{" not in line


def test_stopping_ends_the_run_in_progress_and_leaves_the_rest_queued() -> None:
    with LocalApi() as api:
        stack = LocalStack(port=0, tick_seconds=3600, env={"DEFAULT_LATENCY": "low"}).start(schedule=False)
        try:
            from throttler.store import DynamoStateStore

            DynamoStateStore(stack.client("dynamodb"), stack.env["STATE_TABLE"]).put_quotas({"second": 1, "margin_ms": 50})
            sqs = plain_client("sqs", stack.endpoint)
            for seq in range(30):
                body = {"task": "http", "payload": {"method": "GET", "url": f"{api.url}/ok?seq={seq}"}}
                sqs.send_message(QueueUrl=stack.env["JOBS_QUEUE_URL"], MessageBody=json.dumps(body),
                                 MessageGroupId="g", MessageDeduplicationId=str(seq))
            stack.start_scheduler()
            assert eventually(lambda: len(api.seen) >= 2)
        finally:
            stack.stop()
        calls = [int(s.path.split("seq=")[1]) for s in api.seen]
    # One run of up to two minutes was under way: stopping ended it after a few calls, in order; it settled
    # what was in flight and put the rest back instead of running on.
    assert stack.runs == 1 and stack.last_summary is not None
    summary = stack.last_summary
    assert summary["succeeded"] == len(calls) < 30
    assert calls == list(range(len(calls)))
    assert summary["end_reason"] == "deadline"


def test_the_stack_leaves_the_process_as_it_found_it() -> None:
    threads_before = set(threading.enumerate())
    environment_before = dict(os.environ)
    with LocalStack(port=0, tick_seconds=1) as stack:
        port = stack.port
        assert eventually(lambda: stack.runs >= 1, within_s=10)
    assert port_is_free(port)
    assert dict(os.environ) == environment_before
    assert eventually(lambda: [t for t in threading.enumerate() if t not in threads_before and t.is_alive()] == [], 5)


def test_the_echo_api_shows_each_request_without_secret_values_and_throttles_a_job_once() -> None:
    import urllib.error
    import urllib.request

    from throttler_tools.echoapi import EchoApi

    shown: list[Any] = []
    with EchoApi(port=0, secret_header_names=("X-Partner-Sig",), on_request=shown.append) as echo:
        statuses = []
        for _ in range(2):
            request = urllib.request.Request(
                f"{echo.url}/status/429?x=1", data=b"12345", method="PUT",
                headers={"Idempotency-Key": "job-1", "Authorization": "Bearer abc", "X-Partner-Sig": "sig", "X-Plain": "v"})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    statuses.append(response.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
                assert exc.headers["Retry-After"] == "5"
        seen = get_json(f"{echo.url}/requests")
    assert statuses == [429, 200]  # throttled once per job: a job always throttled would wait for ever
    assert len(seen) == len(shown) == 2
    first = seen[0]
    assert (first["method"], first["path"], first["body_bytes"]) == ("PUT", "/status/429?x=1", 5)
    assert first["headers"]["Idempotency-Key"] == "job-1" and first["headers"]["X-Plain"] == "v"
    assert first["headers"]["Authorization"] == "<hidden, 10 characters>"
    assert first["headers"]["X-Partner-Sig"] == "<hidden, 3 characters>"
    assert "abc" not in json.dumps(seen) and "sig\"" not in json.dumps(seen)
