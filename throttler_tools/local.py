"""The local stack: the whole pipeline on this machine, no AWS account and no Docker.

moto's server on 127.0.0.1 holds the queues and table of serverless.yml for stage `local`; a scheduler
invokes the throttler's Lambda handler every tick (EventBridge's job), and the worker's Lambda handler
runs in-process, on threads, whenever a run invokes it. Each handler gets a Composition built here (the
emulator's clients, the stage's settings), as Lambda would build one from its environment. Any boto3
producer pointed at the endpoint works unchanged. `LocalStack` is the Python API (a context manager)
behind `python -m throttler local`, the demo and the end-to-end tests; `serve` is the command's loop.
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

from throttler.composition import Composition
from throttler.core.errors import ThrottlerError
from throttler.dispatch.run import ThrottlerRun

logger = logging.getLogger(__name__)

STAGE = "local"
DEFAULT_PORT = 4566
DEFAULT_REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
# moto accepts any credentials: the stack and what it prints use these, never the caller's real ones.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# As serverless.yml: the throttler may run twice at once (a run and its successor, during the hand-over).
THROTTLER_CONCURRENCY = 2
# One process hosts the emulator, the runs, the workers (and the demo's API). A worker thread that wakes up
# for a call's slot must get the interpreter at once, or the call goes out late; with Python's default 5 ms
# switch interval, late by up to ~70 ms under load on two cores, with 1 ms under ~20 ms.
SWITCH_INTERVAL_S = 0.001
# The stage's default quotas get this safety margin here (unless they name one): a worker may send a call at
# most half the smallest margin after its slot (2 ms with the default margin of a `second` tier), and in this
# one busy process (emulator, runs, workers, the demo's API) a worker thread wakes up several milliseconds late.
LOCAL_MARGIN_MS = 50
STOP_POLL_S = 0.1
STOP_WAIT_S = 90.0  # a run settles its batches in flight (a few seconds of slots) before it returns


class LocalStackError(ThrottlerError):
    """The local stack could not start (the port is taken, the emulator did not come up)."""


@dataclass
class FakeLambdaContext:
    """Just enough of Lambda's context for the handlers and Powertools."""

    function_name: str
    timeout_s: float
    # None: both functions share this process with the emulator, so its CPU says nothing of a function's share.
    memory_limit_in_mb: int | None = None
    aws_request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: float = field(default_factory=time.monotonic)
    # Once this is set, report at most `remaining_when_cut_s` left: a run starting during shutdown ends at once.
    cut_short: threading.Event | None = None
    remaining_when_cut_s: float = 0.0
    region: str = DEFAULT_REGION

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        remaining_s = self.started_at + self.timeout_s - time.monotonic()
        if self.cut_short is not None and self.cut_short.is_set():
            remaining_s = min(remaining_s, self.remaining_when_cut_s)
        return max(0, int(remaining_s * 1000))


@dataclass
class LocalComposition(Composition):
    """The runtime's composition root with two local seams: it reports each run it builds (so that the
    stack can end runs early on shutdown), and the worker reads SSM through the emulator's client."""

    on_run: Callable[[ThrottlerRun], None] | None = None

    def run(self, owner: str | None = None) -> ThrottlerRun:
        run = super().run(owner)
        if self.on_run is not None:
            self.on_run(run)
        return run


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


