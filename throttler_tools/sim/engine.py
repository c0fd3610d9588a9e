"""Virtual time: one event heap drives the throttler's runs, the workers, the calls and the fake API.

The real state machines run unchanged (`ThrottlerRun.step`, `BatchExecution.step`, `call_job`); only
waiting is simulated. Calls overlap as they would in real time: a call leaves at its send time, reaches
the API after its outbound latency, and its answer comes back after its full latency. Everything is
deterministic for a given seed.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from throttler.core.outcome import JobResult
from throttler.core.protocol import BatchRequest, BatchResponse, BatchStatus, JobSpec
from throttler.store.base import WorkerRecords
from throttler.worker.batch import BatchExecution
from throttler.worker.calls import CallSetup, call_job
from throttler.worker.invoker import WorkerFailed, WorkerLost, WorkerNotRun


class EventLoop:
    """A heap of (time, order, action); `now` moves only from one event to the next."""

    def __init__(self, start: float, on_advance: Callable[[float], None] | None = None):
        self.now = start
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.events = 0
        self.on_advance = on_advance  # e.g. freezegun's tick, so that moto's clock follows virtual time

    def at(self, t: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(t, self.now), next(self._order), action))

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> None:
        while self._heap and self._heap[0][0] <= end:
            t, _, action = heapq.heappop(self._heap)
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


@dataclass
class WorkerFaults:
    """What can go wrong around a worker, decided per batch by the seed (all probabilities)."""

    not_run: float = 0.0  # Lambda refuses the invoke (throttled): nothing runs
    crash: float = 0.0  # the worker dies part-way (its response never comes)
    lost_response: float = 0.0  # the worker finishes but the response is lost (a read timeout)
    duplicate: float = 0.0  # the same invoke is delivered twice (botocore retried it)
    secrets: float = 0.0  # the worker cannot read its secrets
    invoke_latency_s: tuple[float, float] = (0.01, 0.04)


@dataclass
class SimWorkers:
    """The worker function in virtual time: a BatchExecution per invoke, calls with latency."""

    loop: EventLoop
    clock: SimClock
    records: WorkerRecords
    setup: Callable[[BatchRequest], CallSetup]
    latency_s: Callable[[random.Random], float]
    rng: random.Random
    faults: WorkerFaults = field(default_factory=WorkerFaults)
    timeout_s: float = 40.0
    on_call: Callable[[JobSpec, float], None] | None = None  # (spec, send time): the checker's view
    invocations: int = 0

    def invoke(self, request: BatchRequest) -> Future[BatchResponse]:
        future: Future[BatchResponse] = Future()
        self.invocations += 1
        lo, hi = self.faults.invoke_latency_s
        delay = self.rng.uniform(lo, hi)
        if self.rng.random() < self.faults.not_run:
            self.loop.at(self.loop.now + delay, lambda: future.set_exception(WorkerNotRun("TooManyRequestsException")))
            return future
        deliveries = 2 if self.rng.random() < self.faults.duplicate else 1
        for n in range(deliveries):
            answer = future if n == 0 else None
            self.loop.at(self.loop.now + delay + 0.15 * n, lambda a=answer: self._start(request, a))  # type: ignore[misc]
        return future

    def _start(self, request: BatchRequest, answer: Future[BatchResponse] | None) -> None:
        now = self.loop.now
        if self.rng.random() < self.faults.secrets:
            self._answer(answer, BatchResponse(request.batch_id, BatchStatus.SECRETS_UNAVAILABLE, error="ssm failed"))
            return
        if not self.records.claim(request.batch_id, request.run_id, now, now + 14 * 86400):
            self._answer(answer, BatchResponse(request.batch_id, BatchStatus.DUPLICATE))
            return
        crash_at = now + self.rng.uniform(0.0, 2.0) if self.rng.random() < self.faults.crash else None
        lost = self.rng.random() < self.faults.lost_response
        _SimBatch(self, request, answer, now, crash_at, lost).step()

    def _answer(self, answer: Future[BatchResponse] | None, response: BatchResponse, fail: Exception | None = None) -> None:
        if answer is None:
            return
        lo, hi = self.faults.invoke_latency_s
        at = self.loop.now + self.rng.uniform(lo, hi)
        if fail is not None:
            self.loop.at(at, lambda: answer.set_exception(fail))
        else:
            self.loop.at(at, lambda: answer.set_result(BatchResponse.from_dict(response.to_dict())))


class _SimBatch:
    def __init__(
        self,
        workers: SimWorkers,
        request: BatchRequest,
        answer: Future[BatchResponse] | None,
        started: float,
        crash_at: float | None,
        lost: bool,
    ):
        self.w = workers
        self.request = request
        self.answer = answer
        self.execution = BatchExecution(BatchRequest.from_dict(json.loads(request.to_json())))
        self.deadline = started + workers.timeout_s - 2.0
        self.crash_at = crash_at
        self.lost = lost
        self.setup = workers.setup(request)
        self.running = 0
        self.dead = False
        self.ticker = Ticker(workers.loop, self.step)
        if crash_at is not None:
            workers.loop.at(crash_at, self._crash)

    def _crash(self) -> None:
        if not self.dead:
            self.dead = True
            self.ticker.cancel()
            self.w._answer(self.answer, BatchResponse(self.request.batch_id, BatchStatus.RAN), WorkerFailed("worker crashed"))

    def step(self) -> None:
        if self.dead:
            return
        loop, ex, records = self.w.loop, self.execution, self.w.records
        while True:
            now = loop.now
            if now >= self.deadline:
                ex.abandon("the worker ran out of time")
            step = ex.step(now)
            if step.publish is not None:
                records.throttle(step.publish)
            if step.record is not None:
                records.record(self.request.batch_id, *step.record, False, None)
            for spec in step.start:
                self._send(spec, now)
            if step.poll_watch:
                signal, final = records.watch(sorted(ex.watching))
                ex.on_watch(signal, final, now)
                continue
            break
        if step.finished and self.running == 0:
            self._finish()
        elif step.wake_at is not None:
            self.ticker.schedule(step.wake_at)

    def _send(self, spec: JobSpec, sent: float) -> None:
        self.running += 1
        total = max(0.0005, self.w.latency_s(self.w.rng))
        outbound = total * 0.5
        if self.w.on_call is not None:
            self.w.on_call(spec, sent)

        def arrive() -> None:  # a call on the wire reaches the API even if its worker has died since
            self.w.clock.offset = 0.0
            result = call_job(spec, self.setup, self.deadline)
            self.w.clock.offset = 0.0
            result.sent_at, result.duration_s = sent, total
            self.w.loop.at(sent + total, lambda: self._result(result))

        self.w.loop.at(sent + outbound, arrive)

    def _result(self, result: JobResult) -> None:
        if self.dead:
            return
        self.running -= 1
        self.execution.on_result(result, self.w.loop.now)
        self.step()

    def _finish(self) -> None:
        self.dead = True
        ok, called = self.execution.final_record()
        self.w.records.record(self.request.batch_id, ok, called, True, self.execution.throttled_at)
        response = BatchResponse(
            self.request.batch_id,
            BatchStatus.RAN,
            self.execution.ordered_results(),
            tuple(sorted(self.execution.watched_final)),
            self.execution.throttled_at,
        )
        if self.lost:
            self.w._answer(self.answer, response, WorkerLost("ReadTimeoutError"))
        else:
            self.w._answer(self.answer, response)


class SimInvoker:
    """The invoker seam in virtual time."""

    def __init__(self, workers: SimWorkers):
        self.workers = workers

    def submit(self, request: BatchRequest) -> Future[BatchResponse]:
        return self.workers.invoke(request)

    def shutdown(self) -> None:
        return None
