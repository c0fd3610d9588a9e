"""The built-in `http` task: one request with `requests`, classified per SPEC."""

from __future__ import annotations

import email.utils
from typing import Any

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_any, wait_exponential
from tenacity.stop import stop_base

from throttler.core.envelope import validate_http_payload
from throttler.core.errors import PermanentTaskError, RetryableTaskError, ThrottledTaskError
from throttler.tasks.registry import TaskContext, TaskResult, default_registry

RETRYABLE_STATUS = {408}


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds or as an HTTP date; None when absent or malformed."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def parse_rate_headers(headers: Any, now: float) -> tuple[int | None, float | None]:
    """X-RateLimit-Remaining/Reset (or RateLimit-*): remaining calls and when the count resets."""
    remaining = headers.get("X-RateLimit-Remaining", headers.get("RateLimit-Remaining"))
    reset = headers.get("X-RateLimit-Reset", headers.get("RateLimit-Reset"))
    try:
        remaining_n = int(str(remaining).strip()) if remaining is not None else None
        reset_v = float(str(reset).strip()) if reset is not None else None
    except ValueError:
        return None, None
    if remaining_n is None or reset_v is None or remaining_n < 0 or reset_v < 0:
        return None, None
    reset_at = reset_v if reset_v > 1e9 else now + reset_v  # epoch seconds or seconds from now
    return remaining_n, reset_at


def _never_sent(exc: BaseException) -> bool:
    """Only errors where the request surely never reached the API may be retried in the worker:
    such a retry spends no quota."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = repr(exc)
        return "NewConnectionError" in text or "NameResolutionError" in text or "Connection refused" in text
    return False


class _PastSlot(stop_base):
    """Stop retrying when the next try would leave after the job's slot: it would have no reservation.
    (tenacity computes `upcoming_sleep` before it asks `stop`.)"""

    def __init__(self, ctx: TaskContext):
        self.ctx = ctx

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.ctx.clock.now() + retry_state.upcoming_sleep > self.ctx.not_after


def http_task(payload: dict[str, Any], ctx: TaskContext) -> TaskResult:
    request = validate_http_payload(payload, ctx.allowed_hosts)
    headers = {**request.headers, **ctx.secret_headers(), "Idempotency-Key": ctx.job_id}
    kwargs: dict[str, Any] = {"headers": headers, "params": request.params or None, "timeout": request.timeout}
    if request.json_body is not None:
        kwargs["json"] = request.json_body
    elif request.data is not None:
        kwargs["data"] = request.data

    try:
        for attempt in Retrying(
            retry=retry_if_exception(_never_sent),
            stop=stop_any(stop_after_attempt(3), _PastSlot(ctx)),
            wait=wait_exponential(multiplier=0.05, max=0.5),
            sleep=ctx.clock.sleep,
            reraise=True,
        ):
            with attempt:
                response = ctx.session.request(request.method, request.url, **kwargs)
    except requests.exceptions.Timeout as exc:
        raise RetryableTaskError(f"timeout after {request.timeout}s") from exc
    except requests.exceptions.RequestException as exc:
        raise RetryableTaskError(f"connection error: {type(exc).__name__}") from exc
    now = ctx.clock.now()
    remaining, reset_at = parse_rate_headers(response.headers, now)
    status = response.status_code
    if status == 429:
        raise ThrottledTaskError("429 too many requests", parse_retry_after(response.headers.get("Retry-After"), now))
    if 200 <= status < 300:
        return TaskResult(status, remaining, reset_at)
    if status in RETRYABLE_STATUS or status >= 500:
        raise RetryableTaskError(f"http {status}", status)
    raise PermanentTaskError(f"http {status}", status)


default_registry.register("http", http_task)
