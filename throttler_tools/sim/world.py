"""A whole stage in virtual time: the SQS model, the state table, the schedule, the runs, the workers and
the fake API, built from serverless.yml like the real stage. Tests, the simulation and the benchmark
use it; `World.run_until` lives through minutes or days in seconds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from throttler.core.envelope import Job, parse_job
from throttler.core.protocol import BatchRequest, JobSpec
from throttler.dispatch.run import ThrottlerRun, Wake
from throttler.dispatch.summary import RunSettings, RunSummary
from throttler.queue import DeadLetters, JobQueue, MemoryJobQueue, MemorySqs, QueuedMessage
from throttler.queue.dead_letters import job_id_of
from throttler.store.base import StateStore, WorkerRecords
from throttler.store.memory import MemoryStateStore
from throttler.tasks import http as http_task
from throttler.tasks.registry import TaskRegistry, ValidationContext
from throttler.worker.calls import CallSetup
from throttler_tools.fakeapi import FakeApi, session_for
from throttler_tools.provision import provision
from throttler_tools.sim.engine import EventLoop, SimClock, SimInvoker, SimWorkers, Ticker, WorkerFaults

START = 1_772_442_000.0  # 2026-03-02 09:00:00 UTC
LOCAL_HOSTS = ("http://127.0.0.1:*", "http://localhost:*")


def job_body(
    path: str = "/ok",
    group: str | None = None,
    seq: int | None = None,
    key: str | None = None,
    cost: int = 1,
    job_id: str | None = None,
    **payload: Any,
) -> str:
    """An http job for the fake API (its query carries group and seq so the API can check order)."""
    query = f"?group={group}&seq={seq}" if group is not None and seq is not None else ""
    envelope: dict[str, Any] = {"task": "http", "payload": {"method": "POST", "url": f"http://127.0.0.1{path}{query}", **payload}}
    if key is not None:
        envelope["key"] = key
    if cost != 1:
        envelope["cost"] = cost
    if job_id is not None:
        envelope["id"] = job_id
    return json.dumps(envelope)


@dataclass
class WorldConfig:
    seed: int = 1
    quotas: dict[str, Any] | None = None  # the quota item (None: the stage default below)
    default_quotas: str = "second=20 minute=600 margin_ms=20"
    default_latency: str = "cost"
    api_tiers: list[tuple[float, int]] = field(default_factory=lambda: [(1, 20), (60, 600)])
    # A call's round trip; half of it is the way to the API. Its spread must stay within the quota's margin
    # (margin_ms), or the API rightly sees calls bunch up: that is what the margin is for.
    latency_s: Callable[[random.Random], float] = lambda rng: rng.uniform(0.045, 0.065)
    faults: WorkerFaults = field(default_factory=WorkerFaults)
    schedule_every_s: float = 60.0
    schedule_jitter_s: tuple[float, float] = (0.05, 0.6)  # EventBridge starts a run this late
    run_budget_s: float = 110.0
    worker_timeout_s: float = 40.0
    max_attempts: int = 3
    retry_base_s: float = 5.0
    retry_max_s: float = 900.0
    max_message_bytes: int = 256 * 1024
    start: float = START
    stage: str = "local"
    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS


@dataclass
class Backends:
    """The AWS side of a world: the in-memory twins by default, or moto's (tests/integration)."""

    queue: JobQueue
    store: StateStore
    records: WorkerRecords
    env: dict[str, str]
    sqs: Any = None  # the MemorySqs model, when the queues are in memory


def memory_backends(clock: SimClock, stage: str) -> Backends:
    sqs = MemorySqs(clock)
    env = provision(sqs, None, stage)
    store = MemoryStateStore()
    return Backends(MemoryJobQueue(sqs, env["JOBS_QUEUE_URL"], env["DLQ_URL"]), store, store, env, sqs)


