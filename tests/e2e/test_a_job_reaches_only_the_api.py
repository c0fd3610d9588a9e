"""Promise 8 end to end (issue 9): whoever can send to the jobs queue reaches only the allowed API, and the API's
secret (from SSM) goes nowhere else. Through the local stack, with a second server on another loopback address
that must receive nothing: the backslash URL, a redirect to it, a CR/LF header and a Host header are each
dead-lettered with a reason (attempts 0; the redirect, which the allowed API answered: 1), and a normal job
beside them succeeds, carrying the secret to the allowed API only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import eventually, send_raw
from tests.unit.http_servers import LocalApi, second_loopback_host
from throttler.queue.dead_letters import DeadLetters
from throttler_tools.local import LocalStack

SECRET = "s3cr3t-value-from-ssm"
PARAMETER = "/throttler/local/api-key"


@pytest.fixture(scope="module")
def stage() -> Iterator[tuple[LocalStack, LocalApi, LocalApi]]:
    with LocalApi() as allowed, LocalApi(host=second_loopback_host()) as thief:
        stack = LocalStack(port=0, tick_seconds=60, env={"DEFAULT_LATENCY": "low",
                                                         "SECRET_HEADERS": json.dumps({"X-Api-Key": PARAMETER})})
        with stack:
            stack.client("ssm").put_parameter(Name=PARAMETER, Value=SECRET, Type="SecureString")
            yield stack, allowed, thief


def http_job(url: str, **payload: Any) -> dict[str, Any]:
    return {"task": "http", "payload": {"method": "POST", "url": url, "json": {"x": 1}, **payload}}


def test_hostile_jobs_are_dead_lettered_with_a_reason_the_other_host_gets_nothing_a_normal_job_succeeds(
    stage: tuple[LocalStack, LocalApi, LocalApi],
) -> None:
    stack, allowed, thief = stage
    port, thief_host, thief_port = allowed.url.rsplit(":", 1)[1], thief.host, thief.url.rsplit(":", 1)[1]
    steal = f"{thief.url}/steal"
    hostile = {
        # urlsplit reads the host after the '@'; urllib3 connects to the one before it.
        "backslash": (http_job(f"http://127.0.0.1:{port}\\@{thief_host}:{thief_port}/steal"), "backslash", 0),
        # The allowed API answers 302 to the other host: not followed, and that one call was an attempt.
        "redirect": (http_job(f"{allowed.url}/redirect/302?to={steal}"), "http 3xx redirect not followed", 1),
        "crlf": (http_job(f"{allowed.url}/ok", headers={"X-Note": f"a\r\nHost: {thief_host}"}), "header", 0),
        "host": (http_job(f"{allowed.url}/ok", headers={"Host": f"{thief_host}:{thief_port}"}), "cannot be set by a message", 0),
        "secret-header": (http_job(f"{allowed.url}/ok", headers={"X-Api-Key": "mine"}), "secret headers", 0),
    }
    sqs = stack.client("sqs")
    for name, (body, _, _) in hostile.items():
        send_raw(sqs, stack.env["JOBS_QUEUE_URL"], body, f"group-{name}", f"job-{name}")
    send_raw(sqs, stack.env["JOBS_QUEUE_URL"], http_job(f"{allowed.url}/ok"), "group-normal", "job-normal")

    dead_letters = DeadLetters(sqs, stack.env["DLQ_URL"], stack.env["JOBS_QUEUE_URL"])

    def settled() -> bool:
        return any(s.all("Idempotency-Key") == ["job-normal"] for s in allowed.seen) and len(dead_letters.peek()) == len(hostile)

    assert eventually(settled, within_s=30)
    letters = {d.job_id: d for d in dead_letters.peek()}
    for name, (_, reason, attempts) in hostile.items():
        letter = letters[f"job-{name}"]
        assert reason in letter.error_reason, (name, letter.error_reason)
        assert letter.attempts == attempts, (name, letter)
        assert letter.group == f"group-{name}"
        assert SECRET not in json.dumps(letter.to_dict())
    assert thief.seen == []
    # The allowed API saw the redirecting call and the normal job, each with the secret from SSM, nothing else.
    assert sorted(s.path.split("?")[0] for s in allowed.seen) == ["/ok", "/redirect/302"]
    for seen in allowed.seen:
        assert seen.all("X-Api-Key") == [SECRET]
        assert seen.all("Host") == [f"127.0.0.1:{port}"]
