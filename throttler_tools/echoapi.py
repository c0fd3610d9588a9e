"""A built-in echo API on 127.0.0.1: the first thing to point a job at on the local stack.

It answers every request 200 with a short JSON echo and shows what it received: method, path, headers
(the values of secret-looking headers hidden, their length shown) and the body's size, one line per
request on the terminal and all of them (newest last) at `GET /requests`. `/status/<code>` answers
that status instead, to watch a retry or a dead letter happen; `/status/429` answers 429 with `Retry-After: 5`
the first time a job (its `Idempotency-Key`) calls it and 200 after that, to watch a pause happen (a job that
were always throttled would wait for ever: being throttled never dead-letters a job).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

DEFAULT_PORT = 4567
KEPT_REQUESTS = 1000
REQUESTS_PATH = "/requests"
MAX_BODY_BYTES = 16 * 1024 * 1024
RETRY_AFTER_S = 5
# Headers whose values are credentials wherever they appear; names containing these words are hidden too.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-auth-token"})
# Left out of the terminal line (GET /requests shows every header).
ROUTINE_HEADERS = frozenset({"host", "user-agent", "accept", "accept-encoding", "connection", "content-length",
                             "idempotency-key"})
SECRET_WORDS = ("secret", "token", "password", "apikey", "api-key", "signature", "credential")


@dataclass(frozen=True)
class EchoRequest:
    """What reached the echo API: never a secret header's value, never the body itself."""

    at: float
    method: str
    path: str
    headers: list[tuple[str, str]]
    body_bytes: int
    client: str

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        headers: dict[str, str] = {}
        for name, value in self.headers:  # a repeated header shows once, its values joined as HTTP would
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        data["headers"] = headers
        data["at"] = round(self.at, 3)
        return data


def is_secret(name: str, also: Iterable[str] = ()) -> bool:
    lowered = name.lower()
    if lowered == "idempotency-key":  # the job id: useful, and not a secret
        return False
    if lowered in SECRET_HEADERS or lowered in {a.lower() for a in also}:
        return True
    return any(word in lowered for word in SECRET_WORDS)


def shown(name: str, value: str, secret_names: Iterable[str] = ()) -> str:
    return f"<hidden, {len(value)} characters>" if is_secret(name, secret_names) else value


class EchoApi:
    """`with EchoApi(port=0) as echo:` serves on 127.0.0.1 until the block ends; `echo.requests` is what it saw."""

    def __init__(self, port: int = DEFAULT_PORT, host: str = "127.0.0.1", secret_header_names: Iterable[str] = (),
                 on_request: Callable[[EchoRequest], None] | None = None):
        self.host = host
        self.port = port
        self.secret_header_names = tuple(secret_header_names)
        self.on_request = on_request
        self._seen: deque[EchoRequest] = deque(maxlen=KEPT_REQUESTS)
        self._throttled: set[str | None] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[EchoRequest]:
        with self._lock:
            return list(self._seen)

    def start(self) -> EchoApi:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "throttler-echo"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._answer(413, {"error": "body too large"})
                    return
                body = self.rfile.read(length) if length > 0 else b""
                path = urlsplit(self.path).path
                if self.command == "GET" and path == REQUESTS_PATH:
                    self._answer(200, [r.to_dict() for r in outer.requests])
                    return
                seen = outer._record(self.command, self.path, list(self.headers.items()), len(body), self.client_address[0])
                status, extra = _status_for(path)
                if status == 429 and not outer._first_429(seen.header("Idempotency-Key")):
                    status, extra = 200, {}
                self._answer(status, {"echo": {"method": seen.method, "path": seen.path, "body_bytes": seen.body_bytes}}, extra)

            def _answer(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
                payload = json.dumps(data, indent=2 if isinstance(data, list) else None).encode() + b"\n"
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="echo-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> EchoApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _first_429(self, job_id: str | None) -> bool:
        with self._lock:
            first = job_id not in self._throttled
            self._throttled.add(job_id)
            return first

    def _record(self, method: str, path: str, headers: list[tuple[str, str]], body_bytes: int, client: str) -> EchoRequest:
        seen = EchoRequest(time.time(), method, path, [(k, shown(k, v, self.secret_header_names)) for k, v in headers],
                           body_bytes, client)
        with self._lock:
            self._seen.append(seen)
        notable = [k for k, _ in seen.headers if k.lower() not in ROUTINE_HEADERS]
        logger.info("request received", extra={
            "method": method, "path": path[:200], "body_bytes": body_bytes,
            "job_id": seen.header("Idempotency-Key"), "headers": ", ".join(notable) or None,
        })
        if self.on_request is not None:
            self.on_request(seen)
        return seen


def _status_for(path: str) -> tuple[int, dict[str, str]]:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "status" and parts[1].isdigit() and 200 <= int(parts[1]) <= 599:
        code = int(parts[1])
        return code, ({"Retry-After": str(RETRY_AFTER_S)} if code == 429 else {})
    return 200, {}