class World:
    def __init__(
        self,
        config: WorldConfig | None = None,
        backends: Callable[[SimClock, str], Backends] = memory_backends,
        on_advance: Callable[[float], None] | None = None,
    ):
        self.config = cfg = config or WorldConfig()
        self.rng = random.Random(cfg.seed)
        self.loop = EventLoop(cfg.start, on_advance)
        self.clock = SimClock(self.loop)
        self.backends = backends(self.clock, cfg.stage)
        self.sqs = self.backends.sqs
        self.env = self.backends.env
        self.queue = self.backends.queue
        self.store = self.backends.store
        if cfg.quotas is not None:
            self.store.put_quotas(cfg.quotas)
        self.api = FakeApi(tiers=list(cfg.api_tiers), clock=self.clock)
        self.session = session_for(self.api)
        self.registry = TaskRegistry()
        self.registry.register("http", http_task.http_task, http_task.validate_http_payload)
        self.validation = ValidationContext.build(cfg.allowed_hosts, cfg.stage)
        self.calls: list[tuple[JobSpec, float]] = []  # what workers sent, and when
        self.workers = SimWorkers(
            self.loop,
            self.clock,
            self.backends.records,
            self._setup,
            cfg.latency_s,
            self.rng,
            cfg.faults,
            cfg.worker_timeout_s,
            on_call=lambda spec, at: self.calls.append((spec, at)),
        )
        self.runs: list[ThrottlerRun] = []
        self.summaries: list[RunSummary] = []
        self._long_polling: dict[str, Ticker] = {}
        self.crashed: dict[str, Exception] = {}  # runs that raised (their Lambda died), by owner
        if self.sqs is not None:
            self.sqs.on_send.append(lambda _queue, _view: self._wake_pollers())
        self._schedule_started = False

    # ------------------------------------------------------------------ wiring
    def _setup(self, request: BatchRequest) -> CallSetup:
        return CallSetup(
            registry=self.registry,
            clock=self.clock,
            session=self.session,
            validation=self.validation,
            max_message_bytes=self.config.max_message_bytes,
            cost_header=request.cost_header,
        )

    def parse(self, message: QueuedMessage) -> Job:
        return parse_job(
            message.body,
            message.group,
            job_id_of(message),
            tasks=self.registry,
            validation=self.validation,
            max_bytes=self.config.max_message_bytes,
        )

    def run_settings(self) -> RunSettings:
        cfg = self.config
        return RunSettings(
            cfg.default_quotas,
            cfg.default_latency,
            cfg.max_attempts,
            cfg.retry_base_s,
            cfg.retry_max_s,
            cfg.worker_timeout_s,
            64,
            cfg.allowed_hosts,
            cfg.max_message_bytes,
        )

    # ------------------------------------------------------------------ the schedule and the runs
    def start_schedule(self, first_at: float | None = None) -> None:
        """EventBridge: a run every `schedule_every_s`, each starting a little late."""
        if self._schedule_started:
            return
        self._schedule_started = True
        first = self.loop.now if first_at is None else first_at

        def tick(at: float) -> None:
            lo, hi = self.config.schedule_jitter_s
            self.start_run(at + self.rng.uniform(lo, hi))
            self.loop.at(at + self.config.schedule_every_s, lambda: tick(at + self.config.schedule_every_s))

        self.loop.at(first, lambda: tick(first))

    def start_run(self, at: float | None = None, budget_s: float | None = None) -> ThrottlerRun:
        start = self.loop.now if at is None else at
        run = ThrottlerRun(
            settings=self.run_settings(),
            store=self.store,
            queue=self.queue,
            invoker=SimInvoker(self.workers),
            clock=self.clock,
            parse=self.parse,
            owner=f"run-{len(self.runs) + 1}",
        )
        self.runs.append(run)
        ticker = Ticker(self.loop, lambda: self._step(run, ticker))
        run.outbox.on_done = lambda: ticker.schedule(self.loop.now)

        def begin() -> None:
            run.start(self.loop.now + (budget_s if budget_s is not None else self.config.run_budget_s))
            ticker.schedule(self.loop.now)

        self.loop.at(start, begin)
        return run

    def _step(self, run: ThrottlerRun, ticker: Ticker) -> None:
        if run.owner in self.crashed:
            return
        try:
            if self._long_polling.pop(run.owner, None) is not None:
                run.long_poll(0)  # SQS long polling: the wait ended (a message came, or the time is up)
            wake: Wake | None = run.step(self.loop.now)
        except Exception as exc:  # noqa: BLE001 - a run that raises dies as its Lambda would: nothing cleaned up
            self.crashed[run.owner] = exc
            return
        if wake is None:
            self.summaries.append(run.summary)
            return
        if wake.long_poll:
            self._long_polling[run.owner] = ticker
        ticker.schedule(wake.at)

    def _wake_pollers(self) -> None:
        for ticker in list(self._long_polling.values()):
            ticker.schedule(self.loop.now)

    # ------------------------------------------------------------------ producers and time
    def enqueue(self, jobs: Iterable[tuple[str, str, str]]) -> None:
        """(body, group, job id) triples, sent in order now."""
        self.queue.send(list(jobs))

    def enqueue_at(self, at: float, jobs: list[tuple[str, str, str]]) -> None:
        self.loop.at(at, lambda: self.enqueue(jobs))

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> None:
        self.loop.run_until(t, stop)

    def run_for(self, seconds: float) -> None:
        self.loop.run_until(self.loop.now + seconds)

    def drain(self, timeout_s: float = 1800.0) -> bool:
        """Scheduled runs until the queue holds nothing (visible, in flight or delayed); True if it emptied."""
        self.start_schedule()
        done = [False]

        def check() -> None:
            if self.depth() == 0:
                done[0] = True
            else:
                self.loop.at(self.loop.now + 1.0, check)

        self.loop.at(self.loop.now + 1.0, check)
        self.loop.run_until(self.loop.now + timeout_s, stop=lambda: done[0])
        return done[0]

    # ------------------------------------------------------------------ what happened
    def depth(self) -> int:
        return self.queue.depth().total

    def dead_letters(self) -> list[Any]:
        """The DLQ's messages, described (reason, attempts, job id, body, group)."""
        return DeadLetters(self.queue).peek(10_000)
