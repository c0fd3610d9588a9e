"""The local stack: the whole pipeline on this machine, no AWS account and no Docker.

moto's server on 127.0.0.1 holds the same queues and table as serverless.yml for stage `local`; a
scheduler thread calls the throttler's Lambda handler every tick (EventBridge's job), and the worker's
Lambda handler runs in-process whenever the throttler invokes it. Any boto3 producer pointed at the
endpoint works unchanged. `LocalStack` is the Python API (a context manager) behind `python -m
throttler local`, the demo and the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from throttler.core.clock import SystemClock
from throttler.core.errors import ThrottlerError

logger = logging.getLogger(__name__)

STAGE = "local"
DEFAULT_PORT = 4566
DEFAULT_REGION = "us-east-1"
# moto accepts any credentials; these are used only when none are configured.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Matches handlers/throttler.py: a run stops dispatching this long before Lambda's own timeout.
SETTLE_MARGIN_S = 5.0
# One process hosts the emulator, the throttler, the workers (and the demo's API). A worker thread that
# wakes up for a call's slot must get the interpreter at once, or the call goes out late; with Python's
# default 5 ms switch interval, late by up to ~70 ms under load on two cores, with 1 ms under ~20 ms.
SWITCH_INTERVAL_S = 0.001


class LocalStackError(ThrottlerError):
    """The local stack could not start (the port is taken, the emulator did not come up)."""


@dataclass
class FakeLambdaContext:
    """Just enough of Lambda's context for the handlers and Powertools."""

    function_name: str
    timeout_s: float
    memory_limit_in_mb: int = 512
    aws_request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: float = field(default_factory=time.monotonic)
    # Once this is set, report only `remaining_when_cut_s` left: a run starting during shutdown ends at once.
    cut_short: threading.Event | None = None
    remaining_when_cut_s: float = 0.0

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{DEFAULT_REGION}:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        remaining_s = self.started_at + self.timeout_s - time.monotonic()
        if self.cut_short is not None and self.cut_short.is_set():
            remaining_s = min(remaining_s, self.remaining_when_cut_s)
        return max(0, int(remaining_s * 1000))


class LocalClock(SystemClock):
    """Wall-clock time that can end the run in progress early, for a prompt, clean shutdown.

    A run stops dispatching at its deadline and then settles what is in flight, releases what it holds
    and gives its lease back. `end_runs(ahead_s)` makes `now()` read `ahead_s` later (past any run's
    deadline, which is at most one tick away) and makes every pending sleep return at once, so the run
    in progress winds down exactly as it does at its deadline, and jobs not yet sent miss their slots
    and go back to the queue untouched. Only the stack's shutdown uses it: the skew never reaches a
    run that starts afterwards, and the emulator's state is discarded with it.
    """

    def __init__(self) -> None:
        self._ahead_s = 0.0
        self._ended = threading.Event()

    def now(self) -> float:
        return time.time() + self._ahead_s

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._ended.wait(seconds)

    def end_runs(self, ahead_s: float) -> None:
        self._ahead_s = ahead_s
        self._ended.set()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def scheduled_event() -> dict[str, Any]:
    """What EventBridge sends a scheduled rule's target (the handler does not read it)."""
    return {
        "version": "0",
        "id": uuid.uuid4().hex,
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "detail": {},
    }


@contextlib.contextmanager
def logs_to_stderr(level: str | None = None) -> Iterator[None]:
    """Send the handlers' Powertools logs (JSON lines) to stderr, so stdout stays for results."""
    from throttler.observability import logger as powertools_logger

    handler = powertools_logger.registered_handler
    old_stream = handler.setStream(sys.stderr) if isinstance(handler, logging.StreamHandler) else None
    old_level = powertools_logger.log_level
    if level is not None:
        powertools_logger.setLevel(level)
    try:
        yield
    finally:
        powertools_logger.setLevel(old_level)
        if old_stream is not None and isinstance(handler, logging.StreamHandler):
            handler.setStream(old_stream)


