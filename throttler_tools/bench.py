"""The benchmark: drain a backlog in virtual time on the embedded emulator, three strategies side by side.

Each strategy gets a fresh in-process moto (`mock_aws`) on freezegun's virtual time and a fresh `FakeApi`
that enforces the tiers in sliding windows on arrival. A feeder plays the producers: it keeps a few
hundred messages in the queue, so the strategy always sees a backlog while moto's per-request cost,
which grows with the depth of a queue, stays bounded. Measured per strategy: virtual drain time against
the fastest legal schedule, use of the binding tier, violations and 429s at the API, AWS requests per job
by service and action (a boto3 `before-call` hook on the strategy's own clients only), and CPU time per
job with the emulator's and the fake API's own work taken out. BENCHMARKS.md explains each figure.

- `throttler`: this project, unchanged: one `ThrottlerRun` per virtual minute, as the EventBridge rule
  starts it, with the worker run inline, until every job is done.
- `seed-2019`: the design of the 2019 post "Throttling Third-Party API calls with AWS Lambda", reproduced:
  each minute, receive up to the per-minute quota (receives of 10) and invoke one worker per message at
  once, asynchronously; each worker calls the API and deletes its own message when the call succeeded.
- `floor`: a bare loop that only receives and batch-deletes the same messages: the cost baseline.
"""

from __future__ import annotations

import gc
import io
import json
import math
import os
import platform
import sys
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

REGION = "us-east-1"
START = "2026-03-02 09:00:00"
Tiers = tuple[tuple[str, int, int], ...]  # (name, window_s, limit)
TIERS: Tiers = (("second", 1, 20), ("minute", 60, 600), ("hour", 3600, 30_000))
DEFAULT_JOBS = 20_000
DEFAULT_GROUPS = 100
STRATEGIES = ("throttler", "seed-2019", "floor")

# The producers: whenever fewer than 70% of the feeder's depth are outstanding (sent, not yet deleted),
# send more until the depth is reached: at least FEED_DEPTH_MIN, or FEED_DEPTH_S seconds of the finest
# tier's rate. They send before every ReceiveMessage and whenever virtual time moves, so a strategy never
# finds the queue empty before the backlog is. moto scans every message of a queue on each request: a
# 20,000-deep queue would make the emulator, not the strategy, the thing measured.
FEED_DEPTH_MIN = 500
FEED_DEPTH_S = 3.0

# seed-2019 in virtual time: the scheduled function starts 0.1 to 0.5 s after the minute mark (spread
# deterministically: with one fixed delay, the messages it left invisible would come back exactly as a
# later run starts, an artefact no real schedule has). Each ReceiveMessage takes SEED_RECEIVE_S; the
# asynchronous invokes of the messages it returned go out together and are accepted after SEED_INVOKE_S,
# when the loop goes on; each worker's call reaches the API SEED_START_S later (plus 1 ms per place in
# the batch). A call that fails leaves its message to come back after the queue's visibility timeout
# (120 s), as in the post.
SEED_TRIGGER_S = (0.1, 0.5)
SEED_RECEIVE_S = 0.020
SEED_INVOKE_S = 0.020
SEED_START_S = 0.030
# seed-2019 never drains a large backlog in reasonable (virtual) time: it runs for this long at most,
# then its drain time is projected from the rate it achieved.
SEED_BUDGET_MIN_S = 900.0
SEED_BUDGET_IDEAL_FACTOR = 2.0

# Reservation writes at a high dispatch rate: the throttler alone, second=1000, over many groups (FIFO
# hands out one message per group at a time, so 1,000 calls a second need about 1,000 groups).
RATE_PROBE_TIERS: Tiers = (("second", 1, 1000),)
RATE_PROBE_JOBS = 5_000
RATE_PROBE_GROUPS = 1_000
RATE_PROBE_FIELDS = (
    "jobs",
    "groups",
    "drain_s",
    "achieved_rate_per_s",
    "reservation_writes",
    "reservation_writes_per_s",
    "violations",
    "api_429s",
    "aws_requests_per_job",
    "cpu_ms_per_job",
    "wall_s",
)

TARGETS = {"quota_use": 0.99, "aws_requests_per_job": 1.3, "cpu_vs_floor": 2.0}

_perf_counter = time.perf_counter  # freezegun replaces it while a world is open


# ---------------------------------------------------------------------------------------------- ideal
@dataclass(frozen=True)
class Ideal:
    drain_s: float  # when the fastest legal schedule makes its last call, from the start
    binding_tier: str
    tier_alone_s: dict[str, float]  # the same with each tier alone