class LocalStack:
    """moto server + stage `local` + scheduled throttler + in-process worker.

    `start()` returns once every resource exists; `stop()` ends the runs in progress cleanly (each stops
    planning, puts back the jobs it holds, gives its lease back and settles its batches in flight), shuts
    the emulator down (its port closes) and puts the process back as it was. Port 0 picks a free port.
    `env` overrides the functions' environment (e.g. {"DEFAULT_LATENCY": "low", "RETRY_BASE_S": "2"}).
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
        self.runs = 0  # throttler invocations that returned
        self.skipped_ticks = 0  # ticks that found THROTTLER_CONCURRENCY invocations still running
        self.last_summary: dict[str, Any] | None = None
        self.summaries: list[dict[str, Any]] = []
        self.timeouts_s = {"throttler": 170.0, "worker": 40.0}
        self._server: Any = None
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._live_runs: list[ThrottlerRun] = []
        self._invocations: list[threading.Thread] = []
        self._invokers: dict[int, list[Any]] = {}
        self._stopping = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._started = False
        self._throttler_handler: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None
        self._worker_handler: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None
        self._saved_env: dict[str, str | None] = {}
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

    @property
    def client_env(self) -> dict[str, str]:
        """Every variable a producer, boto3, the AWS CLI v2 and this command line need to reach the stack."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            **LOCAL_CREDENTIALS,
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
                    aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                    aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                    config=Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=70),
                )
            return self._clients[service]

    # ------------------------------------------------------------------ lifecycle
    def start(self, schedule: bool = True) -> LocalStack:
        """Start the emulator, create the stage's resources, build the handlers; with `schedule`, start ticking."""
        from moto.server import ThreadedMotoServer

        from throttler_tools.moto_patches import patch_moto_fifo_order

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
            self._provision()
            self._build_handlers()
        except Exception:
            self._shutdown_server()
            raise
        # With metrics disabled Powertools prints no EMF blobs (each handler would print one per invocation).
        self._set_environment({"POWERTOOLS_METRICS_DISABLED": "true"})
        self._started = True
        self._saved_switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        if schedule:
            self.start_scheduler()
        return self

    def start_scheduler(self) -> None:
        """Start invoking the throttler handler every tick (the first invocation at once)."""
        if self._scheduler is None:
            self._scheduler = threading.Thread(target=self._schedule, name="local-scheduler", daemon=True)
            self._scheduler.start()

    def stop(self) -> None:
        """End the runs in progress (each settles and puts back what it holds), stop the emulator, restore the process."""
        if not self._started:
            return
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.join()
            self._scheduler = None
        self._end_runs()
        with contextlib.suppress(OSError):
            self._reset_emulator()  # moto's state is process-wide: leave none behind
        self._shutdown_server()
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
        self._reset_emulator()
        self._provision()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until stop() is called elsewhere (True) or the timeout passes (False)."""
        return self._stopping.wait(timeout_s)

    # ------------------------------------------------------------------ the functions
    def settings(self) -> Any:
        from throttler.settings import Settings

        return Settings.from_env(self.env)

    def _provision(self) -> None:
        from throttler.dispatch.handover import SUCCESSION_AHEAD_S
        from throttler_tools.provision import provision
        from throttler_tools.stackdef import stage_definition

        definition = stage_definition(STAGE)
        for role in ("throttler", "worker"):
            timeout = definition["functions"].get(role, {}).get("timeout")
            if timeout:
                self.timeouts_s[role] = float(timeout)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        self.env = {"AWS_REGION": region, "AWS_DEFAULT_REGION": region, "AWS_ENDPOINT_URL": self.endpoint}
        self.env.update(provision(self.client("sqs"), self.client("dynamodb"), STAGE))
        if self.env.get("DEFAULT_QUOTAS") and "margin_ms" not in self.env["DEFAULT_QUOTAS"]:
            self.env["DEFAULT_QUOTAS"] += f" margin_ms={LOCAL_MARGIN_MS}"
        # Each run lasts about one tick (SPEC): with a budget under SUCCESSION_AHEAD_S the next tick's run always
        # asks for the lease (runs on AWS last their 290 s budget, to save hand-overs).
        budget = min(float(self.env.get("RUN_BUDGET_S", "290")), SUCCESSION_AHEAD_S - 10)
        self.env["RUN_BUDGET_S"] = f"{budget:g}"
        self.env.update(self.extra_env)

    def _build_handlers(self) -> None:
        from handlers import throttler as throttler_handler
        from handlers import worker as worker_handler

        settings = self.settings()
        ssm = self.client("ssm")

        def get_parameter(name: str) -> Any:
            return ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]

        throttler_side = LocalComposition(settings, clients=self.client, invoker=self._new_invoker, on_run=self._track_run)
        worker_side = LocalComposition(settings, clients=self.client, get_parameter=get_parameter)
        self._throttler_handler = throttler_handler.make_handler(lambda: throttler_side)
        self._worker_handler = worker_handler.make_handler(lambda: worker_side)

    def _track_run(self, run: ThrottlerRun) -> None:
        with self._lock:
            self._live_runs.append(run)

    def _new_invoker(self, composition: Composition) -> Any:
        from throttler.worker.invoker import InProcessInvoker
        from throttler_tools.locallogs import invocation

        function = self.names["worker_function"]
        timeout_s = self.timeouts_s["worker"]

        def invoke(event: dict[str, Any]) -> dict[str, Any]:
            assert self._worker_handler is not None
            context = FakeLambdaContext(function, timeout_s, region=self.region)
            with invocation("worker", function, context.aws_request_id, context.invoked_function_arn):
                return self._worker_handler(event, context)

        invoker = InProcessInvoker(invoke)
        with self._lock:
            self._invokers.setdefault(threading.get_ident(), []).append(invoker)
        return invoker

    def run_once(self) -> dict[str, Any] | None:
        """One invocation of the throttler handler, on this thread; returns its summary (None if it failed)."""
        from throttler.observability import metrics
        from throttler_tools.locallogs import invocation

        assert self._throttler_handler is not None
        function = self.names["throttler_function"]
        context = FakeLambdaContext(
            function, self.timeouts_s["throttler"], cut_short=self._stopping, remaining_when_cut_s=0.0, region=self.region
        )
        summary: dict[str, Any] | None = None
        try:
            with invocation("throttler", function, context.aws_request_id, context.invoked_function_arn):
                summary = self._throttler_handler(scheduled_event(), context)
        except Exception:  # as on Lambda, a failed run is logged and the next tick starts another
            logger.exception("throttler run failed")
        finally:
            with self._lock:
                invokers = self._invokers.pop(threading.get_ident(), [])
                self._live_runs = [r for r in self._live_runs if r.owner != context.aws_request_id]
            for invoker in invokers:
                invoker.shutdown()
            # Metrics are disabled here, so Powertools never flushes (never clears) its metric set: clear it,
            # or it grows with every invocation.
            metrics.clear_metrics()
        with self._lock:
            self.runs += 1
            self.last_summary = summary
            if summary is not None:
                self.summaries.append(summary)
        return summary

    def _schedule(self) -> None:
        next_at = time.monotonic()
        n = 0
        while not self._stopping.is_set():
            with self._lock:
                self._invocations = [t for t in self._invocations if t.is_alive()]
                busy = len(self._invocations) >= THROTTLER_CONCURRENCY
            if busy:  # Lambda would refuse the invocation (reserved concurrency); the next tick tries again
                self.skipped_ticks += 1
                logger.warning("throttler invocation skipped: the previous runs are still going")
            else:
                n += 1
                thread = threading.Thread(target=self.run_once, name=f"throttler-run-{n}", daemon=True)
                with self._lock:
                    self._invocations.append(thread)
                thread.start()
            next_at = max(next_at + self.tick_s, time.monotonic())
            self._stopping.wait(next_at - time.monotonic())

    def _end_runs(self) -> None:
        """Bring every run's deadline to now: each stops planning, releases what it holds, gives the lease back
        and settles its batches in flight, exactly as at its deadline. A run not built yet starts cut short."""
        end = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < end:
            with self._lock:
                threads = [t for t in self._invocations if t.is_alive()]
                runs = list(self._live_runs)
            if not threads:
                break
            for run in runs:
                _cut_short(run)
                run.wakeup.set()
            threads[0].join(STOP_POLL_S)
        with self._lock:
            self._invocations = []
            leftovers = [i for invokers in self._invokers.values() for i in invokers]
            self._invokers = {}
        for invoker in leftovers:
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
            # Its request threads are daemons nobody joins: let the last answers (a long poll's) finish.
            end = time.monotonic() + 3.0
            for thread in [t for t in threading.enumerate() if "process_request_thread" in t.name]:
                thread.join(max(0.0, end - time.monotonic()))
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


def _cut_short(run: ThrottlerRun) -> None:
    """Bring a run's deadline to now (it plans nothing more, then ends as at its deadline)."""
    timing = getattr(run, "t", None)  # the run's timers (throttler.dispatch.timing)
    if timing is not None:
        timing.deadline = min(timing.deadline, run.clock.now())
    else:
        run.deadline = min(run.deadline, run.clock.now())  # type: ignore[misc]


