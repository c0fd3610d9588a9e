"""Virtual time: one event heap drives the throttler's runs, the workers, the calls and the fake API.

The real state machines run unchanged (`ThrottlerRun.step`, `BatchExecution.step`, `call_job`); only
waiting is simulated. Calls overlap as they would in real time: a call leaves at its send time, reaches
the API after its outbound latency, the API takes its own time, and the answer comes back after the
inbound latency (a call slower than its timeout ends in a timeout, though the API handled it). A worker
batch is driven exactly as `worker/service.py` drives it (the same order of claim, calls, records and
the same handling of store errors), on its own clock, which may be off by a few milliseconds.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import random
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from throttler.core.errors import StoreError
from throttler.core.outcome import JobResult, Outcome
from throttler.core.protocol import LAMBDA_PAYLOAD_LIMIT, BatchRequest, BatchResponse, BatchStatus, JobSpec
from throttler.store.base import ThrottleSignal, WorkerRecords
from throttler.worker.batch import BatchExecution, Step
from throttler.worker.calls import CallSetup, call_job
from throttler.worker.invoker import WorkerFailed, WorkerLost, WorkerNotRun
from throttler.worker.service import STOP_BEFORE_TIMEOUT_S, publish_429


class Spinning(RuntimeError):
    """Far too many events at one instant: an actor wakes itself up again and again without time passing
    (a busy loop in production)."""


class EventLoop:
    """A heap of (time, order, action); `now` moves only from one event to the next."""

    MAX_EVENTS_AT_ONE_INSTANT = 200_000

    def __init__(self, start: float, on_advance: Callable[[float], None] | None = None):
        self.now = start
        self._same = 0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.events = 0
        self.on_advance = on_advance  # e.g. freezegun's tick, so that moto's clock follows virtual time

    def at(self, t: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(t, self.now), next(self._order), action))

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> None:
        while self._heap and self._heap[0][0] <= end:
            t, _, action = heapq.heappop(self._heap)
            if t > self.now:
                self._same = 0
            else:
                self._same += 1
                if self._same > self.MAX_EVENTS_AT_ONE_INSTANT:
                    raise Spinning(f"more than {self.MAX_EVENTS_AT_ONE_INSTANT} events at t={t}")
            self._move_to(t)
            action()
            self.events += 1
            if stop is not None and stop():
                return
        self._move_to(max(self.now, end))

    def _move_to(self, t: float) -> None:
        if t > self.now and self.on_advance is not None:
            self.on_advance(t - self.now)
        self.now = t

    @property
    def idle(self) -> bool:
        return not self._heap


class SimClock:
    """The loop's time. Nothing in the runtime sleeps on it in virtual time, except a task's own short
    retry waits, which advance a private offset (a call's clock)."""

    def __init__(self, loop: EventLoop):
        self.loop = loop
        self.offset = 0.0

    def now(self) -> float:
        return self.loop.now + self.offset

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.offset += seconds


class Ticker:
    """One actor's next wake-up: scheduling an earlier one supersedes a later one."""

    def __init__(self, loop: EventLoop, action: Callable[[], None]):
        self.loop = loop
        self.action = action
        self.next_at: float | None = None
        self._generation = 0

    def schedule(self, t: float) -> None:
        if self.next_at is not None and self.next_at <= t:
            return
        self._generation += 1
        generation = self._generation
        self.next_at = t

        def fire() -> None:
            if generation == self._generation:
                self.next_at = None
                self.action()

        self.loop.at(t, fire)

    def cancel(self) -> None:
        self._generation += 1
        self.next_at = None


def uniform(lo: float, hi: float) -> Callable[[random.Random], float]:
    return lambda rng: rng.uniform(lo, hi)


def with_tail(base: tuple[float, float], tail_share: float, tail_s: float, slow_share: float = 0.0,
              slow_s: tuple[float, float] = (1.0, 5.0)) -> Callable[[random.Random], float]:
    """The API's own time: mostly uniform in `base`, a share with an exponential tail (mean `tail_s`),
    and a few slow calls of several seconds."""

    def draw(rng: random.Random) -> float:
        x = rng.random()
        if x < slow_share:
            return rng.uniform(*slow_s)
        t = rng.uniform(*base)
        if x < slow_share + tail_share:
            t += rng.expovariate(1.0 / tail_s)
        return t

    return draw


@dataclass
class Latency:
    """A call's times: outbound (send to the API: its spread must stay within what the margin covers),
    the API's own time (may have a long tail) and inbound (the answer's way back)."""

    outbound_s: Callable[[random.Random], float] = field(default_factory=lambda: uniform(0.010, 0.012))
    service_s: Callable[[random.Random], float] = field(default_factory=lambda: uniform(0.005, 0.040))
    inbound_s: Callable[[random.Random], float] = field(default_factory=lambda: uniform(0.010, 0.030))

    @classmethod
    def split(cls, total_s: Callable[[random.Random], float]) -> Latency:
        """The old model: a total latency, half of it on the way out."""
        draws: dict[str, float] = {}

        def out(rng: random.Random) -> float:
            draws["t"] = max(0.0005, total_s(rng))
            return draws["t"] * 0.5

        return cls(out, lambda rng: 0.0, lambda rng: draws.get("t", 0.0) * 0.5)


@dataclass
class WorkerFaults:
    """What can go wrong around a worker, decided per batch by the seed (all probabilities)."""

    not_run: float = 0.0  # Lambda refuses the invoke (throttled): nothing runs
    crash: float = 0.0  # the worker dies part-way, up to its timeout (its response never comes)
    lost_response: float = 0.0  # the worker finishes but the response is lost (a read timeout)
    duplicate: float = 0.0  # the same invoke is delivered twice
    dropped_connection: float = 0.0  # the invoke's connection drops early (WorkerLost) while the worker runs on
    secrets: float = 0.0  # the worker cannot read its secrets
    store_error: float = 0.0  # a worker's state-table request fails (claim, record, publish, watch)
    clock_skew_s: float = 0.0  # each worker's clock is off by up to this (uniform, either way)
    wake_late_s: float = 0.0  # a worker wakes up to this late for a slot (thread scheduling)
    invoke_latency_s: tuple[float, float] = (0.01, 0.04)
    crash_within_s: float = 2.0  # a crash comes this soon after the start (at most: the timeout)


@dataclass
class SentCall:
    """One call as a worker sent it: the checker's view of the worker side."""

    job_id: str
    batch_id: str
    sent_at: float  # real time
    worker: int
    arrived_at: float = 0.0
    answered_at: float | None = None  # when its answer reached the worker (None: never, or the worker was dead)
    outcome: str = ""
    status: int | None = None
    timed_out: bool = False  # the API handled it, the worker gave up waiting
    lost: bool = False  # its outcome never reached the throttler in full (worker death, lost response, record)


@dataclass
class WorkerDeath:
    worker: int
    batch_id: str
    at: float
    why: str


@dataclass
class SimWorkers:
    """The worker function in virtual time: a BatchExecution per invoke, calls with latency."""

    loop: EventLoop
    clock: SimClock
    records: WorkerRecords
    setup: Callable[[BatchRequest], CallSetup]
    latency_s: Callable[[random.Random], float] | Latency
    rng: random.Random
    faults: WorkerFaults = field(default_factory=WorkerFaults)
    timeout_s: float = 40.0
    on_call: Callable[[JobSpec, float], None] | None = None  # (spec, send time): a simple view of the calls
    service_s: Callable[[str], float] = lambda _path: 0.0  # the API's own time for a path (slow calls)
    invocations: int = 0
    refused_too_large: int = 0
    sent: list[SentCall] = field(default_factory=list)
    deaths: list[WorkerDeath] = field(default_factory=list)
    batches: dict[str, list[int]] = field(default_factory=dict)  # batch id -> the workers that ran it
    planned: dict[str, list[str]] = field(default_factory=dict)  # batch id -> its job ids
    unheard: set[str] = field(default_factory=set)  # batches whose invoke ended in WorkerFailed
    record_failures: dict[str, list[float]] = field(default_factory=dict)  # batch id -> when a record write failed
    _workers: itertools.count = field(default_factory=itertools.count)

    @property
    def latency(self) -> Latency:
        return self.latency_s if isinstance(self.latency_s, Latency) else Latency.split(self.latency_s)

    def invoke(self, request: BatchRequest) -> Future[BatchResponse]:
        future: Future[BatchResponse] = Future()
        self.invocations += 1
        self.planned[request.batch_id] = [j.id for j in request.jobs]
        lo, hi = self.faults.invoke_latency_s
        delay = self.rng.uniform(lo, hi)
        if len(request.to_json()) > LAMBDA_PAYLOAD_LIMIT:
            self.refused_too_large += 1
            self.loop.at(self.loop.now + delay, lambda: future.set_exception(WorkerNotRun("RequestTooLargeException")))
            return future
        if self.rng.random() < self.faults.not_run:
            self.loop.at(self.loop.now + delay, lambda: future.set_exception(WorkerNotRun("TooManyRequestsException")))
            return future
        future.batch_id = request.batch_id  # type: ignore[attr-defined]
        if self.faults.dropped_connection and self.rng.random() < self.faults.dropped_connection:
            # botocore gives up on the connection; the function runs its batch to the end all the same.
            self.loop.at(self.loop.now + delay, lambda: self._start(request, None))
            cut = delay + self.rng.uniform(0.05, 0.5)
            self.loop.at(self.loop.now + cut, lambda: future.set_exception(WorkerLost("ConnectionClosedError")))
            return future
        deliveries = 2 if self.rng.random() < self.faults.duplicate else 1
        for n in range(deliveries):
            answer = future if n == 0 else None
            again = 0.0 if n == 0 else self.rng.uniform(0.05, 1.0)
            self.loop.at(self.loop.now + delay + again, lambda a=answer: self._start(request, a))  # type: ignore[misc]
        return future

    def _start(self, request: BatchRequest, answer: Future[BatchResponse] | None) -> None:
        worker = next(self._workers)
        self.batches.setdefault(request.batch_id, []).append(worker)
        _SimBatch(self, request, answer, worker).begin()

    def _answer(self, answer: Future[BatchResponse] | None, response: BatchResponse | None,
                fail: Exception | None = None) -> None:
        if answer is None:
            return
        lo, hi = self.faults.invoke_latency_s
        at = self.loop.now + self.rng.uniform(lo, hi)
        if isinstance(fail, WorkerFailed) or (response is not None and response.status is BatchStatus.DUPLICATE):
            self.unheard.add(response.batch_id if response is not None else self._batch_of(answer))
        if fail is not None:
            self.loop.at(at, lambda: answer.set_exception(fail))
        else:
            assert response is not None
            self.loop.at(at, lambda: answer.set_result(BatchResponse.from_dict(json.loads(response.to_json()))))

    def _batch_of(self, answer: Future[BatchResponse]) -> str:
        return getattr(answer, "batch_id", "")

    def store(self, call: Callable[[], Any]) -> Any:
        """A worker's state-table request, which may fail (StoreError, as the DynamoDB adapter raises it)."""
        if self.faults.store_error and self.rng.random() < self.faults.store_error:
            raise StoreError("ProvisionedThroughputExceededException (simulated)")
        return call()


class _SimBatch:
    """One worker invocation, driven as WorkerService.run / _drive / _act drive it, in virtual time."""

    def __init__(self, workers: SimWorkers, request: BatchRequest, answer: Future[BatchResponse] | None, worker: int):
        self.w = workers
        self.request = request
        self.answer = answer
        self.worker = worker
        f = workers.faults
        rng = workers.rng
        self.skew = rng.uniform(-f.clock_skew_s, f.clock_skew_s) if f.clock_skew_s else 0.0
        self.started = workers.loop.now
        crashes = rng.random() < f.crash
        self.crash_at = self.started + rng.uniform(0.0, min(f.crash_within_s, workers.timeout_s)) if crashes else None
        self.lost = rng.random() < f.lost_response
        self.execution = BatchExecution(BatchRequest.from_dict(json.loads(request.to_json())))
        self.deadline_local = self.local(self.started) + workers.timeout_s - STOP_BEFORE_TIMEOUT_S
        self.setup: CallSetup | None = None
        self.running = 0
        self.dead = False
        self.finished = False
        self.calls: dict[str, SentCall] = {}
        self.recorded: set[str] = set()  # job ids whose outcome is in the batch record
        self.ticker = Ticker(workers.loop, self.step)

    def local(self, real: float) -> float:
        return real + self.skew

    def real(self, local: float) -> float:
        return local - self.skew

    # ------------------------------------------------------------------ start, death
    def begin(self) -> None:
        w = self.w
        secrets_fail = w.rng.random() < w.faults.secrets  # drawn first, as before the claim moved ahead of it
        now = self.local(w.loop.now)
        try:
            claimed = w.store(lambda: w.records.claim(self.request.batch_id, self.request.run_id, now, now + 14 * 86400))
        except StoreError:
            w._answer(self.answer, None, WorkerFailed("worker error: Unhandled"))  # the handler raised
            return
        if not claimed:
            w._answer(self.answer, BatchResponse(self.request.batch_id, BatchStatus.DUPLICATE))
            return
        if secrets_fail:
            w._answer(self.answer, BatchResponse(self.request.batch_id, BatchStatus.SECRETS_UNAVAILABLE, error="ssm failed"))
            return
        self.setup = w.setup(self.request)
        if self.crash_at is not None:
            w.loop.at(self.crash_at, lambda: self._die("crashed"))
        w.loop.at(self.started + w.timeout_s, lambda: self._die("timed out"))  # Lambda kills it at its timeout
        self.step()

    def _die(self, why: str) -> None:
        if self.dead or self.finished:
            return
        self.dead = True
        self.ticker.cancel()
        self.w.deaths.append(WorkerDeath(self.worker, self.request.batch_id, self.w.loop.now, why))
        self._lose_unrecorded()
        self.w._answer(self.answer, None, WorkerFailed(f"worker {why}"))

    def _lose_unrecorded(self) -> None:
        """The throttler learns only what the batch record holds: every other call's outcome is lost."""
        for call in self.calls.values():
            if call.job_id not in self.recorded:
                call.lost = True

    # ------------------------------------------------------------------ the drive loop (service._drive)
    def step(self) -> None:
        if self.dead or self.finished:
            return
        ex = self.execution
        while True:
            now = self.local(self.w.loop.now)
            if now >= self.deadline_local:
                ex.abandon("the worker ran out of time")
            step = ex.step(now)
            self._act(step)
            for spec in step.start:
                self._send(spec)
            if step.poll_watch:
                continue
            break
        if step.finished:
            if self.running == 0:
                self._finish()
            return
        if step.wake_at is not None:
            late = self.w.rng.uniform(0.0, self.w.faults.wake_late_s) if self.w.faults.wake_late_s else 0.0
            self.ticker.schedule(self.real(min(step.wake_at, self.deadline_local)) + late)

    def _act(self, step: Step) -> None:
        w, ex = self.w, self.execution
        for publish in step.publish:
            now = self.local(w.loop.now)
            publish_429(functools.partial(w.store, functools.partial(w.records.throttle, publish, now)))  # as the service does
        if step.poll_watch:
            try:
                signals, final = w.store(lambda: w.records.watch(sorted(ex.watching)))
            except StoreError:
                ex.abandon("the shared throttle record could not be read")
                return
            ex.on_watch(signals, final, self.local(w.loop.now))
        if step.record is not None and not self._record(*step.record, False, None):
            ex.record_failed(*step.record, self.local(w.loop.now))

    def _record(self, ok: list[str], called: list[str], final: bool, throttled_at: float | None,
                met_429: ThrottleSignal | None = None) -> bool:
        w = self.w
        try:
            w.store(lambda: w.records.record(self.request.batch_id, ok, called, final, throttled_at, met_429))
        except StoreError:
            w.record_failures.setdefault(self.request.batch_id, []).append(w.loop.now)
            return False  # logged by the service; the response still reports them
        self.recorded.update(ok, called)
        return True

    # ------------------------------------------------------------------ calls
    def _send(self, spec: JobSpec) -> None:
        w = self.w
        sent = w.loop.now
        self.running += 1
        lat = w.latency
        outbound = max(0.0, lat.outbound_s(w.rng))
        path, timeout_s = _path_and_timeout(spec.body)
        service = max(0.0, lat.service_s(w.rng)) + w.service_s(path)
        inbound = max(0.0, lat.inbound_s(w.rng))
        limit = min(timeout_s, 30.0, self.real(self.deadline_local) - sent)
        call = SentCall(spec.id, self.request.batch_id, sent, self.worker, sent + outbound)
        self.calls[spec.id] = call
        w.sent.append(call)
        if w.on_call is not None:
            w.on_call(spec, sent)
        assert self.setup is not None
        setup = self.setup

        def arrive() -> None:  # a call on the wire reaches the API even if its worker has died since
            w.clock.offset = 0.0
            result = call_job(spec, setup, self.deadline_local)
            w.clock.offset = 0.0
            total = outbound + service + inbound
            call.status = result.status
            if result.outcome is Outcome.SUCCEEDED:
                call.status = call.status or 200
            if total > limit and result.attempted:
                # The worker gives up waiting: a timeout, though the API handled the call.
                call.timed_out = call.lost = True
                result = JobResult(spec.id, Outcome.RETRYABLE, f"timeout: no answer within the call's {limit:.1f}s deadline")
                total = limit
            result.sent_at, result.duration_s = self.local(sent), total
            w.loop.at(sent + total, lambda: self._result(call, result))

        if outbound >= limit:
            result = JobResult(spec.id, Outcome.RETRYABLE, "timeout: no connection", sent_at=self.local(sent), duration_s=limit)
            w.loop.at(sent + limit, lambda: self._result(call, result))
        else:
            w.loop.at(sent + outbound, arrive)

    def _result(self, call: SentCall, result: JobResult) -> None:
        if self.dead:
            return
        call.answered_at = self.w.loop.now
        call.outcome = result.outcome.value
        self.running -= 1
        self.execution.on_result(result, self.local(self.w.loop.now))
        self.step()

    def _finish(self) -> None:
        self.finished = True
        self.ticker.cancel()
        ex = self.execution
        ok, called = ex.final_record()
        recorded = self._record(ok, called, True, ex.throttled_at, ex.met_429)
        response = BatchResponse(self.request.batch_id, BatchStatus.RAN, ex.ordered_results(),
                                 tuple(sorted(ex.watched_final)), ex.throttled_at, unrecorded=() if recorded else tuple(ok))
        if self.lost:
            self._lose_unrecorded()
            self.w.deaths.append(WorkerDeath(self.worker, self.request.batch_id, self.w.loop.now, "response lost"))
            self.w._answer(self.answer, None, WorkerLost("ReadTimeoutError"))
        else:
            self.w._answer(self.answer, response)


def _path_and_timeout(body: str) -> tuple[str, float]:
    """The URL path of an http job (for the API's own time) and its payload's timeout (default 10 s)."""
    try:
        payload = json.loads(body)["payload"]
        url = str(payload["url"])
        timeout = payload.get("timeout", 10.0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return "/", 10.0
    path = "/" + url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0] if "/" in url.split("://", 1)[-1] else "/"
    good = isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0
    return path, float(timeout) if good else 10.0


class SimInvoker:
    """The invoker seam in virtual time."""

    def __init__(self, workers: SimWorkers):
        self.workers = workers

    def submit(self, request: BatchRequest) -> Future[BatchResponse]:
        return self.workers.invoke(request)

    def shutdown(self) -> None:
        return None