def fastest_schedule_s(jobs: int, tiers: Tiers) -> float:
    """Time of the last call when every call goes as early as every sliding window allows (greedy).

    Call k may go at t when each tier's (t - window, t] holds fewer than `limit` earlier calls, that is
    t >= t[k - limit] + window. Greedy is optimal for sliding windows: no legal schedule's k-th call is
    earlier than greedy's.
    """
    if jobs <= 0:
        return 0.0
    times = [0.0] * jobs
    for k in range(jobs):
        t = 0.0
        for _, window_s, limit in tiers:
            if k >= limit:
                t = max(t, times[k - limit] + window_s)
        times[k] = t
    return times[-1]


def ideal(jobs: int, tiers: Tiers = TIERS) -> Ideal:
    alone = {name: fastest_schedule_s(jobs, ((name, w, limit),)) for name, w, limit in tiers}
    binding = max(tiers, key=lambda t: (alone[t[0]], -t[2] / t[1]))[0]
    return Ideal(fastest_schedule_s(jobs, tiers), binding, alone)


# ---------------------------------------------------------------------------------------------- meters
class CpuMeter:
    """Exclusive CPU time per section: time spent in a nested section is not charged to its parent.

    The base section is the strategy's own code; `emulator` (moto serving a request), `api` (the fake
    API answering), `worker` (the worker Lambda's own code) and `feeder` (the producers) are carved out.
    """

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[str] = []
        self.mark = 0.0

    def start(self, label: str = "strategy") -> None:
        self.stack = [label]
        self.mark = time.thread_time()

    def stop(self) -> None:
        while self.stack:
            self.leave()

    def enter(self, label: str) -> None:
        now = time.thread_time()
        if self.stack:
            self.totals[self.stack[-1]] += now - self.mark
        self.mark = now
        self.stack.append(label)

    def leave(self) -> None:
        now = time.thread_time()
        if self.stack:
            self.totals[self.stack.pop()] += now - self.mark
        self.mark = now

    @contextmanager
    def section(self, label: str) -> Iterator[None]:
        self.enter(label)
        try:
            yield
        finally:
            self.leave()


class RequestCounter:
    """AWS requests by (service, action), from botocore's `before-call` event on the counted clients."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, service: str, action: str, n: int = 1) -> None:
        self.counts[(service, action)] += n

    def on_before_call(self, event_name: str, **kwargs: Any) -> None:
        service, action = event_name.split(".", 2)[1:]
        self.add(service, action)

    def total(self) -> int:
        return sum(self.counts.values())


# ---------------------------------------------------------------------------------------------- world
@dataclass
class World:
    """One strategy's universe: moto, virtual time, the fake API, the producers and the meters."""

    clock: Any
    env: dict[str, str]
    admin_sqs: Any  # the producers' and the benchmark's own client: never counted
    api: Any
    meter: CpuMeter
    requests: RequestCounter
    jobs: int
    groups: int
    tiers: Tiers
    sent: int = 0
    removed: int = 0
    # boto3's own (client-side) CPU per (section that made the call, "service:action"): the emulator's
    # share is taken out, so this is what the call costs the Lambda that makes it.
    client_cpu: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    _calls: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def queue_url(self) -> str:
        return self.env["JOBS_QUEUE_URL"]

    def counted_client(self, service: str) -> Any:
        """A client of the strategy's own pipeline: its requests are counted, moto's work is carved out."""
        import boto3

        client = boto3.client(service, region_name=REGION)  # type: ignore[call-overload]
        events = client.meta.events
        events.register("before-call.*.*", self.requests.on_before_call)
        events.register("before-call.sqs.ReceiveMessage", self.feed)
        events.register("after-call.sqs.DeleteMessageBatch", self._on_deleted_batch)
        events.register("after-call.sqs.DeleteMessage", self._on_deleted_one)
        events.register_first("before-send.*.*", self._enter_emulator)
        events.register("before-parse.*.*", self._leave_emulator)
        events.register_first("provide-client-params.*.*", self._call_started)
        events.register("after-call.*.*", self._call_ended)
        events.register("after-call-error.*.*", self._call_ended)
        return client

    def _call_started(self, **_: Any) -> None:
        owner = self.meter.stack[-1] if self.meter.stack else "other"
        self._calls.append((owner, time.thread_time(), self._others(owner)))

    def _call_ended(self, event_name: str, **_: Any) -> None:
        if not self._calls:
            return
        owner, started, others_before = self._calls.pop()
        service, action = event_name.split(".", 2)[1:]
        # Take out what nested sections spent meanwhile: the emulator serving it, the producers topping up.
        spent = time.thread_time() - started - (self._others(owner) - others_before)
        self.client_cpu[(owner, f"{service}:{action}")] += spent

    def _others(self, owner: str) -> float:
        return sum(t for label, t in self.meter.totals.items() if label != owner)

    def _enter_emulator(self, **_: Any) -> None:
        if self.meter.stack and self.meter.stack[-1] != "emulator":
            self.meter.enter("emulator")

    def _leave_emulator(self, **_: Any) -> None:
        if self.meter.stack and self.meter.stack[-1] == "emulator":
            self.meter.leave()

    def _on_deleted_batch(self, parsed: dict[str, Any], **_: Any) -> None:
        self.removed += len(parsed.get("Successful", []))  # the strategies delete from the jobs queue only

    def _on_deleted_one(self, parsed: dict[str, Any], **_: Any) -> None:
        self.removed += 1

    def job(self, i: int) -> tuple[str, str, str]:
        """Job i: group i mod G, sequence i div G (the fake API checks the order per group)."""
        group, seq = f"g{i % self.groups:05d}", i // self.groups
        url = f"http://127.0.0.1/ok?group={group}&seq={seq}"
        return json.dumps({"task": "http", "payload": {"method": "POST", "url": url}}), group, f"job-{i:07d}"

    @property
    def feed_depth(self) -> int:
        finest_rate = max(limit / window_s for _, window_s, limit in self.tiers)
        return max(FEED_DEPTH_MIN, math.ceil(FEED_DEPTH_S * finest_rate))

    def feed(self, **_: Any) -> None:
        """The producers: top the queue up when it runs low (neither counted nor charged)."""
        depth = self.feed_depth
        if self.sent >= self.jobs or self.sent - self.removed >= 0.7 * depth:
            return
        from throttler.queue import SqsJobQueue

        with self.meter.section("feeder"):
            target = min(self.jobs, self.removed + depth)
            queue = SqsJobQueue(self.admin_sqs, self.queue_url, self.env["DLQ_URL"])
            while self.sent < target:
                n = min(100, target - self.sent)
                queue.send([self.job(i) for i in range(self.sent, self.sent + n)])
                self.sent += n

    @property
    def done(self) -> bool:
        return self.sent >= self.jobs and self.removed >= self.jobs

    def last_success_at(self) -> float | None:
        ok = [c.at for c in self.api.calls if 200 <= c.status < 300]
        return max(ok) if ok else None


