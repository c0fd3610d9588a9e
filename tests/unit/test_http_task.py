"""The http task: outcome classification (SPEC job envelope), no redirects, the API's headers carried, bad
input refused before any call (promise 7), and the payload model owned by the task (its validator runs in
parse_job, so the throttler refuses a bad payload)."""

from __future__ import annotations

import email.utils
import json
from typing import Any

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError

from tests.unit.http_servers import LocalApi, second_loopback_host
from throttler.core.clock import FakeClock, SystemClock
from throttler.core.envelope import parse_job
from throttler.core.errors import InvalidJob, PermanentTaskError, RetryableTaskError, ThrottledTaskError
from throttler.core.ratelimit import parse_api_word, parse_retry_after
from throttler.tasks import ValidationContext, default_registry
from throttler.tasks.http import REDIRECT_REASON, http_task, new_session
from throttler.tasks.registry import TaskContext, TaskRegistry, TaskResult, task
from throttler_tools.fakeapi import FakeApi, session_for

LOCAL = ValidationContext.build(["http://127.0.0.1:*", "http://127.0.0.2:*"], "local")


def ctx(session: requests.Session, clock: Any, secret: dict | None = None, validation: ValidationContext = LOCAL,
        deadline_s: float = 30.0) -> TaskContext:
    return TaskContext("job-1", "g", clock, session, validation, not_after=clock.now() + 1,
                       deadline=clock.now() + deadline_s, secret_headers=dict(secret or {}))


def call(path: str, **payload: object) -> tuple[FakeApi, object]:
    clock = FakeClock()
    api = FakeApi(tiers=[(1, 100)], clock=clock)
    out = http_task({"method": "POST", "url": f"http://127.0.0.1{path}", **payload}, ctx(session_for(api), clock))
    return api, out


def test_2xx_succeeds_and_sends_the_job_id_as_idempotency_key() -> None:
    api, out = call("/ok", json={"a": 1})
    assert isinstance(out, TaskResult) and out.status == 200 and api.calls[0].key == "job-1"


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


def exploding_session(exc: Exception) -> tuple[requests.Session, Exploding]:
    session, adapter = requests.Session(), Exploding(exc)
    session.mount("http://", adapter)
    return session, adapter


@pytest.mark.parametrize("exc", [requests.exceptions.ReadTimeout("slow"), requests.exceptions.ConnectionError("reset"),
                                 requests.exceptions.ChunkedEncodingError("cut")])
def test_timeouts_and_connection_errors_are_retryable(exc: Exception) -> None:
    session, adapter = exploding_session(exc)
    with pytest.raises(RetryableTaskError):
        http_task({"method": "GET", "url": "http://127.0.0.1/x"}, ctx(session, FakeClock()))
    assert adapter.calls == 1  # it may have reached the API: no unreserved retry


@pytest.mark.parametrize("exc", [
    requests.exceptions.ConnectTimeout("connect timed out"),
    requests.exceptions.ConnectionError(MaxRetryError(None, "/x", NewConnectionError(None, "refused"))),  # type: ignore[arg-type]
])
def test_a_call_that_never_left_is_retried_within_its_slot(exc: Exception) -> None:
    session, adapter = exploding_session(exc)
    with pytest.raises(RetryableTaskError):
        http_task({"method": "GET", "url": "http://127.0.0.1/x"}, ctx(session, FakeClock()))
    assert adapter.calls == 3


@pytest.mark.parametrize("exc", [requests.exceptions.InvalidHeader("bad"), requests.exceptions.InvalidURL("bad"),
                                 UnicodeEncodeError("latin-1", "\u2028", 0, 1, "no"), ValueError("Invalid header value")])
def test_an_error_that_means_the_message_is_malformed_is_bad_input_never_retryable(exc: Exception) -> None:
    session, adapter = exploding_session(exc)
    with pytest.raises(InvalidJob):
        http_task({"method": "GET", "url": "http://127.0.0.1/x"}, ctx(session, FakeClock()))
    assert adapter.calls == 1


def test_a_call_past_its_deadline_is_a_retryable_timeout_and_is_not_sent() -> None:
    session, adapter = exploding_session(AssertionError("must not be called"))
    with pytest.raises(RetryableTaskError, match="timeout"):
        http_task({"method": "GET", "url": "http://127.0.0.1/x"}, ctx(session, FakeClock(), deadline_s=0))
    assert adapter.calls == 0


@pytest.mark.parametrize(("code", "method"), [(301, "GET"), (302, "GET"), (303, "POST"), (307, "POST"), (308, "PUT")])
def test_a_redirect_is_not_followed_and_the_other_host_receives_nothing(code: int, method: str) -> None:
    with LocalApi() as api, LocalApi(host=second_loopback_host()) as elsewhere:
        session = new_session(2)
        url = f"{api.url}/redirect/{code}?to={elsewhere.url}/steal"
        with pytest.raises(PermanentTaskError) as info:
            http_task({"method": method, "url": url, "json": {"secret": "body"}},
                      ctx(session, SystemClock(), secret={"X-Api-Key": "k3y"}))
        session.close()
    assert str(info.value) == REDIRECT_REASON and info.value.status == code
    assert len(api.seen) == 1 and elsewhere.seen == []