class LocalStack:
    """moto server + stage `local` + scheduled throttler + in-process worker.

    `start()` returns once every resource exists; `stop()` ends the run in progress cleanly, shuts the
    emulator down (its port closes) and restores the process environment and the handlers' wiring.
    Port 0 picks a free port.
    """

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        tick_seconds: float = 60.0,
        *,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
    ):
        if tick_seconds <= 0:
            raise ValueError("tick_seconds must be positive")
        self.host = host
        self.port = port
        self.tick_s = float(tick_seconds)
        self.extra_env = dict(env or {})
        self.env: dict[str, str] = {}
        self.clock = LocalClock()
        self.runs = 0
        self.last_summary: dict[str, Any] | None = None
        self._server: Any = None
        self._saved_env: dict[str, str | None] = {}
        self._saved_wiring: Any = None
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._invokers: list[Any] = []
        self._stopping = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._started = False
        self._session: Any = None
        self._saved_switch_interval: float | None = None

    # ------------------------------------------------------------------ facts
    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def region(self) -> str:
        return self.env.get("AWS_REGION", DEFAULT_REGION)

    @property
    def names(self) -> dict[str, str]:
        return {
            "jobs_queue": f"throttler-{STAGE}-jobs.fifo",
            "dlq": f"throttler-{STAGE}-dlq.fifo",
            "state_table": self.env.get("STATE_TABLE", f"throttler-{STAGE}-state"),
            "throttler_function": f"throttler-{STAGE}-throttler",
            "worker_function": self.env.get("WORKER_FUNCTION", f"throttler-{STAGE}-worker"),
        }

    def client(self, service: str) -> Any:
        """A boto3 client for the emulator (thread-safe, one per service)."""
        with self._lock:
            if service not in self._clients:
                import boto3
                from botocore.config import Config

                self._clients[service] = boto3.session.Session().client(  # type: ignore[call-overload]
                    service,
                    endpoint_url=self.endpoint,
                    region_name=self.region,
                    aws_access_key_id=self.env.get("AWS_ACCESS_KEY_ID"),
                    aws_secret_access_key=self.env.get("AWS_SECRET_ACCESS_KEY"),
                    config=Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=70),
                )
            return self._clients[service]

    # ------------------------------------------------------------------ lifecycle
    def start(self, schedule: bool = True) -> LocalStack:
        """Start the emulator, create the stage's resources, wire the handlers; with `schedule`, start ticking."""
        from moto.server import ThreadedMotoServer

        from throttler import composition
        from throttler_tools.moto_patches import patch_moto_fifo_order
        from throttler_tools.provision import provision

        self.clock = LocalClock()
        self._stopping = threading.Event()
        if self.port and not port_is_free(self.port, self.host):
            raise LocalStackError(f"port {self.port} on {self.host} is in use: pass another with --port")
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        patch_moto_fifo_order()
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        try:
            self._reset_emulator()
            region = os.environ.get("AWS_REGION") or DEFAULT_REGION
            self.env = {"AWS_REGION": region, "AWS_DEFAULT_REGION": region}
            if not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
                self.env.update(LOCAL_CREDENTIALS)
            else:
                self.env["AWS_ACCESS_KEY_ID"] = os.environ["AWS_ACCESS_KEY_ID"]
                self.env["AWS_SECRET_ACCESS_KEY"] = os.environ["AWS_SECRET_ACCESS_KEY"]
            self.env.update(provision(self.client("sqs"), self.client("dynamodb"), STAGE))
            self.env["AWS_ENDPOINT_URL"] = self.endpoint
            self.env.setdefault("POWERTOOLS_METRICS_DISABLED", "true")  # no EMF blobs on stdout
            self.env.update(self.extra_env)
            self._set_environment(self.env)
            self._saved_wiring = composition.wiring()
            self._session = _worker_session()
            composition.configure(
                composition.Wiring(clock=self.clock, get_client=self.client, invoker_factory=self._invoker, session=self._session)
            )
        except Exception:
            self._shutdown_server()
            self._restore_environment()
            raise
        self._started = True
        self._saved_switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        if schedule:
            self.start_scheduler()
        return self

    def start_scheduler(self) -> None:
        """Start calling the throttler handler every tick (the first run starts at once)."""
        if self._scheduler is None:
            self._scheduler = threading.Thread(target=self._schedule, name="local-scheduler", daemon=True)
            self._scheduler.start()

    def stop(self) -> None:
        """End the run in progress (it settles, releases what it holds), stop the emulator, restore the process."""
        if not self._started:
            return
        from throttler import composition

        self._stopping.set()
        if self._scheduler is not None:
            self.clock.end_runs(self.tick_s + 1.0)
            self._scheduler.join()
            self._scheduler = None
        self._shutdown_invokers()
        with contextlib.suppress(OSError):
            self._reset_emulator()  # moto's state is process-wide: leave none behind
        self._shutdown_server()
        composition.configure(self._saved_wiring)
        if self._session is not None:
            self._session.close()  # the worker's keep-alive connections to the API
            self._session = None
        self._restore_environment()
        if self._saved_switch_interval is not None:
            sys.setswitchinterval(self._saved_switch_interval)
            self._saved_switch_interval = None
        self._started = False

    def __enter__(self) -> LocalStack:
        return self.start() if not self._started else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def reset(self) -> None:
        """Empty the emulator and create the stage's resources again (same names and URLs): for tests."""
        from throttler_tools.provision import provision

        self._reset_emulator()
        provision(self.client("sqs"), self.client("dynamodb"), STAGE)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until stop() is called elsewhere (True) or the timeout passes (False)."""
        return self._stopping.wait(timeout_s)

    # ------------------------------------------------------------------ the scheduler
    def run_once(self) -> dict[str, Any] | None:
        """One scheduled invocation of the throttler handler; each run lasts at most one tick."""
        from handlers import throttler as throttler_handler

        worker_timeout_s = float(self.env.get("WORKER_TIMEOUT_S", "40"))
        # The handler stops dispatching at remaining - WORKER_TIMEOUT_S - 5 s: this makes that one tick.
        context = FakeLambdaContext(
            self.names["throttler_function"],
            self.tick_s + worker_timeout_s + SETTLE_MARGIN_S,
            cut_short=self._stopping,
            remaining_when_cut_s=worker_timeout_s + SETTLE_MARGIN_S,
        )
        summary: dict[str, Any] | None = None
        try:
            summary = throttler_handler.handler(scheduled_event(), context)
        except Exception:  # as on Lambda, a failed run is logged and the next tick tries again
            logger.exception("throttler run failed")
        finally:
            self._shutdown_invokers()
            # With POWERTOOLS_METRICS_DISABLED, Powertools never flushes, so never clears, its metric set:
            # clear it, or it grows with every run and leaks into the next handler call in this process.
            from throttler.observability import metrics

            metrics.clear_metrics()
        self.runs += 1
        self.last_summary = summary
        return summary

    def _schedule(self) -> None:
        next_at = time.monotonic()
        while not self._stopping.is_set():
            self.run_once()
            next_at = max(next_at + self.tick_s, time.monotonic())  # a run that overran: next one at once
            self._stopping.wait(next_at - time.monotonic())

    def _invoker(self, settings: Any) -> Any:
        from handlers import worker as worker_handler
        from throttler.invoker import InProcessInvoker

        timeout_s = float(settings.worker_timeout_s)
        function = self.names["worker_function"]

        def invoke(event: dict[str, Any]) -> dict[str, Any]:
            result: dict[str, Any] = worker_handler.handler(event, FakeLambdaContext(function, timeout_s))
            return result

        invoker = InProcessInvoker(invoke, threaded=True)
        with self._lock:
            self._invokers.append(invoker)
        return invoker

    def _shutdown_invokers(self) -> None:
        with self._lock:
            invokers, self._invokers = self._invokers, []
        for invoker in invokers:
            invoker.shutdown()

    # ------------------------------------------------------------------ plumbing
    def _reset_emulator(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")  # noqa: S310 - local
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - our own emulator on 127.0.0.1
            pass

    def _shutdown_server(self) -> None:
        if self._server is not None:
            self._server.stop()  # werkzeug closes the listening socket when serve_forever returns
            self._server = None
        with self._lock:
            self._clients.clear()

    def _set_environment(self, env: Mapping[str, str]) -> None:
        for name, value in env.items():
            if name not in self._saved_env:
                self._saved_env[name] = os.environ.get(name)
            os.environ[name] = value

    def _restore_environment(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}


def _worker_session() -> Any:
    """One requests session for every in-process worker, closed when the stack stops."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_maxsize=32)  # the worker calls up to 32 groups at once
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def serve(port: int, tick_seconds: float, on_ready: Callable[[LocalStack], None], stop: threading.Event) -> None:
    """Run the local stack until `stop` is set (the CLI sets it from SIGINT/SIGTERM)."""
    with logs_to_stderr(), LocalStack(port, tick_seconds) as stack:
        on_ready(stack)
        while not stop.wait(0.5):
            pass