def _worker_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
    return buffer.getvalue()


@contextmanager
def world(jobs: int, groups: int, tiers: Tiers) -> Iterator[World]:
    """A fresh stage in moto (from serverless.yml) on virtual time, with the quotas set and a backlog."""
    import boto3
    import freezegun
    from freezegun import freeze_time
    from moto import mock_aws

    from throttler.core.clock import FakeClock
    from throttler.store import DynamoStateStore
    from throttler_tools.fakeapi import FakeApi
    from throttler_tools.moto_patches import quick_emulator
    from throttler_tools.provision import provision

    meter = CpuMeter()

    class MeteredApi(FakeApi):
        def handle(self, method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
            with meter.section("api"):
                return super().handle(method, url, headers)

    fake_env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION}
    from freezegun import config as freezegun_config

    saved_ignore = list(freezegun_config.settings.default_ignore_list)
    # freezegun walks the call stack on every clock read unless its ignore list is empty.
    freezegun.configure(default_ignore_list=[])
    try:
        with (
            ExitStack() as stack,
            mock.patch.dict(os.environ, fake_env),
            freeze_time(START) as frozen,
            mock_aws(config={"lambda": {"use_docker": False}}),
        ):
            os.environ.pop("AWS_ENDPOINT_URL", None)
            holder: list[World] = []

            def on_advance(seconds: float) -> None:
                frozen.tick(seconds)
                for w in holder:
                    w.feed()

            clock = FakeClock(start=time.time(), on_advance=on_advance)
            stack.enter_context(quick_emulator(clock))
            sqs = boto3.client("sqs", region_name=REGION)
            dynamodb = boto3.client("dynamodb", region_name=REGION)
            env = provision(sqs, dynamodb, "local")
            env["DEFAULT_QUOTAS"] = " ".join(f"{name}={limit}" for name, _, limit in tiers)
            DynamoStateStore(dynamodb, env["STATE_TABLE"]).put_quotas({name: limit for name, _, limit in tiers})
            role = boto3.client("iam", region_name=REGION).create_role(
                RoleName="bench-worker", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []})
            )["Role"]["Arn"]
            boto3.client("lambda", region_name=REGION).create_function(
                FunctionName=env["WORKER_FUNCTION"],
                Runtime="python3.12",
                Role=role,
                Handler="handler.handler",
                Code={"ZipFile": _worker_zip()},
            )
            api = MeteredApi(tiers=[(float(w), limit) for _, w, limit in tiers], clock=clock)
            w = World(clock, env, sqs, api, meter, RequestCounter(), jobs, groups, tiers)
            holder.append(w)
            w.feed()
            yield w
    finally:
        freezegun.configure(default_ignore_list=saved_ignore)


