"""A message's headers (SPEC "Security of a job"): RFC 9110 token names, no CR, LF or NUL in values, and none of
Host, Content-Length, Transfer-Encoding, Connection or the stage's secret headers, in any spelling: bad input
with a reason and no call, in the throttler (parse_job) and again in the worker (the task). Headers that pass
are merged case-insensitively: one Idempotency-Key (the job id), one copy of each secret."""

from __future__ import annotations

import json

import pytest
import requests

from tests.unit.http_servers import LocalApi
from throttler.core.clock import FakeClock, SystemClock
from throttler.core.envelope import parse_job
from throttler.core.errors import InvalidJob
from throttler.tasks import ValidationContext, default_registry
from throttler.tasks.http import http_task, new_session
from throttler.tasks.registry import TaskContext

CHECKS = ValidationContext.build(["http://127.0.0.1:*"], "local", secret_header_names=["X-Api-Key", "Authorization"])
SECRETS = {"X-Api-Key": "k3y-value", "Authorization": "Bearer t0ken"}

REFUSED = [
    # CR, LF, NUL and other controls in values (header injection, request splitting)
    ({"X-A": "a\r\nHost: evil.example"}, "CR, LF or NUL"),
    ({"X-A": "a\nb"}, "CR, LF or NUL"),
    ({"X-A": "a\rb"}, "CR, LF or NUL"),
    ({"X-A": "a\x00b"}, "CR, LF or NUL"),
    ({"X-A": "a\x0bb"}, "control character"),
    ({"X-A": "a\x7fb"}, "control character"),
    ({"X-A": " leading"}, "whitespace"),
    ({"X-A": "trailing\t"}, "whitespace"),
    ({"X-A": "\u65e5\u672c"}, "latin-1"),
    # names that are not tokens
    ({"X A": "v"}, "token"),
    ({"X:A": "v"}, "token"),
    ({"": "v"}, "token"),
    ({"X-\u00e9": "v"}, "token"),
    ({"X\tA": "v"}, "token"),
    ({"(x)": "v"}, "token"),
    ({"X-A\r\nHost": "v"}, "token"),
    ({"X-\u0130": "v"}, "token"),
    # forbidden names, in several spellings
    *[({name: "v"}, "cannot be set") for name in (
        "Host", "host", "HOST", "hOsT",
        "Content-Length", "content-length", "CONTENT-LENGTH",
        "Transfer-Encoding", "transfer-encoding", "TRANSFER-ENCODING",
        "Connection", "connection", "CoNnEcTiOn")],
    # the stage's secret headers, in several spellings
    *[({name: "attacker-value"}, "secret headers") for name in (
        "X-Api-Key", "x-api-key", "X-API-KEY", "Authorization", "authorization", "AUTHORIZATION")],
    # one name twice
    ({"X-A": "1", "x-a": "2"}, "twice"),
]


def body(headers: dict) -> str:
    return json.dumps({"task": "http", "payload": {"method": "POST", "url": "http://127.0.0.1:8080/x", "headers": headers}})


class Counting(requests.adapters.BaseAdapter):
    calls = 0

    def send(self, request, **kwargs):
        self.calls += 1
        raise AssertionError("no call may be made")

    def close(self) -> None:
        return None


@pytest.mark.parametrize(("headers", "reason"), REFUSED, ids=[repr(h)[:40] for h, _ in REFUSED])
def test_a_bad_header_is_refused_by_the_throttler_and_by_the_worker_with_no_call(headers: dict, reason: str) -> None:
    with pytest.raises(InvalidJob, match=reason) as refused:
        parse_job(body(headers), "g", "d", tasks=default_registry.view({"http"}), validation=CHECKS)
    assert "\n" not in str(refused.value) and "attacker-value" not in str(refused.value)
    session, adapter = requests.Session(), Counting()
    session.mount("http://", adapter)
    clock = FakeClock()
    context = TaskContext("job-1", "g", clock, session, CHECKS, clock.now() + 1, clock.now() + 10, dict(SECRETS))
    with pytest.raises(InvalidJob, match=reason):
        http_task(json.loads(body(headers))["payload"], context)
    assert adapter.calls == 0


def test_secret_header_names_from_the_secrets_themselves_are_refused_too() -> None:
    clock = FakeClock()
    checks = ValidationContext.build(["http://127.0.0.1:*"], "local")  # names not configured in the context
    context = TaskContext("job-1", "g", clock, requests.Session(), checks, clock.now() + 1, clock.now() + 10,
                          {"X-Partner-Token": "partner-t0ken-value"})
    with pytest.raises(InvalidJob, match="secret headers"):
        http_task({"method": "GET", "url": "http://127.0.0.1/x", "headers": {"x-partner-token": "forged"}}, context)


def test_headers_are_merged_case_insensitively_one_idempotency_key_one_copy_of_each_secret() -> None:
    with LocalApi() as api:
        session = new_session(1)
        context = TaskContext("job-1", "g", SystemClock(), session, CHECKS, SystemClock().now() + 1,
                              SystemClock().now() + 10, dict(SECRETS))
        http_task({"method": "POST", "url": f"{api.url}/ok", "json": {"a": 1},
                   "headers": {"idempotency-key": "forged", "user-agent": "mine/1", "x-trace": "t-1"}}, context)
        session.close()
    seen = api.seen[0]
    assert seen.all("Idempotency-Key") == ["job-1"]
    assert seen.all("X-Api-Key") == ["k3y-value"] and seen.all("Authorization") == ["Bearer t0ken"]
    assert seen.all("User-Agent") == ["mine/1"] and seen.all("X-Trace") == ["t-1"]
    assert len(seen.all("Host")) == 1 and seen.all("Host")[0].startswith("127.0.0.1:")
    assert len(seen.all("Content-Length")) == 1 and seen.all("Transfer-Encoding") == []