def test_the_apis_rate_limit_headers_are_carried_lowercased_and_bounded() -> None:
    with LocalApi() as api:
        session = new_session(1)
        out = http_task({"method": "GET", "url": f"{api.url}/ratelimit"}, ctx(session, SystemClock()))
        with pytest.raises(ThrottledTaskError) as info:
            http_task({"method": "GET", "url": f"{api.url}/throttle"}, ctx(session, SystemClock()))
        session.close()
    assert isinstance(out, TaskResult) and out.status == 200
    assert next(iter(out.headers)) == "retry-after" and out.headers["x-ratelimit-remaining"] == "3"
    assert len(out.headers) <= 20 and all(len(v) <= 256 for v in out.headers.values())
    assert all(k == k.lower() and (k == "retry-after" or k.startswith(("ratelimit", "x-ratelimit"))) for k in out.headers)
    assert info.value.retry_after_s == 7.0
    assert info.value.headers == {"retry-after": "7", "ratelimit": "limit=10, remaining=0, reset=7", "ratelimit-policy": "10;w=1"}


def test_the_body_data_is_sent_as_utf8_and_params_join_the_checked_url() -> None:
    with LocalApi() as api:
        session = new_session(1)
        payload = {"method": "POST", "url": f"{api.url}/ok?a=1", "params": {"b": ["x", 2], "c": True},
                   "data": "h\u00e9llo \u2603"}
        http_task(payload, ctx(session, SystemClock()))
        session.close()
    assert api.seen[0].path == "/ok?a=1&b=x&b=2&c=True" and api.seen[0].body == "h\u00e9llo \u2603".encode()


# ---------------------------------------------------------------------------- the task owns its payload
def parse(payload: dict, validation: ValidationContext = LOCAL) -> object:
    body = json.dumps({"task": "http", "payload": payload})
    return parse_job(body, "g", "dedup-1", tasks=default_registry.view({"http"}), validation=validation)


@pytest.mark.parametrize(("payload", "reason"), [
    ({"method": "GET", "url": "http://127.0.0.1:8080\\@api.example.com/"}, "backslash"),
    ({"method": "GET", "url": "http://127.1:8080/"}, "not in ALLOWED_HOSTS"),
    ({"method": "GET", "url": "http://127.0.0.1/", "headers": {"X-A": "a\r\nHost: evil"}}, "CR, LF or NUL"),
    ({"method": "GET", "url": "http://127.0.0.1/", "headers": {"Host": "evil.example"}}, "cannot be set"),
    ({"method": "GET", "url": "http://127.0.0.1/", "json": float("nan")}, "NaN"),
    ({"method": "GET", "url": "http://127.0.0.1/", "params": {"a": {"b": 1}}}, "params"),
    ({"method": "GET", "url": "http://127.0.0.1/", "timeout": 31}, "timeout"),
    ({"method": "BREW", "url": "http://127.0.0.1/"}, "method"),
    ({"method": "GET", "url": 5}, "url"),
])
def test_a_bad_http_payload_is_refused_by_parse_job_before_any_call(payload: dict, reason: str) -> None:
    with pytest.raises(InvalidJob, match=reason):
        parse(payload)


def test_parse_job_runs_a_custom_tasks_validator_and_a_validator_bug_refuses_the_job_without_crashing() -> None:
    registry = TaskRegistry()

    def strict(payload: dict, checks: ValidationContext) -> None:
        if "invoice" not in payload:
            raise InvalidJob("send_invoice payload needs an invoice")

    registry.register("send_invoice", lambda payload, context: None, validate=strict)
    registry.register("buggy", lambda payload, context: None, validate=lambda payload, checks: 1 / 0)
    with pytest.raises(InvalidJob, match="needs an invoice"):
        parse_job('{"task": "send_invoice", "payload": {}}', "g", "d", tasks=registry, validation=LOCAL)
    assert parse_job('{"task": "send_invoice", "payload": {"invoice": 1}}', "g", "d", tasks=registry, validation=LOCAL)
    with pytest.raises(InvalidJob, match="ZeroDivisionError"):
        parse_job('{"task": "buggy", "payload": {}}', "g", "d", tasks=registry, validation=LOCAL)


def test_retry_after_in_seconds_or_http_date_or_malformed() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("12", now) == 12.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == pytest.approx(30, abs=1)
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_rate_limit_headers_in_seconds_or_epoch() -> None:
    now = 1_700_000_000.0
    word = parse_api_word({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "10"}, now)
    assert word is not None and (word.remaining, word.reset_at) == (3, now + 10)
    word = parse_api_word({"RateLimit-Remaining": "0", "RateLimit-Reset": str(now + 5)}, now)
    assert word is not None and (word.remaining, word.reset_at) == (0, now + 5)
    word = parse_api_word({"X-RateLimit-Remaining": "x", "X-RateLimit-Reset": "1"}, now)
    assert word is None or word.remaining is None
    assert parse_api_word({}, now) is None


def test_custom_tasks_register_by_name() -> None:
    registry = TaskRegistry()

    def send_invoice(payload: dict, context: TaskContext) -> None:
        return None

    registry.register("send_invoice", send_invoice)
    assert registry.get("send_invoice") is send_invoice and "send_invoice" in registry.names

    @task("unit_test_task")
    def other(payload: dict, context: TaskContext) -> None:
        return None

    assert default_registry.get("unit_test_task") is other
    assert default_registry.validator("http") is not None  # the built-in task always brings its validator
