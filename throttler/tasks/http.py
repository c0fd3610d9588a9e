"""The built-in `http` task: one request with `requests`, to the checked URL only, classified per SPEC.

The task owns its payload model and its checks (`check_http_payload`, registered as the task's validator so
that the throttler refuses a bad payload before any call), the session factory (`new_session`, one per batch)
and the call itself: the request goes to the URL rebuilt by `check_url`, redirects are never followed, headers
are validated and merged case-insensitively, the response body is read up to a cap, and each call has one total
deadline, enforced by a watchdog that shuts the connection's socket when it passes.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar
from requests.structures import CaseInsensitiveDict
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_any, wait_exponential
from tenacity.stop import stop_base
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import LocationParseError, NewConnectionError
from urllib3.util.retry import Retry

from throttler.core.envelope import reason_from
from throttler.core.errors import (
    InvalidJob,
    PermanentTaskError,
    RetryableTaskError,
    SecretsUnavailable,
    TaskError,
    ThrottledTaskError,
)
from throttler.core.ratelimit import parse_retry_after
from throttler.tasks.registry import TaskContext, TaskResult, ValidationContext, default_registry
from throttler.tasks.url import MAX_URL_CHARS, CheckedUrl, check_url, connect_target, url_target

MAX_TIMEOUT_S = 30.0
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
RETRYABLE_STATUS = {408}
REDIRECT_REASON = "http 3xx redirect not followed"
IDEMPOTENCY_KEY = "Idempotency-Key"
# Headers a message may never set: they decide where and how the request is framed, not what it says.
FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
RATE_HEADER_PREFIXES = ("ratelimit", "x-ratelimit", "x-rate-limit")
MAX_RATE_HEADERS = 20
MAX_RATE_HEADER_CHARS = 256
READ_CHUNK_BYTES = 64 * 1024

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 section 5.6.2
_CTL_BUT_TAB = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
Scalar = str | int | float | bool
# requests errors that mean the message itself cannot be sent: bad input, never retryable
_MALFORMED = (
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.URLRequired,
    requests.exceptions.InvalidJSONError,
)


# --------------------------------------------------------------------------------------------- the payload
class HttpPayload(BaseModel):
    """The `http` task's payload (SPEC "Job envelope")."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: str
    url: str = Field(min_length=1, max_length=MAX_URL_CHARS)
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    data: str | dict[str, Scalar | list[Scalar]] | None = None
    timeout: float = Field(default=10.0, gt=0, le=MAX_TIMEOUT_S)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value.upper() not in HTTP_METHODS:
            raise ValueError(f"method must be one of {', '.join(HTTP_METHODS)}")
        return value.upper()


@dataclass(frozen=True)
class HttpRequest:
    """A payload that passed every check: what `http_task` sends, and only that."""

    payload: HttpPayload
    url: CheckedUrl


def _shown(text: str, limit: int = 64) -> str:
    """A name quoted for a reason: escaped, and cut when long."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def header_value_problem(value: str) -> str:
    """Why this text cannot be sent as a header value ('' when it can)."""
    if any(ch in value for ch in "\r\n\0"):
        return "holds CR, LF or NUL"
    if _CTL_BUT_TAB.search(value):
        return "holds a control character"
    if value != value.strip(" \t"):
        return "has leading or trailing whitespace"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "is not latin-1 text"
    return ""


def check_headers(headers: Mapping[str, str], secret_names: frozenset[str]) -> None:
    """A message's headers: RFC 9110 token names, given once, none forbidden or secret, sendable values."""
    seen: set[str] = set()
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise InvalidJob(f"header name {_shown(name)} is not an RFC 9110 token")
        lowered = name.lower()
        if lowered in seen:
            raise InvalidJob(f"header {_shown(name)} is given twice (header names ignore case)")
        seen.add(lowered)
        if lowered in FORBIDDEN_HEADERS:
            raise InvalidJob(f"header {_shown(name)} cannot be set by a message")
        if lowered in secret_names:
            raise InvalidJob(f"header {_shown(name)} is one of the stage's secret headers: a message cannot set it")
        problem = header_value_problem(value)
        if problem:
            raise InvalidJob(f"header {_shown(name)} value {problem}")


