"""The dashboard's HTTP server, on the standard library: one page, one script, one stylesheet, JSON endpoints.

GET  /             the page (static/index.html; no build step)
GET  /api/state    everything the page shows (Dashboard.state), polled by the page every second
POST /api/pause    {"duration": "10m"} or {"duration": ""} (until resume)
POST /api/resume   {}
POST /api/quota    {"assignments": "second=5 minute=100", "scope": "stage" | "per_key" | "key", "key": "K"}

It has no authentication of its own: it binds 127.0.0.1 by default, and a write is made with the AWS
credentials of the process that serves it. Against other web pages open in the same browser, it answers only
requests whose Host is its own address (no DNS rebinding), and takes a write only as JSON carrying the page's
token in a header, which a cross-site form or script cannot send.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from throttler_tools.dashboard.model import Dashboard, Outcome, StageSource

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/style.css": ("style.css", "text/css; charset=utf-8")}
TOKEN_HEADER = "X-Dashboard-Token"  # noqa: S105 - a header name, not a secret
MAX_BODY_BYTES = 16 * 1024
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
}


class DashboardServer:
    """A running dashboard: `url`, `stop()`; a context manager. `serve_dashboard()` builds and starts one."""

    def __init__(self, dashboard: Dashboard, host: str = "127.0.0.1", port: int = 0):
        self.dashboard = dashboard
        self.token = secrets.token_urlsafe(24)
        self._httpd = ThreadingHTTPServer((host, port), _handler_class(self))
        self._httpd.daemon_threads = True
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None
        self._serving = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def loopback_only(self) -> bool:
        return self.host in LOOPBACK

    def allowed_hosts(self) -> set[str]:
        names = {self.host, *LOOPBACK} if self.loopback_only or self.host in ("0.0.0.0", "::") else {self.host}  # noqa: S104
        return {f"{n}:{self.port}" for n in names} | {f"[{n}]:{self.port}" for n in names if ":" in n}

    def start(self) -> DashboardServer:
        """Serve on a background thread (daemon: it never keeps the process alive)."""
        if self._thread is None:
            self._serving = True
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="dashboard", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until stop() is called from another (the CLI's Ctrl-C handler)."""
        self._serving = True
        self._httpd.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the port (idempotent)."""
        if self._serving:  # (shutdown() waits for serve_forever: never call it on a server that never served)
            self._serving = False
            self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def serve_dashboard(
    stage: StageSource | Any, host: str = "127.0.0.1", port: int = 0, *, read_only: bool = False,
    stage_name: str = "local",
) -> DashboardServer:
    """Start a dashboard on a background thread and return it (`.url`, `.stop()`).

    `stage` is a `throttler_tools.cli.base.StageAws`, or anything with a `client(service)` method (the local
    stack) or a `client(service)` function, whose clients reach a stage named `stage_name`. Port 0 picks a
    free port.
    """
    from throttler_tools.dashboard.stage import stage_source

    return DashboardServer(Dashboard(stage_source(stage, stage_name), read_only=read_only), host, port).start()


def _handler_class(server: DashboardServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "throttler-dashboard"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("dashboard request", extra={"line": format % args})

        # -------------------------------------------------------------- plumbing
        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, data: Any) -> None:
            self._send(status, json.dumps(data, default=str).encode(), "application/json")

        def _host_ok(self) -> bool:
            if (self.headers.get("Host") or "").lower() in server.allowed_hosts():
                return True
            self._json(HTTPStatus.FORBIDDEN, {"ok": False, "error": "unexpected Host header"})
            return False

        # -------------------------------------------------------------- reading
        def do_GET(self) -> None:
            if not self._host_ok():
                return
            path = self.path.split("?", 1)[0]
            if path == "/api/state":
                self._json(HTTPStatus.OK, server.dashboard.state())
            elif path in FILES:
                name, content_type = FILES[path]
                body = (STATIC / name).read_text(encoding="utf-8")
                if name == "index.html":
                    body = body.replace("{{TOKEN}}", server.token).replace("{{STAGE}}", _html(server.dashboard.stage))
                self._send(HTTPStatus.OK, body.encode(), content_type)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"ok": False, "error": f"no such page: {path}"})

        do_HEAD = do_GET

        # -------------------------------------------------------------- acting
        def do_POST(self) -> None:
            if not self._host_ok():
                return
            if not secrets.compare_digest(self.headers.get(TOKEN_HEADER) or "", server.token):
                self._json(HTTPStatus.FORBIDDEN, {"ok": False, "error": "missing or wrong dashboard token: reload the page"})
                return
            if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
                self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"ok": False, "error": "send JSON"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"ok": False, "error": "request too large"})
                return
            try:
                data = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("not an object")
            except ValueError:
                self._json(HTTPStatus.BAD_REQUEST, {"ok": False, "error": "the request is not a JSON object"})
                return
            outcome = _act(server.dashboard, self.path, data)
            self._json(outcome.status, outcome.to_dict())

    return Handler


def _act(dashboard: Dashboard, path: str, data: dict[str, Any]) -> Outcome:
    if path == "/api/pause":
        duration = data.get("duration")
        return dashboard.pause(str(duration) if duration is not None else None)
    if path == "/api/resume":
        return dashboard.resume()
    if path == "/api/quota":
        scope = str(data.get("scope") or "stage")
        if scope not in ("stage", "per_key", "key"):
            return Outcome(False, error=f"unknown scope {scope!r}: stage, per_key or key", status=400)
        key = str(data.get("key") or "") if scope == "key" else None
        return dashboard.set_quota(str(data.get("assignments") or ""), key=key, per_key=scope == "per_key")
    return Outcome(False, error=f"no such action: {path}", status=404)


def _html(text: str) -> str:
    import html

    return html.escape(text, quote=True)