# ---------------------------------------------------------------------------------------------- strategies
@dataclass
class Outcome:
    started_at: float
    ended_at: float  # virtual time when the strategy stopped (drained, or out of budget)
    drained: bool
    runs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _measured(w: World) -> Iterator[None]:
    """CPU accounting for the strategy's own code; a collected, frozen heap so that garbage collection
    does not charge one strategy for the objects the emulator kept from setting up."""
    gc.collect()
    gc.freeze()
    w.meter.start()
    try:
        yield
    finally:
        w.meter.stop()
        gc.unfreeze()


def run_throttler(w: World) -> Outcome:
    """This project, unchanged: one ThrottlerRun per virtual minute, as the EventBridge rule starts it."""
    from throttler.invoker import InProcessInvoker

    from throttler.composition import build_run, build_worker
    from throttler.settings import Settings
    from throttler.worker import InlineExecutor
    from throttler_tools.fakeapi import session_for

    settings = Settings.from_env(w.env)
    clients = {name: w.counted_client(name) for name in ("sqs", "dynamodb", "lambda")}
    worker = build_worker(
        settings,
        clock=w.clock,
        get_client=clients.__getitem__,
        session=session_for(w.api),
        executor_factory=lambda n: InlineExecutor(),
    )

    def invoke(request: dict[str, Any]) -> dict[str, Any]:
        # The synchronous Invoke the LambdaInvoker makes (moto answers it), then the worker, inline.
        clients["lambda"].invoke(
            FunctionName=settings.worker_function,
            InvocationType="RequestResponse",
            Payload=json.dumps(request).encode(),
        )
        with w.meter.section("worker"):
            return worker.run_batch(request)

    invoker = InProcessInvoker(invoke)
    start = w.clock.now()
    max_runs = 10 + 3 * math.ceil(ideal(w.jobs, w.tiers).drain_s / 60)
    runs = reservations = conflicts = dead_lettered = 0
    with _measured(w):
        while not w.done and runs < max_runs:
            scheduled = start + 60 * math.ceil((w.clock.now() - start) / 60 - 1e-9)
            w.clock.sleep(scheduled - w.clock.now())
            scheduled = max(scheduled, w.clock.now())  # the previous run overran: start right after it
            run = build_run(settings, invoker=invoker, clock=w.clock, get_client=clients.__getitem__)
            summary = run.run(deadline=scheduled + settings.run_budget_s)
            runs += 1
            reservations += summary.reservations
            conflicts += summary.reservation_conflicts
            dead_lettered += summary.dead_lettered
            if w.clock.now() < scheduled + 1e-6:
                w.clock.sleep(1e-3)  # nothing happened: move on to the next minute mark
    extra = {"reservation_writes": reservations, "reservation_conflicts": conflicts, "dead_lettered": dead_lettered}
    return Outcome(start, w.clock.now(), w.done, runs, extra)


def run_seed_2019(w: World, budget_s: float) -> Outcome:
    """The 2019 post's design: each minute, receive up to the minute's quota and fire one async worker each."""
    import heapq

    from throttler_tools.fakeapi import session_for

    sqs, lam = w.counted_client("sqs"), w.counted_client("lambda")
    function = w.env["WORKER_FUNCTION"]
    session = session_for(w.api)
    per_minute = min((limit for _, window_s, limit in w.tiers if window_s == 60), default=None)
    if per_minute is None:  # no minute tier: a minute's worth of the slowest tier's rate
        per_minute = max(1, int(60 * min(limit / window_s for _, window_s, limit in w.tiers)))
    start = w.clock.now()
    stop_at = start + budget_s
    workers: list[tuple[float, int, dict[str, Any]]] = []  # (when its call reaches the API, tiebreak, message)
    invoked = minutes = 0

    def advance_to(t: float) -> None:
        if t > w.clock.now():
            w.clock.sleep(t - w.clock.now())

    def run_workers_until(t: float) -> None:
        while workers and workers[0][0] <= t:
            at, _, message = heapq.heappop(workers)
            advance_to(at)
            with w.meter.section("worker"):
                payload = json.loads(message["Body"])["payload"]
                response = session.request(
                    payload["method"], payload["url"], headers={"Idempotency-Key": message["MessageId"]}
                )
                if 200 <= response.status_code < 300:
                    sqs.delete_message(QueueUrl=w.queue_url, ReceiptHandle=message["ReceiptHandle"])

    with _measured(w):
        while not w.done and start + 60 * minutes < stop_at:
            low, high = SEED_TRIGGER_S
            begin = start + 60 * minutes + low + (high - low) * ((minutes * 0.6180339887) % 1.0)
            run_workers_until(begin)
            advance_to(begin)
            minutes += 1
            t = w.clock.now()
            received = 0
            while received < per_minute:
                run_workers_until(t)
                advance_to(t)
                messages = sqs.receive_message(
                    QueueUrl=w.queue_url, MaxNumberOfMessages=min(10, per_minute - received)
                ).get("Messages", [])
                t += SEED_RECEIVE_S
                if not messages:
                    break
                for place, message in enumerate(messages):
                    lam.invoke(FunctionName=function, InvocationType="Event", Payload=json.dumps(message).encode())
                    invoked += 1
                    heapq.heappush(workers, (t + SEED_INVOKE_S + SEED_START_S + place * 0.001, invoked, message))
                t += SEED_INVOKE_S
                received += len(messages)
        run_workers_until(stop_at if not w.done else math.inf)
    return Outcome(start, w.clock.now() if w.done else stop_at, w.done, minutes, {"invoked": invoked})


