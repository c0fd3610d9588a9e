"""A real throttler on the emulated stage, for the browser test: runs of a few seconds one after another on a
thread (what EventBridge does every minute), the worker in-process, calling a FakeApi that enforces quotas.
The library is driven directly (no Lambda handler, no Powertools): what the dashboard sees is the state table
and the queues that these runs really write."""

from __future__ import annotations

import logging
import threading
from typing import Any

import boto3

from throttler.composition import Composition
from throttler.dispatch.run import drive
from throttler.dispatch.summary import RunSummary
from throttler.settings import Settings
from throttler.worker.invoker import InProcessInvoker
from throttler_tools.fakeapi import FakeApi, session_for

logger = logging.getLogger(__name__)


class Pipeline:
    """Throttler runs of `run_s` seconds against `endpoint`, until stop(); a run that ends early is followed
    by the next after at most `tick_s`. `summaries`: the ended runs' reports (started_at, dispatched...)."""

    def __init__(self, endpoint: str, env: dict[str, str], api: FakeApi, run_s: float = 5.0, tick_s: float = 0.5):
        self.api = api
        self.run_s = run_s
        self.tick_s = tick_s
        self.summaries: list[RunSummary] = []  # of the runs that ended, in order
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        clients: dict[str, Any] = {}
        lock = threading.Lock()

        def client(service: str) -> Any:
            with lock:
                if service not in clients:
                    clients[service] = boto3.session.Session().client(  # type: ignore[call-overload]
                        service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")
                return clients[service]

        settings = Settings.from_env({**env, "RUN_BUDGET_S": str(run_s), "WORKER_TIMEOUT_S": "10", "DEFAULT_LATENCY": "low"})
        worker = Composition(settings, clients=client, new_session=lambda n: session_for(api)).worker()
        self.composition = Composition(
            settings, clients=client, invoker=lambda c: InProcessInvoker(lambda event: worker.run_batch(event, 10.0))
        )

    def start(self) -> Pipeline:
        self._thread = threading.Thread(target=self._loop, name="throttler-runs", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            run = self.composition.run(owner=f"dashboard-test-{len(self.summaries)}")
            deadline = run.clock.now() + self.run_s
            try:
                self.summaries.append(drive(run, deadline))
            except Exception as exc:  # a failed run is reported by the test, as the throttler alarm would
                logger.exception("throttler run failed")
                self.failures.append(exc)
            # A run that ended early (paused, or failed) is followed by the next tick, not at once.
            self._stop.wait(min(self.tick_s, max(0.0, deadline - run.clock.now())))

    def stop(self) -> None:
        """Let the run in progress reach its deadline, settle and release what it holds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.run_s + 30)