def check_http_payload(payload: dict[str, Any], validation: ValidationContext) -> HttpPayload:
    """The `http` task's validator (registered with the task): every check the call itself makes before it is sent,
    without rebuilding the URL (producers and the throttler only need the verdict); raises InvalidJob with a
    one-line reason."""
    try:
        model = HttpPayload.model_validate(payload)
    except ValidationError as exc:
        raise InvalidJob(f"http payload {reason_from(exc)}") from None
    if model.json_body is not None and model.data is not None:  # (here, not a model validator: a third cheaper)
        raise InvalidJob("http payload: give json or data, not both")
    url_target(model.url, validation.allow_list)
    check_headers(model.headers, validation.secret_header_names)
    if model.json_body is not None:
        try:
            json.dumps(model.json_body, allow_nan=False)
        except ValueError:
            raise InvalidJob("http payload json holds NaN or Infinity, which JSON cannot carry") from None
    return model


def validate_http_payload(payload: dict[str, Any], validation: ValidationContext) -> HttpRequest:
    """`check_http_payload`, and the URL rebuilt from the checked parts: what `http_task` sends."""
    model = check_http_payload(payload, validation)
    return HttpRequest(model, check_url(model.url, validation.allow_list))


# --------------------------------------------------------------------------------------------- the session
class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Accepts no cookie and returns none: jobs of different groups share a session, never state."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


class _NoCookieJar(RequestsCookieJar):
    """A jar that stays empty, whoever tries to fill it: requests copies a session's cookies into a fresh jar
    (with the default policy) for every request, so an empty jar is what keeps them from being sent."""

    def set_cookie(self, cookie: http.cookiejar.Cookie, *args: Any, **kwargs: Any) -> None:
        return None


