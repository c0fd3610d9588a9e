"""A stage in virtual time for the benchmark: the simulation's World, with everything counted.

What it adds to `throttler_tools.sim.world.World` (by subclassing; the simulation stays as it is):
- the counted twins (twins.py) behind the same contracts, and CPU sections around every actor;
- calls with a realistic latency (model.ApiLatency): the API's rate limiter counts a call when it
  arrives, after the outbound network leg; the API's own work, however long its tail, only delays the answer;
- the worker's thread pool as production sizes it: `min(WORKER_MAX_PARALLEL, the batch's pool_size, its
  groups)` calls at once; a call whose slot comes while every thread is busy waits for one (late, as in
  production, where `WorkerService` hands it to a ThreadPoolExecutor);
- the throttler's invoker as production has it: at most 16 batches in flight (LambdaInvoker's threads),
  the batch request encoded to JSON and the response decoded on the throttler's side, each invoke counted;
- an API that enforces per-key tiers as well (a `k` query parameter names the key), whose tiers may change
  at set times (an API that halves its limit), and that counts violations at both levels.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from throttler.core.outcome import JobResult, Outcome
from throttler.core.protocol import BatchRequest, BatchResponse, JobSpec
from throttler.dispatch.run import ThrottlerRun, Wake
from throttler.dispatch.summary import RunSettings
from throttler.queue import MemorySqs
from throttler.worker.calls import call_job
from throttler_tools.bench.meters import API, ENGINE, THROTTLER, WORKER, CpuMeter, Requests
from throttler_tools.bench.model import SHIPPED_MAX_PARALLEL, ApiLatency
from throttler_tools.bench.twins import CountingJobQueue, CountingStateStore
from throttler_tools.fakeapi import Call, FakeApi, session_for
from throttler_tools.provision import provision
from throttler_tools.sim.engine import SimClock, SimWorkers, Ticker, _SimBatch
from throttler_tools.sim.world import Backends, World, WorldConfig

INVOKER_MAX_IN_FLIGHT = 16  # LambdaInvoker's thread pool (throttler/worker/invoker.py)


def bench_job(group: str, seq: int, key: str | None = None, job_id: str | None = None) -> str:
    """An http job for the fake API: its query names the group, the sequence and the key it checks."""
    query = f"group={group}&seq={seq}" + (f"&k={key}" if key is not None else "")
    envelope: dict[str, Any] = {"task": "http", "payload": {"method": "POST", "url": f"http://127.0.0.1/ok?{query}"}}
    if key is not None:
        envelope["key"] = key
    if job_id is not None:
        envelope["id"] = job_id
    return json.dumps(envelope, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------- the API
@dataclass
class BenchApi(FakeApi):
    """FakeApi with per-key tiers and scheduled changes of its tiers; every call over a tier is a 429."""

    key_tiers: list[tuple[float, int]] = field(default_factory=list)  # every key's own (window_s, limit)
    changes: list[tuple[float, list[tuple[float, int]]]] = field(default_factory=list)  # (at, new stage tiers)
    meter: CpuMeter | None = None
    key_violations: int = 0
    stage_violations: int = 0
    successes: int = 0
    last_success_at: float | None = None
    arrivals_by_key: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    _key_windows: dict[tuple[str, float], deque[float]] = field(default_factory=dict)

    def handle(self, method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if self.meter is None:
            return self._handle(url, headers)
        with self.meter.section(API):
            return self._handle(url, headers)

    def _handle(self, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        now = self.clock.now()
        while self.changes and self.changes[0][0] <= now:
            self.tiers = list(self.changes.pop(0)[1])
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        job_id = headers.get("Idempotency-Key")
        before = self.violations
        over, _ = self._count_arrival(now, None, 1)  # the stage's tiers (counts FakeApi.violations)
        self.stage_violations += self.violations - before
        key = query.get("k")
        if key is not None:
            self.arrivals_by_key[key].append(now)
            for window_s, limit in self.key_tiers:
                arrivals = self._key_windows.setdefault((key, window_s), deque())
                while arrivals and arrivals[0] <= now - window_s:
                    arrivals.popleft()
                arrivals.append(now)
                if len(arrivals) > limit:
                    if not over:
                        self.violations += 1
                    over = True
                    self.key_violations += 1
        group, seq = query.get("group"), query.get("seq")
        if group is not None and seq is not None:
            n = int(seq)
            if n < self._last_seq.get(group, -1):
                self.order_violations += 1
            self._last_seq[group] = max(n, self._last_seq.get(group, -1))
        status = 429 if over else 200
        if not over:
            self.successes += 1
            self.last_success_at = now
        self.calls.append(Call(now, "POST", "/ok", job_id, group, int(seq) if seq is not None else None, status))
        if job_id is not None:
            self._seen[job_id] += 1
        extra = {"Retry-After": "1"} if over else {}
        return status, {"Content-Type": "application/json", **extra}, b'{"status":%d}' % status


# ---------------------------------------------------------------------------------------------- the worker
class JsonFuture(Future):  # type: ignore[type-arg]
    """A future holding the worker's response as the JSON bytes Lambda returns; decoded by whoever reads
    it (the throttler's settling), as LambdaInvoker does."""

    _decoded: BatchResponse | None = None

    def result(self, timeout: float | None = None) -> BatchResponse:
        raw = super().result(timeout)
        if self._decoded is None:
            self._decoded = BatchResponse.from_dict(json.loads(raw))
        return self._decoded


@dataclass
class WorkerStats:
    invocations: int = 0
    billed_s: list[float] = field(default_factory=list)  # per invocation: virtual duration + its requests
    late_sends: int = 0  # calls sent after their slot's not_after (must stay 0)
    late_skips: int = 0  # calls not sent: their slot passed while they waited for a free thread
    max_running: int = 0
    waited_for_thread: int = 0


class BenchWorkers(SimWorkers):
    """SimWorkers with the production worker's thread pool, split latency and CPU sections."""

    def __init__(
        self,
        *args: Any,
        api_latency: ApiLatency,
        meter: CpuMeter,
        requests: Requests,
        max_parallel: int = SHIPPED_MAX_PARALLEL,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.api_latency = api_latency
        self.meter = meter
        self.requests = requests
        self.max_parallel = max_parallel
        self.stats = WorkerStats()

    def invoke(self, request: BatchRequest) -> Future[BatchResponse]:
        future: JsonFuture = JsonFuture()
        self.invocations += 1
        self.stats.invocations += 1
        lo, hi = self.faults.invoke_latency_s
        delay = self.rng.uniform(lo, hi)
        self.loop.at(self.loop.now + delay, lambda: self._start_batch(request, future))
        return future

    def _start_batch(self, request: BatchRequest, answer: JsonFuture) -> None:
        with self.meter.section(WORKER), self.requests.as_caller(WORKER, f"worker:{request.batch_id}"):
            BenchBatch(self, request, answer, next(self._workers)).begin()  # claims, then runs (as the service)

    def _answer(self, answer: Future[BatchResponse] | None, response: BatchResponse | None,
                fail: Exception | None = None) -> None:
        if answer is None:
            return
        lo, hi = self.faults.invoke_latency_s
        at = self.loop.now + self.rng.uniform(lo, hi)
        if fail is not None or response is None:
            error = fail if fail is not None else RuntimeError("no response")
            self.loop.at(at, lambda: answer.set_exception(error))
        else:
            raw = response.to_json()
            self.loop.at(at, lambda: answer.set_result(raw))  # type: ignore[arg-type]


class BenchBatch(_SimBatch):
    w: BenchWorkers

    def __init__(self, workers: BenchWorkers, request: BatchRequest, answer: Future[BatchResponse] | None, worker: int):
        super().__init__(workers, request, answer, worker)
        groups = len({j.group for j in request.jobs})
        self.parallel = max(1, min(workers.max_parallel, request.pool_size or workers.max_parallel, groups))
        self.waiting: deque[JobSpec] = deque()
        self.caller_id = f"worker:{request.batch_id}"

    def step(self) -> None:
        with self.w.meter.section(WORKER), self.w.requests.as_caller(WORKER, self.caller_id):
            super().step()

    def _send(self, spec: JobSpec) -> None:
        sent = self.w.loop.now
        if self.running >= self.parallel:
            self.waiting.append(spec)  # every thread is busy: the call waits for one
            self.w.stats.waited_for_thread += 1
            return
        self.running += 1
        self.w.stats.max_running = max(self.w.stats.max_running, self.running)
        if sent > spec.not_after + 1e-9:
            self.w.stats.late_sends += 1
        outbound, total = self.w.api_latency.sample(self.w.rng)
        if self.w.on_call is not None:
            self.w.on_call(spec, sent)

        def arrive() -> None:  # a call on the wire reaches the API even if its worker has died since
            with self.w.meter.section(WORKER):
                self.w.clock.offset = 0.0
                assert self.setup is not None
                result = call_job(spec, self.setup, self.deadline_local)
                self.w.clock.offset = 0.0
            result.sent_at, result.duration_s = sent, total
            self.w.loop.at(sent + total, lambda: self._answered(result))

        self.w.loop.at(sent + outbound, arrive)

    def _answered(self, result: JobResult) -> None:
        if self.dead:
            return
        with self.w.meter.section(WORKER), self.w.requests.as_caller(WORKER, self.caller_id):
            self.running -= 1
            now = self.w.loop.now
            self.execution.on_result(result, now)
            while self.waiting and self.running < self.parallel:
                spec = self.waiting.popleft()
                if now > spec.not_after:  # WorkerService: a call that waited past its slot is not sent
                    self.w.stats.late_skips += 1
                    self.execution.on_result(JobResult(spec.id, Outcome.SKIPPED, "missed its slot"), now)
                else:
                    self._send(spec)
        self.step()

    def _finish(self) -> None:
        super()._finish()
        billed = self.w.loop.now - self.started + self.w.requests.busy_s.pop(self.caller_id, 0.0)
        self.w.stats.billed_s.append(billed)


class BenchInvoker:
    """LambdaInvoker in virtual time: at most INVOKER_MAX_IN_FLIGHT invokes at once (its thread pool),
    the request encoded on the throttler's side (its CPU), each invoke counted."""

    def __init__(self, workers: BenchWorkers, requests: Requests, meter: CpuMeter):
        self.workers = workers
        self.requests = requests
        self.meter = meter
        self.in_flight = 0
        self.queued: deque[tuple[BatchRequest, Future[BatchResponse]]] = deque()

    def submit(self, request: BatchRequest) -> Future[BatchResponse]:
        payload = request.to_json()
        self.requests.add("lambda", "Invoke")
        self.requests.invoke_bytes += len(payload)
        outer: Future[BatchResponse] = Future()
        if self.in_flight >= INVOKER_MAX_IN_FLIGHT:
            self.queued.append((request, outer))
        else:
            self._start(request, outer)
        return outer

    def _start(self, request: BatchRequest, outer: Future[BatchResponse]) -> None:
        self.in_flight += 1
        with self.meter.section(ENGINE):
            inner = self.workers.invoke(request)

        def done(f: Future[BatchResponse]) -> None:
            self.in_flight -= 1
            if self.queued:
                self._start(*self.queued.popleft())
            exc = f.exception()
            if exc is not None:
                outer.set_exception(exc)
            else:
                outer.set_result(f.result())

        inner.add_done_callback(done)

    def shutdown(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------- the stage
@dataclass
class RunStats:
    owner: str
    started: float
    ended: float
    billed_s: float
    summary: Any


class BenchWorld(World):
    """A World whose every actor is counted (see the module docstring)."""

    api: BenchApi
    workers: BenchWorkers

    def __init__(
        self,
        config: WorldConfig,
        api_latency: ApiLatency,
        *,
        key_tiers: Iterable[tuple[float, int]] = (),
        api_changes: Iterable[tuple[float, list[tuple[float, int]]]] = (),
        max_parallel: int = SHIPPED_MAX_PARALLEL,
        profile: bool = False,
        backends: Callable[[BenchWorld, SimClock, str], Backends] | None = None,
        on_advance: Callable[[float], None] | None = None,
    ):
        self.meter = CpuMeter(THROTTLER if profile else None)
        self.requests = Requests()
        chosen = backends or BenchWorld._counting_backends
        super().__init__(config, backends=lambda clock, stage: chosen(self, clock, stage), on_advance=on_advance)
        self.api = BenchApi(
            tiers=list(config.api_tiers),
            clock=self.clock,
            key_tiers=list(key_tiers),
            changes=sorted(api_changes, key=lambda c: c[0]),
            meter=self.meter,
        )
        self.session = session_for(self.api)
        self.workers = BenchWorkers(
            self.loop,
            self.clock,
            self.backends.records,
            self._setup,
            config.latency_s,
            self.rng,
            config.faults,
            config.worker_timeout_s,
            on_call=lambda spec, at: self.calls.append((spec, at)),
            api_latency=api_latency,
            meter=self.meter,
            requests=self.requests,
            max_parallel=max_parallel,
        )
        self.invoker = BenchInvoker(self.workers, self.requests, self.meter)
        self.run_stats: list[RunStats] = []
        self.enqueued_at: dict[str, float] = {}

    def run_settings(self) -> RunSettings:
        """The World's settings, with the worker's parallelism of this stage (WORKER_MAX_PARALLEL)."""
        return replace(super().run_settings(), worker_max_parallel=self.workers.max_parallel)

    def _counting_backends(self, clock: SimClock, stage: str) -> Backends:
        sqs = MemorySqs(clock)
        env = provision(sqs, None, stage)
        store = CountingStateStore(self.requests, self.meter)
        queue = CountingJobQueue(sqs, env["JOBS_QUEUE_URL"], env["DLQ_URL"], self.requests, self.meter)
        return Backends(queue, store, store, env, sqs)

    # -- the runs, as World starts them, with the bench's invoker and CPU sections
    def start_run(self, at: float | None = None, budget_s: float | None = None) -> ThrottlerRun:
        start = self.loop.now if at is None else at
        run = ThrottlerRun(
            settings=self.run_settings(),
            store=self.store,
            queue=self.queue,
            invoker=self.invoker,
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
        with self.meter.section(THROTTLER), self.requests.as_caller(THROTTLER, run.owner):
            try:
                if self._long_polling.pop(run.owner, None) is not None:
                    run.long_poll(0)
                wake: Wake | None = run.step(self.loop.now)
            except Exception as exc:  # noqa: BLE001 - as World: a run that raises dies as its Lambda would
                self.crashed[run.owner] = exc
                return
        if wake is None:
            self.summaries.append(run.summary)
            s = run.summary
            virtual = s.ended_at - s.started_at
            self.run_stats.append(
                RunStats(run.owner, s.started_at, s.ended_at, max(virtual, self.requests.busy_s.pop(run.owner, 0.0)), s)
            )
            return
        if wake.long_poll:
            self._long_polling[run.owner] = ticker
        ticker.schedule(wake.at)

    # -- producers: never counted, never charged to the throttler
    def enqueue(self, jobs: Iterable[tuple[str, str, str]]) -> None:
        batch = list(jobs)
        now = self.loop.now
        for _, _, job_id in batch:
            self.enqueued_at[job_id] = now
        with self.requests.as_caller("producer"):
            self.queue.send(batch)

    def depth_now(self) -> int:
        """The jobs queue's depth, read from the model directly (not an SQS request)."""
        assert self.sqs is not None
        return self.sqs.depth(self.env["JOBS_QUEUE_URL"]).total


def latency_fn(api_latency: ApiLatency) -> Callable[[random.Random], float]:
    """World's own latency hook (unused by BenchWorkers, kept consistent for anything that reads it)."""
    return lambda rng: api_latency.sample(rng)[1]
