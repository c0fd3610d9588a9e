"""A stand-in for the third-party API: enforces quotas strictly on arrival times and counts violations.

Used by the tests, the demo, the benchmark and the simulation, in process (a `requests` adapter on a
virtual clock) or as a real HTTP server on 127.0.0.1. Paths choose a job's own behaviour:

- `/ok` 200; `/status/<code>` that status; `/flaky/<n>` 500 for the first n calls of a job, then 200;
- `/throttle/<seconds>` 429 with `Retry-After: <seconds>` once per job, then 200
  (`/throttle/date/<seconds>` sends an HTTP date, `/throttle/none` no header, `/throttle/bad` junk,
  `/throttle/<form>/<seconds>` any form of `RETRY_AFTER_FORMS`);
- `/slow/<seconds>` answers after that long (the server sleeps; the simulation adds it to the call's time);
- `/remaining/<n>/<reset_s>` 200 with `X-RateLimit-Remaining: n` and `X-RateLimit-Reset: reset_s`.

Query parameters: `group` and `seq` let the API check ordering (per group, `seq` must only grow);
`cost=<n>` makes a call count n units; the parameter named by `key_param` (or the header named by
`key_header`) names the caller's key for `per_key_tiers`.

Stage-wide behaviour, set as attributes (the simulation changes them over time): `tiers` and
`aligned` (what the API enforces: configured, hidden, or changed mid-run), `per_key_tiers`, `storms`
(429 to every call for a while, with a chosen Retry-After form), `outages` (5xx to a share of calls),
and `rate_headers` (`draft`: the IETF RateLimit / RateLimit-Policy fields; `x`: X-RateLimit-*).
A call over any enforced window is answered 429 (its `limit_retry_after` form) and counted as a violation.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from throttler.core.clock import Clock, SystemClock

# Every form of Retry-After the API can send (RFC 9110 delta-seconds and HTTP-date, its obsolete date
# forms, and what real servers send besides: a decimal delta, a `-0000` zone).
RETRY_AFTER_FORMS = ("delta", "decimal", "imf", "rfc850", "asctime", "minus0000", "none", "bad")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def retry_after_value(form: str, now: float, delay_s: float) -> tuple[str | None, float | None]:
    """The header value of a form for a wait of `delay_s` from `now`, and the instant it denotes
    (None: no usable value). Dates are whole seconds, rounded up so that they never mean sooner."""
    if form in ("none", "bad"):
        return ("soon-ish" if form == "bad" else None), None
    if form == "delta":
        seconds = max(0, math.ceil(delay_s - 1e-9))
        return str(seconds), now + seconds
    if form == "decimal":
        seconds = max(0, math.ceil(delay_s - 1e-9))
        return f"{seconds}.0", now + seconds
    at = math.ceil(now + delay_s - 1e-9)
    d = datetime.fromtimestamp(at, UTC)
    clock = f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
    if form == "imf":
        return f"{_DAYS[d.weekday()]}, {d.day:02d} {_MONTHS[d.month - 1]} {d.year} {clock} GMT", float(at)
    if form == "rfc850":
        return f"{_LONG_DAYS[d.weekday()]}, {d.day:02d}-{_MONTHS[d.month - 1]}-{d.year % 100:02d} {clock} GMT", float(at)
    if form == "asctime":
        return f"{_DAYS[d.weekday()]} {_MONTHS[d.month - 1]} {d.day:2d} {clock} {d.year}", float(at)
    if form == "minus0000":
        return f"{_DAYS[d.weekday()]}, {d.day:02d} {_MONTHS[d.month - 1]} {d.year} {clock} -0000", float(at)
    raise ValueError(f"unknown Retry-After form {form!r}")


class _Window:
    """Arrivals in one sliding window, with their running total of units."""

    __slots__ = ("arrivals", "total")

    def __init__(self) -> None:
        self.arrivals: deque[tuple[float, int]] = deque()
        self.total = 0

    def add(self, now: float, cost: int, window_s: float) -> int:
        arrivals = self.arrivals
        while arrivals and arrivals[0][0] <= now - window_s:
            self.total -= arrivals.popleft()[1]
        arrivals.append((now, cost))
        self.total += cost
        return self.total


@dataclass
class Call:
    at: float
    method: str
    path: str
    key: str | None
    group: str | None
    seq: int | None
    status: int
    cost: int = 1
    api_key: str | None = None  # the caller's key for per-key limits
    retry_at: float | None = None  # a 429's Retry-After as an instant (None: absent or unusable)
    retry_form: str | None = None
    over: bool = False  # answered 429 because the call was over an enforced window


@dataclass
class Storm:
    """Every call arriving in [start, end) is answered 429 (of `key` only, if set). The Retry-After
    points `delay_s` ahead of the call (None: to the storm's end)."""

    start: float
    end: float
    form: str = "delta"
    delay_s: float | None = None
    key: str | None = None


@dataclass
class Outage:
    """A share of calls arriving in [start, end) is answered `status` (a 5xx)."""

    start: float
    end: float
    status: int = 503
    share: float = 1.0


@dataclass
class FakeApi:
    tiers: list[tuple[float, int]]  # (window_s, limit), sliding, on arrival times
    clock: Clock = field(default_factory=SystemClock)
    aligned: list[tuple[float, int]] = field(default_factory=list)  # calendar windows
    calls: list[Call] = field(default_factory=list)
    violations: int = 0
    order_violations: int = 0
    per_key_tiers: list[tuple[float, int]] = field(default_factory=list)  # each key's own windows
    key_param: str = "tenant"
    key_header: str | None = None
    storms: list[Storm] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)
    rate_headers: str | None = None  # None, "draft" or "x"
    limit_retry_after: str = "delta"  # the Retry-After form of a 429 for a call over a window
    _windows: dict[tuple[str | None, float], _Window] = field(default_factory=dict)
    _periods: dict[tuple[float, int], int] = field(default_factory=lambda: defaultdict(int))
    _seen: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _last_seq: dict[str, int] = field(default_factory=dict)
    _outage_n: int = 0
    on_call: Callable[[Call], None] | None = None  # tests: act when the API sees a call
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        lowered = {k.lower(): v for k, v in headers.items()}
        key = lowered.get("idempotency-key")
        api_key = lowered.get(self.key_header.lower()) if self.key_header else query.get(self.key_param)
        cost = int(query["cost"]) if query.get("cost", "").isdigit() and int(query["cost"]) > 0 else 1
        with self._lock:
            now = self.clock.now()
            over, wait_s = self._count_arrival(now, api_key, cost)
            group = query.get("group")
            seq = int(query["seq"]) if query.get("seq", "").isdigit() else None
            if group is not None and seq is not None:
                if seq < self._last_seq.get(group, -1):
                    self.order_violations += 1
                self._last_seq[group] = max(seq, self._last_seq.get(group, -1))
            retry_at: float | None = None
            form: str | None = None
            extra: dict[str, str] = {}
            storm = self._storm(now, api_key)
            if over:
                status, form = 429, self.limit_retry_after
                value, retry_at = retry_after_value(form, now, wait_s)
                extra = {"Retry-After": value} if value is not None else {}
            elif storm is not None:
                status, form = 429, storm.form
                value, retry_at = retry_after_value(form, now, storm.delay_s if storm.delay_s is not None else storm.end - now)
                extra = {"Retry-After": value} if value is not None else {}
            else:
                status, extra, retry_at, form = self._behave(parts.path, key, now)
                outage = self._outage(now)
                if outage is not None and 200 <= status < 300:
                    status, extra = outage, {}
            if self.rate_headers:
                extra = {**self._rate_headers(now, api_key), **extra}
            self.calls.append(Call(now, method, parts.path, key, group, seq, status, cost, api_key, retry_at, form, over))
            if key is not None:
                self._seen[key] += 1
        if self.on_call is not None:
            self.on_call(self.calls[-1])
        body = b'{"status": %d}' % status
        return status, {"Content-Type": "application/json", **extra}, body

    # ------------------------------------------------------------------ limits
    def _count_arrival(self, now: float, api_key: str | None, cost: int) -> tuple[bool, float]:
        """Count a call in every enforced window; (over any, seconds until the fullest one has room)."""
        over = False
        wait_s = 0.0
        scoped: list[tuple[str | None, float, int]] = [(None, w, lim) for w, lim in self.tiers]
        if api_key is not None:
            scoped += [(api_key, w, lim) for w, lim in self.per_key_tiers]
        for scope, window_s, limit in scoped:
            window = self._windows.get((scope, window_s))
            if window is None:
                window = self._windows[(scope, window_s)] = _Window()
            used = window.add(now, cost, window_s)
            if used > limit:
                over = True
                wait_s = max(wait_s, window.arrivals[0][0] + window_s - now)
        for window_s, limit in self.aligned:
            period = (window_s, int(now // window_s))
            self._periods[period] += cost
            if self._periods[period] > limit:
                over = True
                wait_s = max(wait_s, (period[1] + 1) * window_s - now)
        if over:
            self.violations += 1
        return over, wait_s

    def _storm(self, now: float, api_key: str | None) -> Storm | None:
        for storm in self.storms:
            if storm.start <= now < storm.end and (storm.key is None or storm.key == api_key):
                return storm
        return None

    def _outage(self, now: float) -> int | None:
        for outage in self.outages:
            if outage.start <= now < outage.end:
                self._outage_n += 1
                # A deterministic share: the n-th call fails when n x share passes a whole number.
                if math.floor(self._outage_n * outage.share) != math.floor((self._outage_n - 1) * outage.share):
                    return outage.status
        return None

    def _rate_headers(self, now: float, api_key: str | None) -> dict[str, str]:
        """What the API says about its tightest window (the one with the fewest calls left)."""
        best: tuple[int, float, int] | None = None  # (remaining, window, limit)
        reset_s = 0.0
        scoped: list[tuple[str | None, float, int]] = [(None, w, lim) for w, lim in self.tiers]
        scoped += [(api_key, w, lim) for w, lim in self.per_key_tiers if api_key]
        for scope, window_s, limit in scoped:
            window = self._windows.get((scope, window_s)) or _Window()
            remaining = max(0, limit - window.total)
            if best is None or remaining < best[0]:
                best = (remaining, window_s, limit)
                reset_s = (window.arrivals[0][0] + window_s - now) if window.arrivals and remaining == 0 else 0.0
        if best is None:
            return {}
        remaining, window_s, limit = best
        reset = max(1, math.ceil(reset_s)) if remaining == 0 else 0
        if self.rate_headers == "draft":
            return {"RateLimit-Policy": f'"api";q={limit};w={math.ceil(window_s)}', "RateLimit": f'"api";r={remaining};t={reset}'}
        return {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset": str(reset)}

    # ------------------------------------------------------------------ a job's own behaviour
    def _behave(self, path: str, key: str | None, now: float) -> tuple[int, dict[str, str], float | None, str | None]:
        parts = [p for p in path.split("/") if p]
        seen = self._seen[key] if key is not None else 0
        kind = parts[0] if parts else "ok"
        if kind == "status" and len(parts) > 1 and parts[1].isdigit():
            return int(parts[1]), {}, None, None
        if kind == "flaky" and len(parts) > 1 and parts[1].isdigit():
            return (500 if seen < int(parts[1]) else 200), {}, None, None
        if kind == "throttle" and seen == 0:
            arg = parts[1] if len(parts) > 1 else "none"
            if arg == "date":
                arg = "imf"
            if arg in RETRY_AFTER_FORMS:
                delay = float(parts[2]) if len(parts) > 2 and _is_number(parts[2]) else 5.0
                value, at = retry_after_value(arg, now, delay)
                return 429, ({"Retry-After": value} if value is not None else {}), at, arg
            if _is_number(arg):
                return 429, {"Retry-After": arg}, now + float(arg), "delta"
            return 429, {}, None, "none"
        if kind == "remaining" and len(parts) > 2:
            return 200, {"X-RateLimit-Remaining": parts[1], "X-RateLimit-Reset": parts[2]}, None, None
        return 200, {}, None, None

    @staticmethod
    def service_s(path: str) -> float:
        """The API's own time for a call of this path (a `/slow/<seconds>` one takes that long)."""
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["slow"] and len(parts) > 1 and _is_number(parts[1]):
            return min(120.0, float(parts[1]))
        return 0.0

    # ------------------------------------------------------------------ reports
    def successes_by_key(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for call in self.calls:
            if call.key is not None and 200 <= call.status < 300:
                counts[call.key] += 1
        return counts

    def max_in_window(self, window_s: float) -> int:
        """The most calls that arrived in any window of this length (half-open, sliding)."""
        return max_in_window([c.at for c in self.calls], window_s)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def max_in_window(times: list[float], window_s: float) -> int:
    """The most of these times that fall in any window of this length (half-open, sliding)."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


class FakeApiAdapter(BaseAdapter):
    """Routes a requests.Session's calls to a FakeApi in process (no sockets, virtual time)."""

    def __init__(self, api: FakeApi):
        super().__init__()
        self.api = api

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        status, headers, body = self.api.handle(request.method or "GET", request.url or "", dict(request.headers))
        response = requests.Response()
        response.status_code = status
        response.headers = CaseInsensitiveDict(headers)
        response._content = body
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        return None


def session_for(api: FakeApi) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies or netrc from the environment: in process, and much quicker
    adapter = FakeApiAdapter(api)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class FakeApiServer:
    """The same FakeApi behind a real HTTP server on 127.0.0.1 (wall-clock time)."""

    def __init__(self, api: FakeApi, port: int = 0):
        self.api = api
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                status, headers, body = outer.api.handle(self.command, self.path, dict(self.headers.items()))
                delay_s = outer.api.service_s(urlsplit(self.path).path)
                if delay_s:
                    time.sleep(min(60.0, delay_s))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-api", daemon=True)

    @property
    def url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