@contextlib.contextmanager
def logs_to_stderr(level: str | None = None, *, json_lines: bool = False) -> Iterator[None]:
    """The handlers' and the stack's logs on stderr (stdout stays for results), with the right function names."""
    from throttler_tools.locallogs import local_logs

    names = {
        "throttler": f"throttler-{STAGE}-throttler",
        "worker": f"throttler-{STAGE}-worker",
        "local": "local-stack",
        "echo-api": "echo-api",
    }
    with local_logs(names, json_lines=json_lines, level=level):
        yield


def serve(
    stack: LocalStack,
    on_ready: Callable[..., None],
    stop: threading.Event,
    *,
    echo_port: int | None = None,
    dashboard_port: int | None = None,
    json_logs: bool = False,
) -> None:
    """Run the local stack (and the echo API when `echo_port` is not None, the live dashboard when
    `dashboard_port` is not None) until `stop` is set (the CLI sets it from SIGINT/SIGTERM); everything is
    stopped and its ports closed on return. `on_ready(stack, echo, dashboard)` is called once all are up."""
    from throttler_tools.echoapi import EchoApi

    with logs_to_stderr(json_lines=json_logs):
        echo: EchoApi | None = None
        board: Any = None
        if echo_port is not None:
            if echo_port and not port_is_free(echo_port):
                raise LocalStackError(f"port {echo_port} on 127.0.0.1 is in use: pass another with --echo-port")
        if dashboard_port is not None:
            if dashboard_port and not port_is_free(dashboard_port):
                raise LocalStackError(f"port {dashboard_port} on 127.0.0.1 is in use: pass another with --dashboard-port")
        # The echo API stops after the stack: the runs settle their batches (calls in flight finish) first, so a
        # stop never turns a call into a failed attempt.
        try:
            with stack:
                if echo_port is not None:
                    names = [h for h, _ in stack.settings().secret_headers]
                    echo = EchoApi(port=echo_port, secret_header_names=names).start()
                if dashboard_port is not None:
                    from throttler_tools.dashboard import serve_dashboard

                    board = serve_dashboard(stack, port=dashboard_port, stage_name=STAGE)
                on_ready(stack, echo, board)
                while not stop.wait(0.2):
                    pass
                logger.info("stopping: runs in progress settle and put back what they hold")
        finally:
            if board is not None:
                board.stop()
            if echo is not None:
                echo.stop()
