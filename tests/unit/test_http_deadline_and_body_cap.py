"""Every call ends by its deadline, whatever the server does, and reads at most the body cap (SPEC "Security of a
job"): against real sockets on 127.0.0.1 that dribble, stay silent or never stop sending. Each test is bounded
by a deadline under a second; the servers give up on their own after a few seconds."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from urllib3.connection import HTTPSConnection

import throttler.tasks.http as http_module
from tests.unit.http_servers import Dribbler, LocalApi
from throttler.core.clock import FakeClock, SystemClock
from throttler.core.errors import RetryableTaskError
from throttler.tasks import ValidationContext
from throttler.tasks.http import http_task, new_session
from throttler.tasks.registry import TaskContext, TaskResult

CHECKS = ValidationContext.build(["http://127.0.0.1:*"], "local")
DEADLINE_S = 0.6
# A busy CI machine can start the watchdog's thread a second late. The bound only has to tell a cut call from one
# that runs on until the server gives up (Dribbler's 10 s) or the context's deadline; which deadline the watchdog
# is armed with is checked exactly, without a wall clock, in test_the_watchdog_is_armed_with_the_earlier_deadline.
SLACK_S = 2.5


def context(deadline_s: float = DEADLINE_S, checks: ValidationContext = CHECKS) -> tuple[TaskContext, float]:
    clock = SystemClock()
    start = clock.now()
    return TaskContext("job-1", "g", clock, new_session(1), checks, start + 1, start + deadline_s), start


@pytest.mark.parametrize("mode", ["headers", "silent"])
def test_a_server_that_dribbles_its_headers_or_says_nothing_is_cut_at_the_deadline(mode: str) -> None:
    with Dribbler(mode) as server:
        ctx, start = context()
        with pytest.raises(RetryableTaskError, match="timeout"):
            http_task({"method": "GET", "url": f"{server.url}/x", "timeout": 30}, ctx)
        elapsed = time.time() - start
        ctx.session.close()
    assert DEADLINE_S - 0.05 <= elapsed <= DEADLINE_S + SLACK_S
    if mode == "headers":
        assert 0 < server.bytes_sent < 0.1 * 100_000  # it was still dribbling when the call gave up


def test_a_body_dribbled_after_a_2xx_is_cut_at_the_deadline_and_the_status_stands() -> None:
    with Dribbler("body") as server:
        ctx, start = context()
        out = http_task({"method": "GET", "url": f"{server.url}/x", "timeout": 30}, ctx)
        elapsed = time.time() - start
        ctx.session.close()
    assert isinstance(out, TaskResult) and out.status == 200  # the API answered 2xx: its effect happened
    assert elapsed <= DEADLINE_S + SLACK_S and server.bytes_sent < 100_000


def test_the_payloads_own_timeout_is_a_total_deadline_too() -> None:
    with Dribbler("headers") as server:
        ctx, start = context(deadline_s=20)
        with pytest.raises(RetryableTaskError, match="timeout"):
            http_task({"method": "GET", "url": f"{server.url}/x", "timeout": 0.4}, ctx)
        elapsed = time.time() - start
        ctx.session.close()
    assert 0.35 <= elapsed <= 0.4 + SLACK_S


@pytest.mark.parametrize(("payload_timeout", "armed_s"), [(0.4, 0.4), (30, DEADLINE_S)])
def test_the_watchdog_is_armed_with_the_earlier_deadline(
    monkeypatch: pytest.MonkeyPatch, payload_timeout: float, armed_s: float
) -> None:
    armed: list[float] = []

    class RecordingTimer(threading.Timer):
        def __init__(self, interval: float, function: Any) -> None:
            armed.append(interval)
            super().__init__(interval, function)

    monkeypatch.setattr(http_module.threading, "Timer", RecordingTimer)
    clock = FakeClock(1_000.0)
    ctx = TaskContext("job-1", "g", clock, new_session(1), CHECKS, clock.now() + 1, clock.now() + DEADLINE_S)
    with LocalApi() as api:
        out = http_task({"method": "GET", "url": f"{api.url}/ok", "timeout": payload_timeout}, ctx)
        ctx.session.close()
    assert isinstance(out, TaskResult) and out.status == 200
    assert armed == [pytest.approx(armed_s)]


def test_an_endless_body_is_read_only_up_to_the_cap() -> None:
    cap = 64 * 1024
    with LocalApi() as api:
        ctx, start = context(deadline_s=10, checks=ValidationContext(CHECKS.allow_list, max_body_bytes=cap))
        out = http_task({"method": "GET", "url": f"{api.url}/endless"}, ctx)
        elapsed = time.time() - start
        # The connection was closed, not returned to the pool mid-body: the next call still works.
        again = http_task({"method": "GET", "url": f"{api.url}/ok"}, ctx)
        ctx.session.close()
    assert isinstance(out, TaskResult) and out.status == 200 and isinstance(again, TaskResult) and again.status == 200
    assert elapsed < 3


def test_a_large_body_stops_being_read_at_the_default_one_mebibyte_cap() -> None:
    total = 64 * 1024 * 1024
    assert CHECKS.max_body_bytes == 1024 * 1024
    with LocalApi() as api:
        ctx, start = context(deadline_s=10)
        out = http_task({"method": "GET", "url": f"{api.url}/bytes/{total}"}, ctx)
        elapsed = time.time() - start
        ctx.session.close()
        for _ in range(40):  # the server notices the closed connection at its next write
            sent = api.bytes_sent
            time.sleep(0.05)
            if api.bytes_sent == sent:
                break
    assert isinstance(out, TaskResult) and out.status == 200 and elapsed < 5
    assert api.bytes_sent < total / 2  # what the socket buffers held, not the body


def test_a_body_within_the_cap_is_read_whole_and_the_connection_is_reused() -> None:
    with LocalApi() as api:
        ctx, _ = context(deadline_s=10)
        for _ in range(3):
            http_task({"method": "GET", "url": f"{api.url}/bytes/{100 * 1024}"}, ctx)
        ctx.session.close()
    assert len({seen.client for seen in api.seen}) == 1


def test_a_tls_handshake_that_never_completes_ends_at_the_deadline() -> None:
    checks = ValidationContext.build(["127.0.0.1:*"], "dev")  # https only
    with socket.create_server(("127.0.0.1", 0)) as listener:  # the kernel completes TCP; nobody answers TLS
        port = listener.getsockname()[1]
        ctx, start = context(checks=checks)
        pool = ctx.session.get_adapter("https://127.0.0.1/").poolmanager.connection_from_host("127.0.0.1", port, "https")
        assert issubclass(pool.ConnectionCls, HTTPSConnection) and pool.ConnectionCls.__name__ == "_WatchedHTTPSConnection"
        with pytest.raises(RetryableTaskError, match="timeout"):
            http_task({"method": "GET", "url": f"https://127.0.0.1:{port}/x", "timeout": 30}, ctx)
        elapsed = time.time() - start
        ctx.session.close()
    assert DEADLINE_S - 0.05 <= elapsed <= DEADLINE_S + SLACK_S
