"""Real HTTP servers on loopback for the http task's tests: each records exactly what reached it.

`LocalApi` answers by path (below); `Dribbler` is a raw socket server that sends its answer one byte at a time.
Both run on daemon threads, bind 127.0.0.x only, and stop within a second of `close()`.

LocalApi paths: `/ok`; `/status/<code>`; `/redirect/<code>?to=<url>`; `/set-cookie`; `/bytes/<n>` (n bytes,
with Content-Length); `/endless` (a chunked body that never ends); `/throttle` (429 with Retry-After and
rate-limit headers); `/ratelimit` (200 with many rate-limit headers).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]  # as received: every line, in order, names as sent
    body: bytes
    client: tuple[str, int]  # the client's address: one port per connection

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class LocalApi:
    host: str = "127.0.0.1"
    seen: list[Seen] = field(default_factory=list)
    bytes_sent: int = 0
    _server: ThreadingHTTPServer | None = None

    def __enter__(self) -> LocalApi:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.seen.append(Seen(self.command, self.path, list(self.headers.items()), body, self.client_address[:2]))
                parts = urlsplit(self.path)
                route = [p for p in parts.path.split("/") if p]
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                kind = route[0] if route else "ok"
                if kind == "status":
                    self._answer(int(route[1]))
                elif kind == "redirect":
                    self._answer(int(route[1]), {"Location": query["to"]})
                elif kind == "set-cookie":
                    self._answer(200, {"Set-Cookie": "session=from-job-1; Path=/"})
                elif kind == "throttle":
                    self._answer(429, {"Retry-After": "7", "RateLimit": "limit=10, remaining=0, reset=7",
                                       "RateLimit-Policy": "10;w=1", "X-Other": "x"})
                elif kind == "ratelimit":
                    headers = {f"X-RateLimit-Extra-{i}": "v" * 300 for i in range(30)}
                    self._answer(200, {"X-RateLimit-Remaining": "3", "Retry-After": "1", "X-Unrelated": "u", **headers})
                elif kind == "bytes":
                    self._stream(int(route[1]))
                elif kind == "endless":
                    self._endless()
                else:
                    self._answer(200)

            def _answer(self, status: int, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def _stream(self, size: int) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                chunk = b"x" * 65536
                try:
                    while size > 0:
                        piece = chunk[: min(size, len(chunk))]
                        self.wfile.write(piece)
                        outer.bytes_sent += len(piece)
                        size -= len(piece)
                except OSError:
                    self.close_connection = True

            def _endless(self) -> None:
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"y" * 65536
                frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
                stop_at = time.monotonic() + 20
                try:
                    while time.monotonic() < stop_at:
                        self.wfile.write(frame)
                        outer.bytes_sent += len(chunk)
                except OSError:
                    pass
                self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"


def second_loopback_host() -> str:
    """127.0.0.2 where the system routes all of 127/8 to loopback (Linux), else 127.0.0.1 (another port)."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return "127.0.0.1"


class Dribbler:
    """Answers every request slowly: `mode="headers"` sends the status line and then its headers one byte every
    `interval_s`; `mode="body"` sends whole headers (200, a large Content-Length) and then the body one byte at a
    time; `mode="silent"` reads the request and says nothing. It gives up after `max_s`."""

    def __init__(self, mode: str, interval_s: float = 0.02, max_s: float = 10.0):
        self.mode, self.interval_s, self.max_s = mode, interval_s, max_s
        self.bytes_sent = 0
        self.closed_by_client_after_s: float | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> Dribbler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.max_s + 2)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                self._dribble(conn)

    def _dribble(self, conn: socket.socket) -> None:
        conn.settimeout(1.0)
        received = b""
        while b"\r\n\r\n" not in received:
            data = conn.recv(65536)
            if not data:
                return
            received += data
        start = time.monotonic()
        if self.mode == "headers":
            payload = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"z" * 100000 + b"\r\n\r\n"
        elif self.mode == "body":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            payload = b"b" * 100000
        else:
            payload = b""
        for i in range(len(payload)):
            if self._stop.is_set() or time.monotonic() - start > self.max_s:
                return
            try:
                conn.sendall(payload[i : i + 1])
            except OSError:
                self.closed_by_client_after_s = time.monotonic() - start
                return
            self.bytes_sent += 1
            time.sleep(self.interval_s)
        while not self._stop.is_set() and time.monotonic() - start < self.max_s:  # silent: wait for the client to go
            try:
                if conn.recv(1) == b"":
                    self.closed_by_client_after_s = time.monotonic() - start
                    return
            except TimeoutError:
                continue
            except OSError:
                return