def run_floor(w: World) -> Outcome:
    """Receive and batch-delete, nothing else: what draining the queue costs at the least."""
    sqs = w.counted_client("sqs")
    start = w.clock.now()
    with _measured(w):
        while not w.done:
            messages = sqs.receive_message(QueueUrl=w.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=30).get(
                "Messages", []
            )
            if messages:
                entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
                sqs.delete_message_batch(QueueUrl=w.queue_url, Entries=entries)
            w.feed()
    return Outcome(start, w.clock.now(), w.done)


# ---------------------------------------------------------------------------------------------- figures
def measure(strategy: str, jobs: int, groups: int, tiers: Tiers = TIERS) -> dict[str, Any]:
    """Run one strategy on a fresh world and return its figures (plus `_calls` for the plot)."""
    best = ideal(jobs, tiers)
    wall_started = _perf_counter()
    with world(jobs, groups, tiers) as w:
        if strategy == "throttler":
            outcome = run_throttler(w)
        elif strategy == "seed-2019":
            outcome = run_seed_2019(w, max(SEED_BUDGET_MIN_S, SEED_BUDGET_IDEAL_FACTOR * best.drain_s))
        elif strategy == "floor":
            outcome = run_floor(w)
        else:
            raise ValueError(f"unknown strategy {strategy!r}")
        calls = [(c.at - outcome.started_at, c.status) for c in w.api.calls]
        completed = min(w.removed, jobs)
        last_ok = w.last_success_at()
        figures = _figures(strategy, w, outcome, best, completed, last_ok)
    figures["wall_s"] = round(_perf_counter() - wall_started, 2)
    figures["_calls"] = calls
    return figures


