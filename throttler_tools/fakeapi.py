"""A stand-in for the third-party API: enforces quotas strictly on arrival times and counts violations.

Used by the tests, the demo and the benchmark, in process (a `requests` adapter on a virtual clock) or
as a real HTTP server on 127.0.0.1. Paths choose the behaviour:

- `/ok` 200; `/status/<code>` that status; `/flaky/<n>` 500 for the first n calls of a job, then 200;
- `/throttle/<seconds>` 429 with `Retry-After: <seconds>` once per job, then 200
  (`/throttle/date/<seconds>` sends an HTTP date, `/throttle/none` no header, `/throttle/bad` junk);
- `/slow/<seconds>` answers after that long (on the server only);
- `/remaining/<n>/<reset_s>` 200 with `X-RateLimit-Remaining: n` and `X-RateLimit-Reset: reset_s`.

Query parameters `group` and `seq` let the API check ordering: per group, `seq` must only grow.
A call over any tier is answered 429 and counted as a violation.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from throttler.core.clock import Clock, SystemClock


@dataclass
class Call:
    at: float
    method: str
    path: str
    key: str | None
    group: str | None
    seq: int | None
    status: int


@dataclass
class FakeApi:
    tiers: list[tuple[float, int]]  # (window_s, limit), sliding
    clock: Clock = field(default_factory=SystemClock)
    aligned: list[tuple[float, int]] = field(default_factory=list)  # calendar windows
    calls: list[Call] = field(default_factory=list)
    violations: int = 0
    order_violations: int = 0
    _windows: dict[float, deque[float]] = field(default_factory=dict)
    _periods: dict[tuple[float, int], int] = field(default_factory=lambda: defaultdict(int))
    _seen: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _last_seq: dict[str, int] = field(default_factory=dict)
    on_call: Callable[[Call], None] | None = None  # tests: act when the API sees a call
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        key = headers.get("Idempotency-Key") or headers.get("idempotency-key")
        with self._lock:
            now = self.clock.now()
            over = self._count_arrival(now)
            group = query.get("group")
            seq = int(query["seq"]) if query.get("seq", "").isdigit() else None
            if group is not None and seq is not None:
                if seq < self._last_seq.get(group, -1):
                    self.order_violations += 1
                self._last_seq[group] = max(seq, self._last_seq.get(group, -1))
            status, extra = (429, {"Retry-After": "1"}) if over else self._behave(parts.path, key, now)
            self.calls.append(Call(now, method, parts.path, key, group, seq, status))
            if key is not None:
                self._seen[key] += 1
        if self.on_call is not None:
            self.on_call(self.calls[-1])
        body = json.dumps({"status": status}).encode()
        return status, {"Content-Type": "application/json", **extra}, body

    def _count_arrival(self, now: float) -> bool:
        over = False
        for window_s, limit in self.tiers:
            arrivals = self._windows.setdefault(window_s, deque())
            while arrivals and arrivals[0] <= now - window_s:
                arrivals.popleft()
            arrivals.append(now)
            if len(arrivals) > limit:
                over = True
        for window_s, limit in self.aligned:
            period = (window_s, int(now // window_s))
            self._periods[period] += 1
            if self._periods[period] > limit:
                over = True
        if over:
            self.violations += 1
        return over

    def _behave(self, path: str, key: str | None, now: float) -> tuple[int, dict[str, str]]:
        parts = [p for p in path.split("/") if p]
        seen = self._seen[key] if key is not None else 0
        kind = parts[0] if parts else "ok"
        if kind == "status" and len(parts) > 1 and parts[1].isdigit():
            return int(parts[1]), {}
        if kind == "flaky" and len(parts) > 1 and parts[1].isdigit():
            return (500, {}) if seen < int(parts[1]) else (200, {})
        if kind == "throttle" and seen == 0:
            arg = parts[1] if len(parts) > 1 else "none"
            if arg == "none":
                return 429, {}
            if arg == "bad":
                return 429, {"Retry-After": "soon-ish"}
            if arg == "date" and len(parts) > 2:
                return 429, {"Retry-After": email.utils.formatdate(now + float(parts[2]), usegmt=True)}
            return 429, {"Retry-After": arg}
        if kind == "remaining" and len(parts) > 2:
            return 200, {"X-RateLimit-Remaining": parts[1], "X-RateLimit-Reset": parts[2]}
        return 200, {}

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
                parts = [p for p in urlsplit(self.path).path.split("/") if p]
                status, headers, body = outer.api.handle(self.command, self.path, dict(self.headers.items()))
                if parts[:1] == ["slow"] and len(parts) > 1:
                    time.sleep(min(60.0, float(parts[1])))
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
