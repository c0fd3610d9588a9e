"""A whole stage in virtual time: the SQS model, the state table, the schedule, the runs, the workers and
the fake API, built from serverless.yml like the real stage. Tests, the simulation and the benchmark
use it; `World.run_until` lives through minutes or days in seconds.

The schedule behaves as the stage's EventBridge rule and Lambda settings do: a run a minute, each a
little late (sometimes much later, sometimes never), at most `throttler_concurrency` runs at once (a
throttled event is retried for up to `max_event_age_s`, then dropped), no retry of a failed run, and
Lambda's timeout kills a run that outlives it. A run whose step raises has died: it is never stepped
again, what it held stays hidden until its visibility runs out, and its lease expires.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from throttler.core.envelope import Job, parse_job
from throttler.core.protocol import BatchRequest, JobSpec
from throttler.dispatch.run import ThrottlerRun, Wake
from throttler.dispatch.summary import RunSettings, RunSummary
from throttler.queue import DeadLetters, JobQueue, MemoryJobQueue, MemorySqs, QueuedMessage
from throttler.queue.base import QueueError
from throttler.queue.dead_letters import job_id_of
from throttler.store.base import StateStore, WorkerRecords
from throttler.store.memory import MemoryStateStore
from throttler.tasks import http as http_task
from throttler.tasks.registry import TaskRegistry, ValidationContext
from throttler.worker.calls import CallSetup
from throttler_tools.fakeapi import FakeApi, session_for
from throttler_tools.provision import provision
from throttler_tools.sim.engine import EventLoop, Latency, SimClock, SimInvoker, SimWorkers, Ticker, WorkerFaults
from throttler_tools.sim.faults import EXPECTED_RUN_ERRORS, Faulty, ProcessDied, RunFaults

START = 1_772_442_000.0  # 2026-03-02 09:00:00 UTC
LOCAL_HOSTS = ("http://127.0.0.1:*", "http://localhost:*")


def job_body(path: str = "/ok", group: str | None = None, seq: int | None = None, key: str | None = None,
             cost: int = 1, job_id: str | None = None, **payload: Any) -> str:
    """An http job for the fake API (its query carries group and seq so the API can check order, the key
    as `tenant` and the cost, so the API can enforce per-key limits and count units)."""
    query = []
    if group is not None and seq is not None:
        query += [f"group={group}", f"seq={seq}"]
    if key is not None:
        query.append(f"tenant={key}")
    if cost != 1:
        query.append(f"cost={cost}")
    url = f"http://127.0.0.1{path}" + ("?" + "&".join(query) if query else "")
    envelope: dict[str, Any] = {"task": "http", "payload": {"method": "POST", "url": url, **payload}}
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
    api_aligned: list[tuple[float, int]] = field(default_factory=list)
    # A call's round trip; half of it is the way to the API. Its spread must stay within the quota's margin
    # (margin_ms), or the API rightly sees calls bunch up: that is what the margin is for.
    latency_s: Callable[[random.Random], float] = lambda rng: rng.uniform(0.045, 0.065)
    latency: Latency | None = None  # outbound / API / inbound (None: `latency_s`, half of it outbound)
    faults: WorkerFaults = field(default_factory=WorkerFaults)
    run_faults: RunFaults = field(default_factory=RunFaults)
    schedule_every_s: float = 60.0
    # The simulation's coarser idle step: a scheduled run is not started while the stage is idle (the queue
    # empty: nothing visible, in flight or delayed) and no job arrives within its budget. Such a run would
    # only take the lease, find nothing and end (or long-poll an empty queue, latency=low, while the run
    # before it does the same); skipping it keeps an idle day cheap. A run after an edit of the quota item is
    # never skipped: it reads the item and records it as the last good one (see World.quotas_written).
    skip_idle_runs: bool = False
    schedule_jitter_s: tuple[float, float] = (0.05, 0.6)  # EventBridge starts a run this late
    run_budget_s: float = 290.0  # serverless.yml's RUN_BUDGET_S
    throttler_timeout_s: float = 350.0  # the function's timeout: Lambda kills a run still going then
    throttler_concurrency: int = 2  # reservedConcurrency
    max_event_age_s: float = 60.0  # a throttled scheduled event is retried this long, then dropped
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


@dataclass
class RunDeath:
    owner: str
    at: float
    error: str
    expected: bool  # an injected fault (AWS error, crash, timeout); else a bug in the run
    held: frozenset[str] = frozenset()  # the messages it held when it died (each will be received again)


@dataclass
class QueueEvent:
    at: float
    queue: str  # "jobs" or "dlq"
    message_id: str
    dedup_id: str
    group: str
    body: str


class World:
    def __init__(self, config: WorldConfig | None = None,
                 backends: Callable[[SimClock, str], Backends] = memory_backends,
                 on_advance: Callable[[float], None] | None = None):
        self.config = cfg = config or WorldConfig()
        self.rng = random.Random(cfg.seed)
        self.fault_rng = random.Random(cfg.seed * 7919 + 1)
        self.loop = EventLoop(cfg.start, on_advance)
        self.clock = SimClock(self.loop)
        self.backends = backends(self.clock, cfg.stage)
        self.sqs = self.backends.sqs
        self.env = self.backends.env
        self.queue = self.backends.queue
        self.store = self.backends.store
        rf = cfg.run_faults
        # What the runs use: the same store and queue, through proxies that may fail (producers and
        # operators use them directly).
        self.run_store = Faulty(self.store, "store", self.fault_rng, rf.store_error, rf.store_error_after)
        self.run_queue = Faulty(self.queue, "queue", self.fault_rng, rf.queue_error, rf.queue_error_after, QueueError)
        self.run_queue.observers.append(self._observe_queue)
        # Per message id: when runs received it, and which; when it left the jobs queue (deleted or dead-lettered).
        self.received_at: dict[str, list[float]] = {}
        self.received_by: dict[str, list[str | None]] = {}
        self._stepping: str | None = None  # the run whose code runs now
        self.left_at: dict[str, float] = {}
        self._receipts: dict[str, str] = {}
        if cfg.quotas is not None:
            self.store.put_quotas(cfg.quotas)
        self.api = FakeApi(tiers=list(cfg.api_tiers), clock=self.clock, aligned=list(cfg.api_aligned))
        self.session = session_for(self.api)
        self.registry = TaskRegistry()
        self.registry.register("http", http_task.http_task, http_task.check_http_payload)
        self.validation = ValidationContext.build(cfg.allowed_hosts, cfg.stage)
        self.calls: list[tuple[JobSpec, float]] = []  # what workers sent, and when
        self.workers = SimWorkers(self.loop, self.clock, self.backends.records, self._setup, cfg.latency or cfg.latency_s,
                                  self.rng, cfg.faults, cfg.worker_timeout_s,
                                  on_call=lambda spec, at: self.calls.append((spec, at)), service_s=self.api.service_s)
        self.runs: list[ThrottlerRun] = []
        self.summaries: list[RunSummary] = []
        self.deaths: list[RunDeath] = []
        self.queue_events: list[QueueEvent] = []
        self.dropped_events = 0  # scheduled runs that never started (throttled past their age, or lost)
        self.idle_runs_skipped = 0
        self._arrivals: list[float] = []  # when enqueue_at jobs arrive (sorted)
        self._alive: dict[str, ThrottlerRun] = {}
        self._quotas_unread = False  # the quota item was edited since the last run started
        self._dead: set[str] = set()
        self._frozen_until: dict[str, float] = {}
        self._long_polling: dict[str, Ticker] = {}
        self.crashed: dict[str, BaseException] = {}  # runs that raised (their Lambda died), by owner
        if self.sqs is not None:
            self.sqs.on_send.append(self._on_send)
        self._schedule_started = False
        self._schedule_stopped = False

    # ------------------------------------------------------------------ wiring
    def _setup(self, request: BatchRequest) -> CallSetup:
        return CallSetup(registry=self.registry, clock=self.clock, session=self.session, validation=self.validation,
                         max_message_bytes=self.config.max_message_bytes, cost_header=request.cost_header)

    def parse(self, message: QueuedMessage) -> Job:
        return parse_job(message.body, message.group, job_id_of(message), tasks=self.registry, validation=self.validation,
                         max_bytes=self.config.max_message_bytes)

    def run_settings(self) -> RunSettings:
        cfg = self.config
        return RunSettings(cfg.default_quotas, cfg.default_latency, cfg.max_attempts, cfg.retry_base_s, cfg.retry_max_s,
                           cfg.worker_timeout_s, 64, cfg.allowed_hosts, cfg.max_message_bytes)

    def _on_send(self, queue: str, view: Any) -> None:
        kind = "dlq" if queue.endswith("-dlq.fifo") else "jobs"
        self.queue_events.append(QueueEvent(self.loop.now, kind, view.message_id, view.dedup_id, view.group, view.body))
        self._wake_pollers()

    def _observe_queue(self, op: str, args: tuple[Any, ...], result: Any) -> None:
        now = self.loop.now
        if op == "queue.receive":
            for message in result:
                self.received_at.setdefault(message.message_id, []).append(now)
                self.received_by.setdefault(message.message_id, []).append(self._stepping)
                self._receipts[message.receipt] = message.message_id
        elif op == "queue.delete":
            failed = set(result)
            for receipt in args[0]:
                message_id = self._receipts.get(receipt)
                if message_id is not None and receipt not in failed:
                    self.left_at.setdefault(message_id, now)
        elif op == "queue.dead_letter":
            for letter in args[0]:
                self.left_at.setdefault(letter.message.message_id, now)

    # ------------------------------------------------------------------ the schedule and the runs
    def start_schedule(self, first_at: float | None = None) -> None:
        """EventBridge: a run every `schedule_every_s`, each starting a little late."""
        if self._schedule_started:
            return
        self._schedule_started = True
        first = self.loop.now if first_at is None else first_at

        def tick(at: float) -> None:
            if self._schedule_stopped:
                return
            rf = self.config.run_faults
            if rf.skip and self.fault_rng.random() < rf.skip:
                self.dropped_events += 1
            else:
                lo, hi = self.config.schedule_jitter_s
                delay = self.rng.uniform(lo, hi)
                if rf.late and self.fault_rng.random() < rf.late:
                    delay += self.fault_rng.uniform(*rf.late_s)
                self.loop.at(at + delay, lambda: self._invoke_scheduled(at))
            self.loop.at(at + self.config.schedule_every_s, lambda: tick(at + self.config.schedule_every_s))

        self.loop.at(first, lambda: tick(first))

    def stop_schedule(self) -> None:
        self._schedule_stopped = True

    def _invoke_scheduled(self, event_at: float) -> None:
        """Lambda's async invoke of the scheduled event: throttled while the reserved concurrency is in use
        (retried for up to max_event_age_s), then dropped."""
        if self.config.skip_idle_runs and self._idle(self.loop.now):
            self.idle_runs_skipped += 1
        elif len(self._alive) < self.config.throttler_concurrency:
            self.start_run()
        elif self.loop.now - event_at < self.config.max_event_age_s:
            self.loop.at(self.loop.now + self.rng.uniform(1.0, 5.0), lambda: self._invoke_scheduled(event_at))
        else:
            self.dropped_events += 1

    def start_run(self, at: float | None = None, budget_s: float | None = None) -> ThrottlerRun:
        start = self.loop.now if at is None else at
        run = ThrottlerRun(settings=self.run_settings(), store=cast(StateStore, self.run_store),
                           queue=cast(JobQueue, self.run_queue), invoker=SimInvoker(self.workers),
                           clock=self.clock, parse=self.parse, owner=f"run-{len(self.runs) + 1}")
        self.runs.append(run)
        numbers = itertools.count(1)
        run.outbox.new_batch_id = lambda: f"{run.owner}-b{next(numbers)}"  # type: ignore[method-assign]  # deterministic
        ticker = Ticker(self.loop, lambda: self._step(run, ticker))
        run.outbox.on_done = lambda: None if run.owner in self._dead else ticker.schedule(self.loop.now)

        def begin() -> None:
            self._quotas_unread = False  # this run, or the one holding the lease, reads the quota item
            self._alive[run.owner] = run
            self._stepping = run.owner
            try:
                run.start(self.loop.now + (budget_s if budget_s is not None else self.config.run_budget_s))
            finally:
                self._stepping = None
            ticker.schedule(self.loop.now)
            self.loop.at(self.loop.now + self.config.throttler_timeout_s, lambda: self._timeout(run, ticker))

        self.loop.at(start, begin)
        return run

    def _timeout(self, run: ThrottlerRun, ticker: Ticker) -> None:
        if run.owner in self._alive:
            self._die(run, ticker, "Task timed out (the throttler function's timeout)", True)

    def _die(self, run: ThrottlerRun, ticker: Ticker, error: str, expected: bool) -> None:
        ticker.cancel()
        self._alive.pop(run.owner, None)
        self._dead.add(run.owner)
        self._long_polling.pop(run.owner, None)
        held = {h.msg.message_id for h in run.inbox}
        held |= {h.msg.message_id for flight in run.outbox.in_flight.values() for h, _ in flight.sent.jobs}
        held |= {self._receipts[r] for r in run.inbox.pending_deletes if r in self._receipts}
        self.deaths.append(RunDeath(run.owner, self.loop.now, error, expected, frozenset(held)))

    def _step(self, run: ThrottlerRun, ticker: Ticker) -> None:
        if run.owner in self._dead or run.owner not in self._alive:
            return
        now = self.loop.now
        frozen = self._frozen_until.get(run.owner)
        if frozen is not None and now < frozen:
            ticker.schedule(frozen)
            return
        rf = self.config.run_faults
        if rf.stall and self.fault_rng.random() < rf.stall:
            self._frozen_until[run.owner] = now + self.fault_rng.uniform(*rf.stall_s)
            ticker.schedule(self._frozen_until[run.owner])
            return
        if rf.crash and self.fault_rng.random() < rf.crash:
            self._die(run, ticker, "process died (simulated)", True)
            return
        self._stepping = run.owner
        try:
            if self._long_polling.pop(run.owner, None) is not None:
                run.long_poll(0)  # SQS long polling: the wait ended (a message came, or the time is up)
            wake: Wake | None = run.step(self.loop.now)
        except (Exception, ProcessDied) as exc:  # noqa: BLE001 - the run's Lambda invocation fails
            self._stepping = None
            expected = isinstance(exc, EXPECTED_RUN_ERRORS)
            detail = f"{type(exc).__name__}: {exc}"
            if not expected:
                detail += " | " + " / ".join(traceback.format_exception(exc)[-3:]).replace("\n", " ")
            self.crashed[run.owner] = exc
            self._die(run, ticker, detail, expected)
            return
        self._stepping = None
        if wake is None:
            self._alive.pop(run.owner, None)
            self.summaries.append(run.summary)
            return
        if wake.long_poll:
            self._long_polling[run.owner] = ticker
        ticker.schedule(wake.at)

    def _wake_pollers(self) -> None:
        for ticker in list(self._long_polling.values()):
            ticker.schedule(self.loop.now)

    @property
    def alive(self) -> list[ThrottlerRun]:
        return list(self._alive.values())

    # ------------------------------------------------------------------ producers, operators and time
    def enqueue(self, jobs: Iterable[tuple[str, str, str]]) -> None:
        """(body, group, job id) triples, sent in order now."""
        self.queue.send(list(jobs))

    def enqueue_at(self, at: float, jobs: list[tuple[str, str, str]]) -> None:
        bisect.insort(self._arrivals, at)
        self.loop.at(at, lambda: self.enqueue(jobs))

    def quotas_written(self, item: dict[str, Any]) -> None:
        """An operator's edit of the quota item: the next scheduled run reads it, idle or not (skipped, the last
        good item stayed an older one, and an invalid item written next fell back to it: seed 9501)."""
        self.store.put_quotas(item)
        self._quotas_unread = True

    def _idle(self, now: float) -> bool:
        """Nothing for a run to do now or within its budget (see WorldConfig.skip_idle_runs)."""
        if self.depth() != 0 or self._quotas_unread:
            return False
        i = bisect.bisect_left(self._arrivals, now)
        return i == len(self._arrivals) or self._arrivals[i] > now + self.config.run_budget_s

    def at(self, t: float, action: Callable[[], None]) -> None:
        self.loop.at(t, action)

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
        """The DLQ's messages, described (reason, attempts, job id, body, group), as `dlq list` sees them."""
        return DeadLetters(self.queue).peek(100_000)

    def dead_letters_seen(self) -> list[Any]:
        """Every DLQ message, described, read inside the SQS model (a FIFO receive shows at most the first
        messages of each group); on other backends, as `dead_letters`."""
        if self.sqs is None:
            return self.dead_letters()
        from throttler.queue.dead_letters import describe

        dlq = self.sqs._queue(self.env["DLQ_URL"])
        return [describe(m.queued("")) for m in dlq.all_messages()]