class _CallWatch:
    """The connections one call uses. At its deadline they are shut down: a blocked connect, write or read
    (a server that dribbles its headers or body) ends at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: list[HTTPConnection] = []
        self.expired = False
        self._finished = False

    def join(self, connection: HTTPConnection) -> None:
        with self._lock:
            connection._throttler_watch = self  # type: ignore[attr-defined]
            self._connections.append(connection)
            expired = self.expired
        if expired:
            _shut(connection)

    def expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.expired = True
            mine = [c for c in self._connections if getattr(c, "_throttler_watch", None) is self]
        for connection in mine:
            _shut(connection)

    def finish(self) -> None:
        with self._lock:
            self._finished = True


_current = threading.local()  # the call this thread is making: its _CallWatch


def _shut(connection: HTTPConnection) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _join_current_call(connection: HTTPConnection) -> None:
    watch: _CallWatch | None = getattr(_current, "watch", None)
    if watch is not None:
        watch.join(connection)


class _WatchedHTTPConnection(HTTPConnection):
    """Joins the calling thread's watch before it connects and before each request (pooled connections too)."""

    def connect(self) -> None:
        _join_current_call(self)
        super().connect()
        _join_current_call(self)  # the deadline may have passed while connecting

    def request(self, *args: Any, **kwargs: Any) -> None:
        _join_current_call(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections a call's watchdog can shut at its deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def new_session(pool_size: int) -> requests.Session:
    """A session for one batch: `pool_size` connections per host (the batch's parallelism), no urllib3
    retries, no cookies kept or sent, nothing from the environment (proxies, .netrc, CA bundle variables).

    The caller closes it when the batch ends.
    """
    session = requests.Session()
    session.trust_env = False
    session.cookies = _NoCookieJar(policy=_NoCookies())
    adapter = DeadlineAdapter(pool_maxsize=max(1, pool_size), max_retries=Retry(total=0, read=False, redirect=False))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# --------------------------------------------------------------------------------------------- the answer
def rate_limit_headers(headers: Mapping[str, str], also: frozenset[str] = frozenset()) -> dict[str, str]:
    """The response's rate-limit headers, names lowercased: `retry-after` first, then every `ratelimit*`,
    `x-ratelimit*`, `x-rate-limit*` header (and the names in `also`, e.g. the quota item's cost_header) in
    order, at most MAX_RATE_HEADERS, values cut to 256 characters."""
    picked: dict[str, str] = {}
    retry_after = None
    for name, value in headers.items():
        lowered = name.lower()
        wanted = lowered.startswith(RATE_HEADER_PREFIXES) or lowered in also
        if lowered == "retry-after":
            retry_after = value
        elif wanted and len(lowered) <= 64 and len(picked) < MAX_RATE_HEADERS - 1:
            picked[lowered] = value[:MAX_RATE_HEADER_CHARS]
    if retry_after is not None:
        picked = {"retry-after": retry_after[:MAX_RATE_HEADER_CHARS], **picked}
    return picked


def _classify(response: requests.Response, now: float, keep: frozenset[str] = frozenset()) -> TaskResult:
    status = response.status_code
    headers = rate_limit_headers(response.headers, keep)
    if status == 429:
        retry_after_s = parse_retry_after(response.headers.get("Retry-After"), now)
        raise ThrottledTaskError("429 too many requests", retry_after_s, headers=headers)
    if 200 <= status < 300:
        return TaskResult(status, headers)
    if 300 <= status < 400:
        raise PermanentTaskError(REDIRECT_REASON, status)
    if status in RETRYABLE_STATUS or status >= 500:
        raise RetryableTaskError(f"http {status}", status)
    raise PermanentTaskError(f"http {status}", status)


# --------------------------------------------------------------------------------------------- the call
def outgoing_headers(
    message_headers: Mapping[str, str], secret_headers: Mapping[str, str], job_id: str
) -> CaseInsensitiveDict[str]:
    """requests' defaults, then the message's headers, then the secrets, then the job id as Idempotency-Key:
    one case-insensitive map, so no header can travel twice in two spellings."""
    headers: CaseInsensitiveDict[str] = requests.utils.default_headers()  # type: ignore[assignment]
    for name, value in message_headers.items():
        if name.lower() != IDEMPOTENCY_KEY.lower():
            headers[name] = value
    for name, value in secret_headers.items():
        headers[name] = value
    headers[IDEMPOTENCY_KEY] = job_id
    return headers


def _check_secrets(secret_headers: Mapping[str, str]) -> None:
    for name, value in secret_headers.items():
        if not _TOKEN.fullmatch(name) or header_value_problem(value):
            raise SecretsUnavailable(f"secret header {_shown(name)} cannot be sent: check its SSM parameter")


def _request_kwargs(request: HttpRequest, ctx: TaskContext) -> dict[str, Any]:
    """What `Session.request` gets, checked first: prepared once without the session, the request must build
    (else InvalidJob) and its URL must still lead to the checked host and port."""
    payload = request.payload
    kwargs: dict[str, Any] = {
        "headers": outgoing_headers(payload.headers, ctx.secret_headers, ctx.job_id),
        "params": payload.params or None,
        "json": payload.json_body,
    }
    try:
        kwargs["data"] = payload.data.encode("utf-8") if isinstance(payload.data, str) else payload.data
        prepared = requests.Request(payload.method, request.url.url, **kwargs).prepare()
    except (requests.exceptions.RequestException, LocationParseError, UnicodeError, ValueError, RecursionError) as exc:
        # Never the exception's text: it may quote a header value.
        raise InvalidJob(f"request cannot be built: {type(exc).__name__}") from None
    if connect_target(prepared.url or "") != (request.url.scheme, request.url.host, request.url.port):
        raise InvalidJob("url is ambiguous once prepared: refused")
    return kwargs


def _never_sent(exc: BaseException) -> bool:
    """Only errors where the request surely never reached the API may be retried in the worker:
    such a retry spends no quota. (`_call_once` raises RetryableTaskError from the requests error.)"""
    if isinstance(exc, RetryableTaskError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError) and exc.args:
        reason = getattr(exc.args[0], "reason", exc.args[0])  # urllib3's MaxRetryError wraps the cause
        return isinstance(reason, NewConnectionError)  # refused, unreachable, or the name did not resolve
    return False


class _PastSlot(stop_base):
    """Stop retrying when the next try would leave after the job's slot (it would have no reservation) or
    after the call's deadline. (tenacity computes `upcoming_sleep` before it asks `stop`.)"""

    def __init__(self, ctx: TaskContext):
        self.ctx = ctx

    def __call__(self, retry_state: RetryCallState) -> bool:
        then = self.ctx.clock.now() + retry_state.upcoming_sleep
        return then > self.ctx.not_after or then >= self.ctx.deadline


def _read_capped(response: requests.Response, method: str, cap: int, deadline: float, ctx: TaskContext) -> None:
    """Read (and drop) the body up to `cap` bytes and the deadline, so that the connection can be reused.
    Past either, the connection is closed instead. The status decides the outcome, whatever the body does."""
    if response.raw is None or method == "HEAD" or response.status_code in (204, 304):
        return  # (no `raw`: an in-process adapter that holds the body already)
    read = 0
    try:
        for chunk in response.iter_content(READ_CHUNK_BYTES):
            read += len(chunk)
            if read >= cap or ctx.clock.now() >= deadline:
                break
    except (requests.exceptions.RequestException, OSError, ValueError):
        return


def _call_once(request: HttpRequest, kwargs: dict[str, Any], ctx: TaskContext) -> TaskResult:
    now = ctx.clock.now()
    deadline = min(ctx.deadline, now + request.payload.timeout)
    remaining_s = deadline - now
    if remaining_s <= 0:
        raise RetryableTaskError("timeout: the call's deadline passed before it was sent")
    watch = _CallWatch()
    timer = None
    if isinstance(ctx.session.get_adapter(request.url.url), DeadlineAdapter):
        timer = threading.Timer(remaining_s, watch.expire)
        timer.daemon = True
        timer.start()
    _current.watch = watch
    try:
        try:
            # The session adds no cookie (its policy refuses all), no credentials or proxies from the
            # environment (trust_env is off in `new_session`); `proxies={}` holds even for another session.
            response = ctx.session.request(
                request.payload.method, request.url.url, **kwargs,
                timeout=remaining_s, allow_redirects=False, stream=True, proxies={},
            )
        except requests.exceptions.RequestException as exc:
            if watch.expired:
                raise RetryableTaskError(f"timeout: no answer within the call's {remaining_s:.1f}s deadline") from None
            if isinstance(exc, requests.exceptions.Timeout):
                raise RetryableTaskError(f"timeout after {remaining_s:.1f}s: {type(exc).__name__}") from exc
            if isinstance(exc, _MALFORMED):
                raise InvalidJob(f"request refused by requests: {type(exc).__name__}") from None
            raise RetryableTaskError(f"connection error: {type(exc).__name__}") from exc
        except (LocationParseError, UnicodeError, ValueError) as exc:  # a message that http.client cannot send
            if watch.expired:
                raise RetryableTaskError(f"timeout: no answer within the call's {remaining_s:.1f}s deadline") from None
            raise InvalidJob(f"request cannot be sent: {type(exc).__name__}") from None
        if watch.expired:
            # Shut mid-answer: http.client takes the end of the stream for the end of the headers, so what it
            # returns is a fragment, not the API's answer.
            response.close()
            raise RetryableTaskError(f"timeout: no whole answer within the call's {remaining_s:.1f}s deadline")
        try:
            _read_capped(response, request.payload.method, ctx.max_body_bytes, deadline, ctx)
        finally:
            if response.raw is not None:
                response.close()  # back to the pool when the body was read whole, else the connection is closed
        return _classify(response, ctx.clock.now(), ctx.keep_headers)
    finally:
        _current.watch = None
        watch.finish()
        if timer is not None:
            timer.cancel()


def _scrubbed(exc: Exception, secrets: Mapping[str, str]) -> Exception | None:
    """A copy of a task error whose message quotes a secret value, with the value masked (None if clean)."""
    text = str(exc)
    if not any(value and value in text for value in secrets.values()):
        return None
    for value in secrets.values():
        if value:
            text = text.replace(value, "***")
    if isinstance(exc, ThrottledTaskError):
        return ThrottledTaskError(text, exc.retry_after_s, exc.status, exc.headers)
    if isinstance(exc, TaskError):
        return type(exc)(text, exc.status)
    return type(exc)(text)


def http_task(payload: dict[str, Any], ctx: TaskContext) -> TaskResult:
    """Validate, then make one call (retrying within the slot only what surely never left), classified per SPEC."""
    _check_secrets(ctx.secret_headers)
    secret_names = ctx.validation.secret_header_names | {name.lower() for name in ctx.secret_headers}
    validation = ValidationContext(ctx.validation.allow_list, secret_names, ctx.validation.max_body_bytes)
    try:
        request = validate_http_payload(payload, validation)
        kwargs = _request_kwargs(request, ctx)
        for attempt in Retrying(
            retry=retry_if_exception(_never_sent),
            stop=stop_any(stop_after_attempt(3), _PastSlot(ctx)),
            wait=wait_exponential(multiplier=0.05, max=0.5),
            sleep=ctx.clock.sleep,
            reraise=True,
        ):
            with attempt:
                return _call_once(request, kwargs, ctx)
    except (TaskError, InvalidJob) as exc:
        clean = _scrubbed(exc, ctx.secret_headers)
        if clean is not None:
            raise clean from None
        raise
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


default_registry.register("http", http_task, validate=check_http_payload)
