"""The stage's secrets (SPEC "Security of a job", promise 8): read from SSM once per batch; a failure to read them
is SecretsUnavailable naming the parameter; a secret value never appears in a reason, an exception (with its
chain) or a log line, whatever happens to the call."""

from __future__ import annotations

import json
import logging
import time
import traceback
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests.unit.http_servers import Dribbler, LocalApi
from throttler.core.clock import SystemClock
from throttler.core.errors import ConfigError, SecretsUnavailable, TaskError, ThrottlerError
from throttler.store import MemoryStateStore
from throttler.tasks import ValidationContext, default_registry
from throttler.tasks.http import http_task, new_session
from throttler.tasks.registry import TaskContext
from throttler.tasks.secrets import secret_headers_getter
from throttler.worker.service import WorkerConfig, WorkerService

SECRET = "sk-live-4f9a0c1e77b2"
PARAM = "/throttler/prod/api-key"
CHECKS = ValidationContext.build(["http://127.0.0.1:*"], "local", secret_header_names=["X-Api-Key"])


def denied(name: str) -> Any:
    raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": f"not allowed to read {name}"}}, "GetParameter")


def shown(exc: BaseException) -> str:
    """Everything an exception can show: message, repr, and the traceback a logger would print."""
    return f"{exc}\n{exc!r}\n{''.join(traceback.format_exception(exc))}"


# ------------------------------------------------------------------------------------------ the getter
def test_values_come_from_ssm_decrypted_and_cached_for_five_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    from aws_lambda_powertools.utilities import parameters

    asked: list[tuple[str, dict]] = []

    def fake(name: str, **kwargs: Any) -> str:
        asked.append((name, kwargs))
        return SECRET

    monkeypatch.setattr(parameters, "get_parameter", fake)
    assert secret_headers_getter([("X-Api-Key", PARAM)])() == {"X-Api-Key": SECRET}
    assert asked == [(PARAM, {"decrypt": True, "max_age": 300})]
    assert secret_headers_getter([])() == {}


@pytest.mark.parametrize("failure", ["client-error", "powertools", "timeout"])
def test_an_ssm_failure_is_secrets_unavailable_naming_the_parameter_never_a_value(
    failure: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from aws_lambda_powertools.utilities import parameters

    def broken(name: str, **kwargs: Any) -> str:
        if failure == "client-error":
            denied(name)
        if failure == "powertools":
            try:
                denied(name)
            except ClientError as exc:
                raise parameters.exceptions.GetParameterError(f"{exc} (last known value {SECRET})") from exc
        raise TimeoutError(f"read timed out after fetching {SECRET}")

    monkeypatch.setattr(parameters, "get_parameter", broken)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SecretsUnavailable) as info:
        secret_headers_getter([("X-Api-Key", PARAM)])()
    assert PARAM in str(info.value) and isinstance(info.value, ThrottlerError) and not isinstance(info.value, TaskError)
    assert SECRET not in shown(info.value) and SECRET not in caplog.text
    if failure != "timeout":
        assert "AccessDeniedException" in str(info.value)


@pytest.mark.parametrize("value", [f"{SECRET}\r\nX-Evil: 1", f" {SECRET}", f"{SECRET}\u2603", "", 42])
def test_a_value_that_cannot_be_a_header_is_secrets_unavailable_without_the_value(value: object) -> None:
    with pytest.raises(SecretsUnavailable) as info:
        secret_headers_getter([("X-Api-Key", PARAM)], get_parameter=lambda name: value)()
    assert PARAM in str(info.value) and SECRET not in shown(info.value)


@pytest.mark.parametrize("header", ["Host", "idempotency-key", "Content-Length", "X Api Key", "X-Api-Key\r\n"])
def test_a_secret_header_name_the_task_sets_itself_or_that_is_no_token_is_a_config_error(header: str) -> None:
    with pytest.raises(ConfigError):
        secret_headers_getter([(header, PARAM)])


# ------------------------------------------------------------------------------------------ every failure path
class Raising(requests.adapters.BaseAdapter):
    """requests errors whose text quotes the secret, as requests does for a bad header value."""

    def __init__(self, exc: Exception):
        super().__init__()
        self.exc = exc

    def send(self, request, **kwargs):
        raise self.exc

    def close(self) -> None:
        return None


class WallClockNoSleep(SystemClock):
    """Real time for the sockets' deadlines; the task's retry pauses are skipped."""

    def sleep(self, seconds: float) -> None:
        return None