def _figures(
    strategy: str, w: World, outcome: Outcome, best: Ideal, completed: int, last_ok: float | None
) -> dict[str, Any]:
    jobs = w.jobs
    per_job = max(1, completed)
    api_calls = len(w.api.calls)
    binding_rate = jobs / best.drain_s if best.drain_s > 0 else math.inf
    drain_s: float | None = None
    projected = False
    elapsed_s: float | None = None
    if api_calls:
        if outcome.drained and last_ok is not None:
            elapsed_s = drain_s = last_ok - outcome.started_at
        else:
            elapsed_s = outcome.ended_at - outcome.started_at
            if completed:
                drain_s, projected = elapsed_s * jobs / completed, True
    achieved = completed / elapsed_s if elapsed_s else None
    quota_use = None
    if achieved is not None and math.isfinite(binding_rate):
        quota_use = achieved / binding_rate
    elif achieved is not None:
        quota_use = 1.0
    requests = w.requests.counts
    total = sum(requests.values())
    cpu = w.meter.totals
    own = {action: t for (owner, action), t in w.client_cpu.items() if owner == "strategy"}
    reservation_writes = outcome.extra.get("reservation_writes")
    return {
        "strategy": strategy,
        "jobs": jobs,
        "groups": w.groups,
        "completed": completed,
        "drained": outcome.drained,
        "drain_s": _round(drain_s, 2),
        "drain_projected": projected,
        "elapsed_s": _round(elapsed_s, 2),
        "ideal_s": _round(best.drain_s, 2),
        "binding_tier": best.binding_tier,
        "binding_rate_per_s": _round(binding_rate, 4),
        "achieved_rate_per_s": _round(achieved, 4),
        "quota_use": _round(quota_use, 4),
        "violations": w.api.violations,
        "api_429s": sum(1 for c in w.api.calls if c.status == 429),
        "api_calls": api_calls,
        "order_violations": w.api.order_violations,
        "aws_requests": total,
        "aws_requests_per_job": _round(total / per_job, 4),
        "aws_requests_per_api_call": _round(total / api_calls, 4) if api_calls else None,
        "requests_by_action": {f"{s}:{a}": n for (s, a), n in sorted(requests.items())},
        "requests_per_job_by_action": {f"{s}:{a}": round(n / per_job, 4) for (s, a), n in sorted(requests.items())},
        "cpu_ms_per_job": round(1000 * cpu.get("strategy", 0.0) / per_job, 4),
        "aws_client_cpu_ms_per_job": round(1000 * sum(own.values()) / per_job, 4),
        "own_code_cpu_ms_per_job": round(1000 * (cpu.get("strategy", 0.0) - sum(own.values())) / per_job, 4),
        "aws_client_cpu_ms_per_job_by_action": {a: round(1000 * t / per_job, 4) for a, t in sorted(own.items())},
        "worker_cpu_ms_per_job": round(1000 * cpu.get("worker", 0.0) / per_job, 4),
        "pipeline_cpu_ms_per_job": round(1000 * (cpu.get("strategy", 0.0) + cpu.get("worker", 0.0)) / per_job, 4),
        "emulator_cpu_ms_per_job": round(1000 * cpu.get("emulator", 0.0) / per_job, 4),
        "fake_api_cpu_ms_per_job": round(1000 * cpu.get("api", 0.0) / per_job, 4),
        "feeder_cpu_ms_per_job": round(1000 * cpu.get("feeder", 0.0) / per_job, 4),
        "reservation_writes": reservation_writes,
        "reservation_writes_per_s": _round(reservation_writes / drain_s, 4)
        if reservation_writes is not None and drain_s
        else None,
        "runs": outcome.runs,
        **{k: v for k, v in outcome.extra.items() if k != "reservation_writes"},
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def scales_for(jobs: int, full: bool) -> list[int]:
    """The backlog sizes measured: a tenth of `jobs` and `jobs` (and ten times `jobs` with --full)."""
    sizes = {max(1, jobs // 10), jobs}
    if full:
        sizes.add(jobs * 10)
    return sorted(sizes)


def targets(result: dict[str, Any], floor: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target for `throttler`: the measured value, the bound, and whether it is met."""
    cpu_ratio = result["cpu_ms_per_job"] / floor["cpu_ms_per_job"] if floor["cpu_ms_per_job"] else None
    return {
        "quota_use": {
            "value": result["quota_use"],
            "bound": f">= {TARGETS['quota_use']}",
            "met": result["quota_use"] is not None and result["quota_use"] >= TARGETS["quota_use"],
        },
        "violations": {"value": result["violations"], "bound": "== 0", "met": result["violations"] == 0},
        "api_429s": {"value": result["api_429s"], "bound": "== 0", "met": result["api_429s"] == 0},
        "aws_requests_per_job": {
            "value": result["aws_requests_per_job"],
            "bound": f"<= {TARGETS['aws_requests_per_job']}",
            "met": result["aws_requests_per_job"] <= TARGETS["aws_requests_per_job"],
        },
        "cpu_vs_floor": {
            "value": _round(cpu_ratio, 3),
            "bound": f"<= {TARGETS['cpu_vs_floor']}",
            "met": cpu_ratio is not None and cpu_ratio <= TARGETS["cpu_vs_floor"],
        },
    }


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(), "platform": platform.platform()}


# ---------------------------------------------------------------------------------------------- output
def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    headline = report["strategies"]
    floor_cpu = headline["floor"]["cpu_ms_per_job"]
    s = report["scenario"]
    tiers = ", ".join(f"{n}={limit}" for n, limit in s["tiers"].items())
    table = Table(title=f"{s['jobs']:,} jobs over {s['groups']} groups, tiers {tiers} (virtual time)")
    for column in (
        "strategy",
        "drain s",
        "ideal s",
        "quota use",
        "violat.",
        "429s",
        "AWS req/job",
        "CPU ms/job",
        "of it boto3",
        "x floor",
        "worker ms/job",
        "resv. w/s",
    ):
        if column == "strategy":
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right", no_wrap=column == "drain s")
    for name, r in headline.items():
        drain = _fmt(r["drain_s"], 0 if r["drain_projected"] else 1) + ("*" if r["drain_projected"] else "")
        ratio = r["cpu_ms_per_job"] / floor_cpu if floor_cpu else None
        table.add_row(
            name,
            drain,
            _fmt(r["ideal_s"], 1),
            _fmt(r["quota_use"], 4),
            _fmt(r["violations"]),
            _fmt(r["api_429s"]),
            _fmt(r["aws_requests_per_job"], 3),
            _fmt(r["cpu_ms_per_job"], 3),
            _fmt(r["aws_client_cpu_ms_per_job"], 3),
            _fmt(ratio, 2),
            _fmt(r["worker_cpu_ms_per_job"], 3),
            _fmt(r["reservation_writes_per_s"], 3),
        )
    console.print(table)

    actions = sorted({a for r in headline.values() for a in r["requests_per_job_by_action"]})
    by_action = Table(title="AWS requests per job, by service and action")
    by_action.add_column("action")
    for name in headline:
        by_action.add_column(name, justify="right")
    for action in actions:
        by_action.add_row(action, *(_fmt(r["requests_per_job_by_action"].get(action), 4) for r in headline.values()))
    console.print(by_action)

    scaling = Table(title="Scaling: cost per job at each backlog size")
    for column in ("jobs", "strategy", "drain s", "quota use", "AWS req/job", "CPU ms/job", "worker ms/job", "wall s"):
        scaling.add_column(column, justify="left" if column == "strategy" else "right")
    for scale in report["scales"]:
        for name, r in scale["strategies"].items():
            drain = _fmt(r["drain_s"], 0 if r["drain_projected"] else 1) + ("*" if r["drain_projected"] else "")
            scaling.add_row(
                _fmt(scale["jobs"]),
                name,
                drain,
                _fmt(r["quota_use"], 4),
                _fmt(r["aws_requests_per_job"], 3),
                _fmt(r["cpu_ms_per_job"], 3),
                _fmt(r["worker_cpu_ms_per_job"], 3),
                _fmt(r["wall_s"], 1),
            )
    console.print(scaling)

    probe = report["rate_probe"]
    rate = Table(title="Rate probe: reservation writes at a high dispatch rate (throttler only)")
    for column in ("tiers", "jobs", "groups", "calls/s", "resv. writes", "resv. writes/s", "violations", "429s"):
        rate.add_column(column, justify="right")
    rate.add_row(
        " ".join(f"{n}={limit}" for n, limit in probe["tiers"].items()),
        _fmt(probe["jobs"]),
        _fmt(probe["groups"]),
        _fmt(probe["achieved_rate_per_s"], 1),
        _fmt(probe["reservation_writes"]),
        _fmt(probe["reservation_writes_per_s"], 2),
        _fmt(probe["violations"]),
        _fmt(probe["api_429s"]),
    )
    console.print(rate)

    goals = Table(title="Targets for throttler")
    for column in ("target", "measured", "bound", "met"):
        goals.add_column(column)
    for name, t in report["targets"].items():
        goals.add_row(name, _fmt(t["value"], 4), t["bound"], "[green]yes[/]" if t["met"] else "[red]NO[/]")
    console.print(goals)
    console.print(
        "* projected from the rate achieved within seed-2019's time budget. CPU ms/job: the throttling "
        "function's own code plus its boto3 client work ('of it boto3'), without the emulator's or the fake "
        "API's work; 'worker' is the worker Lambda's share. See BENCHMARKS.md."
    )


def draw_plot(results: dict[str, dict[str, Any]], tiers: Tiers, path: str) -> None:
    """Calls reaching the API over virtual time, one line per strategy, against the limits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate_ax, minute_ax) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    horizon = (
        max((r["elapsed_s"] or 0.0) for r in results.values() if r["api_calls"])
        if any(r["api_calls"] for r in results.values())
        else 60.0
    )
    bin_s = next((b for b in (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0) if horizon / b <= 400), 600.0)
    for name, r in results.items():
        times = [t for t, _ in r["_calls"]]
        if not times:
            rate_ax.plot([], [], label=f"{name} (no API calls)")
            continue
        bins = [0] * (int(horizon // bin_s) + 2)
        for t in times:
            if 0 <= t <= horizon:
                bins[int(t // bin_s)] += 1
        rate_ax.plot([i * bin_s for i in range(len(bins))], [n / bin_s for n in bins], label=name, linewidth=1)
        window = []
        xs, ys = [], []
        start = 0
        times.sort()
        for t in times:
            window.append(t)
            while window[start] <= t - 60:
                start += 1
            xs.append(t)
            ys.append(len(window) - start)
        minute_ax.plot(xs, ys, label=name, linewidth=1)
    for name, window_s, limit in tiers:
        rate_ax.axhline(limit / window_s, linestyle="--", linewidth=0.8, color="grey")
        rate_ax.annotate(f"{name}={limit}", (0, limit / window_s), fontsize=8, color="grey")
        if window_s == 60:
            minute_ax.axhline(limit, linestyle="--", linewidth=0.8, color="grey")
            minute_ax.annotate(f"{name}={limit}", (0, limit), fontsize=8, color="grey")
    rate_ax.set_ylabel(f"calls/s (mean over {bin_s:g} s)")
    rate_ax.set_title("Calls reaching the API (429s included) against the limits")
    rate_ax.legend()
    minute_ax.set_ylabel("calls in the last 60 s")
    minute_ax.set_xlabel("virtual seconds since the backlog was there")
    minute_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- entry point
def run(
    jobs: int = DEFAULT_JOBS,
    groups: int = DEFAULT_GROUPS,
    full: bool = False,
    tiers: Tiers = TIERS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every strategy at every scale; returns the report (the headline is the `jobs` scale)."""
    started = _perf_counter()
    scales = []
    headline: dict[str, dict[str, Any]] = {}
    for size in scales_for(jobs, full):
        results = {}
        for strategy in STRATEGIES:
            if progress:
                progress(f"{strategy}: {size:,} jobs ...")
            results[strategy] = measure(strategy, size, groups, tiers)
            if progress:
                r = results[strategy]
                progress(
                    f"{strategy}: {size:,} jobs done in {r['wall_s']:.1f} s wall "
                    f"({r['aws_requests_per_job']:.3f} AWS req/job, {r['cpu_ms_per_job']:.3f} CPU ms/job)"
                )
        scales.append({"jobs": size, "strategies": results})
        if size == jobs:
            headline = results
    probe_jobs = min(RATE_PROBE_JOBS, jobs)
    if progress:
        progress(f"rate probe: throttler, {probe_jobs:,} jobs at second={RATE_PROBE_TIERS[0][2]} ...")
    probe = measure("throttler", probe_jobs, RATE_PROBE_GROUPS, RATE_PROBE_TIERS)
    report = {
        "strategies": headline,
        "rate_probe": {
            "tiers": {n: limit for n, _, limit in RATE_PROBE_TIERS},
            **{key: probe[key] for key in RATE_PROBE_FIELDS},
        },
        "targets": targets(headline["throttler"], headline["floor"]),
        "scales": scales,
        "scenario": {
            "jobs": jobs,
            "groups": groups,
            "tiers": {n: limit for n, _, limit in tiers},
            "ideal": "fastest legal schedule: each call as early as every sliding window allows",
            "feeder": {"depth_min": FEED_DEPTH_MIN, "depth_s": FEED_DEPTH_S},
            "seed_2019": {
                "trigger_s": SEED_TRIGGER_S,
                "receive_s": SEED_RECEIVE_S,
                "invoke_s": SEED_INVOKE_S,
                "start_s": SEED_START_S,
                "budget_s": max(SEED_BUDGET_MIN_S, SEED_BUDGET_IDEAL_FACTOR * ideal(jobs, tiers).drain_s),
            },
        },
        "machine": machine(),
        "command": "python -m throttler bench"
        + (f" --jobs {jobs}" if jobs != DEFAULT_JOBS else "")
        + (" --full" if full else ""),
        "wall_s": round(_perf_counter() - started, 1),
    }
    return report


def _public(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the raw call lists kept for the plot."""

    def strip(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in results.items()}

    public = dict(report)
    public["strategies"] = strip(report["strategies"])
    public["rate_probe"] = {k: v for k, v in report["rate_probe"].items() if not k.startswith("_")}
    public["scales"] = [{"jobs": s["jobs"], "strategies": strip(s["strategies"])} for s in report["scales"]]
    return public


def main(
    jobs: int | None = DEFAULT_JOBS,
    groups: int | None = DEFAULT_GROUPS,
    as_json: bool = False,
    full: bool = False,
    plot: str | None = None,
) -> int:
    """`python -m throttler bench`: the tables on stdout; with `as_json`, one JSON object as the last line."""
    from rich.console import Console

    jobs = jobs or DEFAULT_JOBS
    groups = groups or DEFAULT_GROUPS
    err = Console(stderr=True)
    report = run(jobs, groups, full, TIERS, progress=lambda line: err.print(f"[dim]{line}[/]"))
    render(report, Console(width=max(120, Console().width)))
    if plot:
        draw_plot(report["strategies"], TIERS, plot)
        err.print(f"plot written to {plot}")
    if as_json:
        sys.stdout.flush()
        print(json.dumps(_public(report), separators=(",", ":")))
    return 0
