"""The http task's outcome classification (SPEC job envelope) and header parsing (promise 6)."""

from __future__ import annotations

import email.utils

import pytest
import requests

from throttler.core.clock import FakeClock
from throttler.core.errors import PermanentTaskError, RetryableTaskError, ThrottledTaskError
from throttler_tools.fakeapi import FakeApi, session_for
from throttler.tasks.http import http_task, parse_rate_headers, parse_retry_after
from throttler.tasks.registry import TaskContext, TaskRegistry, task


def ctx(session: requests.Session, clock: FakeClock, secret: dict | None = None) -> TaskContext:
    return TaskContext("job-1", "g", clock, session, ("127.0.0.1",), not_after=clock.now() + 1,
                       secret_headers=lambda: dict(secret or {}))


def call(path: str, **payload: object) -> tuple[FakeApi, object]:
    clock = FakeClock()
    api = FakeApi(tiers=[(1, 100)], clock=clock)
    out = http_task({"method": "POST", "url": f"http://127.0.0.1{path}", **payload}, ctx(session_for(api), clock))
    return api, out


def test_2xx_succeeds_and_sends_the_job_id_as_idempotency_key() -> None:
    api, out = call("/ok", json={"a": 1})
    assert out.status == 200 and api.calls[0].key == "job-1"


@pytest.mark.parametrize(("path", "error"), [
    ("/status/500", RetryableTaskError), ("/status/503", RetryableTaskError), ("/status/408", RetryableTaskError),
    ("/status/400", PermanentTaskError), ("/status/404", PermanentTaskError), ("/status/422", PermanentTaskError),
    ("/throttle/7", ThrottledTaskError),
])
def test_status_classification(path: str, error: type) -> None:
    with pytest.raises(error) as info:
        call(path)
    if error is ThrottledTaskError:
        assert info.value.retry_after_s == 7.0


class Exploding(requests.adapters.BaseAdapter):
    def __init__(self, exc: Exception):
        super().__init__()
        self.exc, self.calls = exc, 0

    def send(self, request, **kwargs):
        self.calls += 1
        raise self.exc

    def close(self) -> None:
        return None


@pytest.mark.parametrize("exc", [requests.exceptions.ReadTimeout("slow"), requests.exceptions.ConnectionError("reset")])
def test_timeouts_and_connection_errors_are_retryable(exc: Exception) -> None:
    session = requests.Session()
    adapter = Exploding(exc)
    session.mount("http://", adapter)
    with pytest.raises(RetryableTaskError):
        http_task({"method": "GET", "url": "http://127.0.0.1/x"}, ctx(session, FakeClock()))
    assert adapter.calls == 1  # it may have reached the API: no unreserved retry


def test_a_call_that_never_left_is_retried_within_its_slot() -> None:
    session = requests.Session()
    adapter = Exploding(requests.exceptions.ConnectTimeout("connect timed out"))
    session.mount("http://", adapter)
    with pytest.raises(RetryableTaskError):
        http_task({"method": "GET", "url": "http://127.0.0.1/x"}, ctx(session, FakeClock()))
    assert adapter.calls == 3


def test_secret_headers_are_added_and_the_message_cannot_override_the_idempotency_key() -> None:
    clock = FakeClock()
    seen = {}

    class Capture(requests.adapters.BaseAdapter):
        def send(self, request, **kwargs):
            seen.update(request.headers)
            response = requests.Response()
            response.status_code = 204
            return response

        def close(self) -> None:
            return None

    session = requests.Session()
    session.mount("http://", Capture())
    http_task({"method": "GET", "url": "http://127.0.0.1/x", "headers": {"Idempotency-Key": "forged"}},
              ctx(session, clock, secret={"Authorization": "Bearer s3cret"}))
    assert seen["Authorization"] == "Bearer s3cret" and seen["Idempotency-Key"] == "job-1"


def test_retry_after_in_seconds_or_http_date_or_malformed() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("12", now) == 12.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == pytest.approx(30, abs=1)
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_rate_limit_headers_in_seconds_or_epoch() -> None:
    now = 1_700_000_000.0
    assert parse_rate_headers({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "10"}, now) == (3, now + 10)
    assert parse_rate_headers({"RateLimit-Remaining": "0", "RateLimit-Reset": str(now + 5)}, now) == (0, now + 5)
    assert parse_rate_headers({"X-RateLimit-Remaining": "x", "X-RateLimit-Reset": "1"}, now) == (None, None)
    assert parse_rate_headers({}, now) == (None, None)


def test_custom_tasks_register_by_name() -> None:
    registry = TaskRegistry()

    def send_invoice(payload: dict, context: TaskContext) -> None:
        return None

    registry.register("send_invoice", send_invoice)
    assert registry.get("send_invoice") is send_invoice and "send_invoice" in registry.names

    @task("unit_test_task")
    def other(payload: dict, context: TaskContext) -> None:
        return None

    from throttler.tasks import default_registry

    assert default_registry.get("unit_test_task") is other