def outcome_of(session: requests.Session, url: str, deadline_s: float = 5.0, **payload: Any) -> BaseException | object:
    clock = WallClockNoSleep()
    now = clock.now()
    ctx = TaskContext("job-1", "g", clock, session, CHECKS, now + 1, now + deadline_s, {"X-Api-Key": SECRET})
    try:
        return http_task({"method": "POST", "url": url, "json": {"a": 1}, **payload}, ctx)
    except Exception as exc:
        return exc


@pytest.mark.parametrize("path", ["/status/500", "/status/404", "/status/408", "/throttle", "/redirect/302?to=http://127.0.0.1:9/x",
                                  "/ok", "/ratelimit"])
def test_no_secret_in_results_exceptions_or_logs_for_any_answer(path: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with LocalApi() as api:
        session = new_session(1)
        out = outcome_of(session, f"{api.url}{path}")
        session.close()
    assert api.seen[0].all("X-Api-Key") == [SECRET]  # it did reach the API, and only there
    text = shown(out) if isinstance(out, BaseException) else repr(out)
    assert SECRET not in text and SECRET not in caplog.text


@pytest.mark.parametrize("exc", [
    requests.exceptions.InvalidHeader(f"Invalid header value b'{SECRET}\\n'"),
    requests.exceptions.ConnectionError(f"connection aborted while sending X-Api-Key: {SECRET}"),
    requests.exceptions.ReadTimeout(f"timed out; headers were X-Api-Key: {SECRET}"),
    ValueError(f"Invalid header value {SECRET!r}"),
])
def test_no_secret_even_when_requests_quotes_it_in_an_error(exc: Exception, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    session = requests.Session()
    session.mount("http://", Raising(exc))
    out = outcome_of(session, "http://127.0.0.1:8080/x")
    assert isinstance(out, ThrottlerError)
    assert SECRET not in str(out) and SECRET not in caplog.text
    # requests' own exception stays out of the chain when its text may quote a header
    if isinstance(exc, requests.exceptions.InvalidHeader | ValueError):
        assert SECRET not in shown(out)


def test_no_secret_on_a_timeout_or_a_refused_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    session = new_session(1)
    with Dribbler("headers") as server:
        url = f"{server.url}/x"
        slow = outcome_of(session, url, deadline_s=0.3)
    refused = outcome_of(session, url)  # nothing listens there now
    session.close()
    for out in (slow, refused):
        assert isinstance(out, ThrottlerError) and SECRET not in shown(out)
    assert SECRET not in caplog.text


def test_no_secret_in_the_workers_results_or_logs_and_an_ssm_failure_counts_no_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    now = time.time()
    validation = ValidationContext.build(("http://127.0.0.1:*",), "local", ("X-Api-Key",))

    def worker(getter: Any) -> WorkerService:
        return WorkerService(config=WorkerConfig(validation), records=MemoryStateStore(), clock=SystemClock(),
                             registry=default_registry, secret_headers=getter, new_session=new_session)

    def job(job_id: str, url: str, headers: dict | None = None) -> dict:
        body = json.dumps({"task": "http", "payload": {"method": "GET", "url": url, "headers": headers or {}}})
        return {"id": job_id, "group": job_id, "body": body, "nb": now, "na": now + 30.0}

    with LocalApi() as api:
        ok = worker(secret_headers_getter([("X-Api-Key", PARAM)], get_parameter=lambda name: SECRET))
        results = ok.run_batch({"batch": "b1", "run": "r", "jobs": [
            job("a", f"{api.url}/status/500"), job("b", f"{api.url}/status/403"),
            job("c", f"{api.url}/ok"), job("d", f"{api.url}/ok", {"x-api-key": SECRET})]})
        broken = worker(secret_headers_getter([("X-Api-Key", PARAM)], get_parameter=denied))
        skipped = broken.run_batch({"batch": "b2", "run": "r", "jobs": [job("e", f"{api.url}/ok")]})
    assert {r["job_id"]: r["outcome"] for r in results["results"]} == {
        "a": "retryable", "b": "permanent", "c": "succeeded", "d": "invalid"}
    # The stage's failure, not the job's: nothing called, no result, so the throttler counts no attempt.
    assert skipped["status"] == "secrets_unavailable" and skipped["results"] == []
    assert len(api.seen) == 3  # the job that tried to set the secret header made no call
    assert SECRET not in json.dumps([results, skipped]) and SECRET not in caplog.text
