"""The three strategies, each draining the same backlog in virtual time with everything counted.

- `throttler`: this project, unchanged: a BenchWorld (the simulation's stage) with EventBridge's schedule,
  each run driven by `ThrottlerRun.step`, batches handed to workers whose calls overlap as in real time.
- `seed-2019`: the design of the 2019 post "Throttling Third-Party API calls with AWS Lambda"
  (jeremydaly.com), reproduced from the old bench: each scheduled minute, receive up to the minute's
  quota (receives of 10, stopping at the first empty one) and fire one asynchronous worker per message;
  each worker calls the API and deletes its own message when the call succeeded; a failed call's message
  comes back after the queue's visibility timeout (120 s).
- `floor`: a bare loop that only receives (10 at a time) and batch-deletes: the cost baseline.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from throttler.dispatch.run import Phase
from throttler.queue import MemorySqs
from throttler_tools.bench.cost import SEED_MEMORY_GB, bill, sizing
from throttler_tools.bench.meters import FALLBACK_CLIENT_MS, STRATEGY, THROTTLER, TWIN, WORKER, CpuMeter, Requests
from throttler_tools.bench.model import SHIPPED_MAX_PARALLEL, ApiLatency, Tiers, ideal, tiers_text
from throttler_tools.bench.stage import BenchApi, BenchWorld, bench_job
from throttler_tools.bench.twins import CountingJobQueue
from throttler_tools.fakeapi import session_for
from throttler_tools.provision import provision
from throttler_tools.sim.engine import EventLoop, SimClock
from throttler_tools.sim.world import START, WorldConfig

# seed-2019 in virtual time (as in the old bench): the scheduled function starts 0.1 to 0.5 s after the
# minute mark (spread deterministically); each ReceiveMessage takes SEED_RECEIVE_S; the asynchronous
# invokes of one receive are accepted SEED_INVOKE_S later; each worker starts SEED_START_S after that
# (+1 ms per place in the batch) and then makes its call, which takes the API's latency.
SEED_TRIGGER_S = (0.1, 0.5)
SEED_RECEIVE_S = 0.020
SEED_INVOKE_S = 0.020
SEED_START_S = 0.030
SEED_DELETE_S = 0.010
# seed-2019 cannot drain a large backlog in reasonable virtual time: it runs for 15 virtual minutes at most
# (its figures per job are steady by then), and its drain time is projected from the rate it achieved.
SEED_BUDGET_S = 900.0
QUEUE_VISIBILITY_S = 120  # serverless.yml: the jobs queue's VisibilityTimeout


def job_list(jobs: int, groups: int, key_of: Callable[[int], str | None] = lambda i: None) -> list[tuple[str, str, str]]:
    """Job i: group i mod G, sequence i div G (the fake API checks each group's order)."""
    out = []
    for i in range(jobs):
        group = f"g{i % groups:05d}"
        out.append((bench_job(group, i // groups, key_of(i)), group, f"job-{i:07d}"))
    return out


def _quiet_heap() -> None:
    """Start from a collected, frozen heap: garbage collection must not charge one strategy for another's objects."""
    gc.collect()
    gc.freeze()


# ---------------------------------------------------------------------------------------------- throttler
@dataclass
class ThrottlerSpec:
    jobs: int
    groups: int
    tiers: Tiers
    api_latency: ApiLatency
    seed: int = 1
    max_parallel: int = SHIPPED_MAX_PARALLEL
    latency_mode: str = "cost"
    quotas: dict[str, Any] | None = None  # the quota item (default: the tiers)
    api_tiers: list[tuple[float, int]] | None = None  # what the API enforces (default: the tiers)
    key_tiers: list[tuple[float, int]] = field(default_factory=list)
    api_changes: list[tuple[float, list[tuple[float, int]]]] = field(default_factory=list)
    jobs_list: list[tuple[str, str, str]] | None = None  # the backlog (default: job_list(jobs, groups))
    max_virtual_s: float | None = None
    stop_at_s: float | None = None  # stop at this virtual time even with a backlog left (adaptive runs)
    profile: bool = False
    # Client-side CPU ms per request by action, and of one API call (`http:call`): see moto.client_cpu_ms.
    client_ms: dict[str, float] | None = None


def throttler_world(spec: ThrottlerSpec) -> BenchWorld:
    quotas = spec.quotas if spec.quotas is not None else {name: limit for name, _, limit in spec.tiers}
    api_tiers = spec.api_tiers if spec.api_tiers is not None else [(float(w), limit) for _, w, limit in spec.tiers]
    config = WorldConfig(
        seed=spec.seed,
        quotas=quotas,
        default_quotas=tiers_text(spec.tiers),
        default_latency=spec.latency_mode,
        api_tiers=api_tiers,
    )
    return BenchWorld(
        config,
        spec.api_latency,
        key_tiers=spec.key_tiers,
        api_changes=spec.api_changes,
        max_parallel=spec.max_parallel,
        profile=spec.profile,
    )


def run_throttler(spec: ThrottlerSpec, world: BenchWorld | None = None) -> tuple[dict[str, Any], BenchWorld]:
    """Drain the backlog with EventBridge's schedule until every job succeeded and the last run ended."""
    w = world or throttler_world(spec)
    jobs = spec.jobs_list if spec.jobs_list is not None else job_list(spec.jobs, spec.groups)
    start = w.loop.now
    w.enqueue(jobs)
    best = ideal(len(jobs), spec.tiers)
    limit = spec.max_virtual_s or (3 * best.drain_s + 600)
    wall = time.perf_counter()
    _quiet_heap()
    try:
        w.start_schedule()
        if spec.stop_at_s is not None:
            w.run_until(start + spec.stop_at_s)
        else:
            w.run_until(start + limit, stop=lambda: w.api.successes >= len(jobs))
            # The run that made the last calls settles and deletes them, then ends (idle, or hand-over).
            w.run_until(w.loop.now + 180, stop=lambda: all(r.phase is Phase.DONE for r in w.runs))
    finally:
        gc.unfreeze()
    cpu = w.meter.close()
    return throttler_figures(w, spec, len(jobs), start, cpu, time.perf_counter() - wall), w


def throttler_figures(
    w: BenchWorld, spec: ThrottlerSpec, jobs: int, start: float, cpu: dict[str, float], wall_s: float
) -> dict[str, Any]:
    best = ideal(jobs, spec.tiers)
    api = w.api
    done = api.successes
    per_job = max(1, done)
    drain_s = (api.last_success_at - start) if api.last_success_at is not None and done >= jobs else None
    reservations = sum(s.reservations for s in w.summaries)
    runs_billed = sum(r.billed_s for r in w.run_stats)
    workers_billed = sum(w.workers.stats.billed_s)
    invocations = len(w.run_stats) + w.workers.stats.invocations
    requests = w.requests
    producer = sum(n for (s, _), n in requests.counts.items() if s == "producer")
    # Each function is billed at its configured memory, or at more if its CPU share could not carry the rate.
    client = spec.client_ms or {}
    client_s = {caller: 0.0 for caller in (THROTTLER, WORKER)}
    for (caller, action), n in requests.by_caller_action.items():
        if caller in client_s:
            client_s[caller] += n * client.get(action, FALLBACK_CLIENT_MS) / 1000
    http_s = len(api.calls) * client.get("http:call", FALLBACK_CLIENT_MS) / 1000
    memory = {
        "throttler": sizing("throttler", cpu.get(THROTTLER, 0.0) + client_s[THROTTLER], runs_billed),
        "worker": sizing("worker", cpu.get(WORKER, 0.0) + client_s[WORKER] + http_s, workers_billed),
    }
    money = bill(
        sqs_chunks=requests.sqs_chunks,
        rru=requests.rru,
        wru=requests.wru,
        lambda_invocations=invocations,
        gb_s=runs_billed * memory["throttler"].billed_mb / 1024 + workers_billed * memory["worker"].billed_mb / 1024,
        producer_sqs_requests=producer,
    )
    return {
        "jobs": jobs,
        "completed": done,
        "drained": done >= jobs,
        "drain_s": _round(drain_s, 2),
        "ideal_s": _round(best.drain_s, 2),
        "drain_projected": False,
        "binding_tier": best.binding_tier,
        "quota_use": _round(best.drain_s / drain_s, 4) if drain_s else None,
        "violations": api.violations,
        "api_429s": sum(1 for c in api.calls if c.status == 429),
        "api_calls": len(api.calls),
        "order_violations": api.order_violations,
        "aws_requests": requests.total(),
        "aws_requests_per_job": round(requests.total() / per_job, 4),
        "aws_requests_by_action": requests.by_action(),
        "aws_requests_per_job_by_action": {a: round(n / per_job, 4) for a, n in requests.by_action().items()},
        "requests_by_function": dict(requests.by_caller),
        "requests_per_job_by_function": {
            f"{c} {a}": round(n / per_job, 4) for (c, a), n in sorted(requests.by_caller_action.items())
        },
        "dynamodb_rru_per_job": round(requests.rru / per_job, 4),
        "dynamodb_wru_per_job": round(requests.wru / per_job, 4),
        "own_cpu_ms_per_job": round(1000 * cpu.get(THROTTLER, 0.0) / per_job, 4),
        "worker_cpu_ms_per_job": round(1000 * cpu.get(WORKER, 0.0) / per_job, 4),
        "sim_cpu_ms_per_job": {k: round(1000 * v / per_job, 4) for k, v in sorted(cpu.items())},
        "reservation_writes": reservations,
        "reservation_writes_per_s": _round(reservations / drain_s, 4) if drain_s else None,
        "reservation_conflicts": sum(s.reservation_conflicts for s in w.summaries),
        "dead_lettered": sum(s.dead_lettered for s in w.summaries),
        "missed_slots": sum(s.missed_slots for s in w.summaries),
        "runs": len(w.run_stats),
        "batches": w.workers.stats.invocations,
        "jobs_per_batch": round(done / max(1, w.workers.stats.invocations), 1),
        "late_skips": w.workers.stats.late_skips,
        "late_sends": w.workers.stats.late_sends,
        "lambda_invocations": invocations,
        "throttler_billed_s": round(runs_billed, 2),
        "worker_billed_s": round(workers_billed, 2),
        "memory": {name: m.describe() for name, m in memory.items()},
        "invoke_bytes_per_batch": round(requests.invoke_bytes / max(1, w.workers.stats.invocations)),
        "usd": money,
        "wall_s": round(wall_s, 1),
    }


# ---------------------------------------------------------------------------------------------- seed-2019
@dataclass
class SeedWorld:
    loop: EventLoop
    clock: SimClock
    sqs: MemorySqs
    queue: CountingJobQueue
    queue_name: str
    api: BenchApi
    meter: CpuMeter
    requests: Requests
    session: Any


def _seed_world(tiers: Tiers, seed_jobs: list[tuple[str, str, str]]) -> SeedWorld:
    meter, requests = CpuMeter(), Requests()
    loop = EventLoop(START)
    clock = SimClock(loop)
    sqs = MemorySqs(clock)
    env = provision(sqs, None, "local")
    queue = CountingJobQueue(sqs, env["JOBS_QUEUE_URL"], env["DLQ_URL"], requests, meter)
    api = BenchApi(tiers=[(float(w), limit) for _, w, limit in tiers], clock=clock, meter=meter)
    with requests.as_caller("producer"):
        queue.send(seed_jobs)
    return SeedWorld(loop, clock, sqs, queue, env["JOBS_QUEUE_URL"], api, meter, requests, session_for(api))


def run_seed_2019(jobs: int, groups: int, tiers: Tiers, api_latency: ApiLatency, seed: int = 1) -> dict[str, Any]:
    """Each minute: receive up to the minute's quota and fire one asynchronous worker per message."""
    import random

    rng = random.Random(seed)
    w = _seed_world(tiers, job_list(jobs, groups))
    best = ideal(jobs, tiers)
    budget_s = SEED_BUDGET_S
    per_minute = min((limit for _, window_s, limit in tiers if window_s == 60), default=None)
    if per_minute is None:
        per_minute = max(1, int(60 * min(limit / window_s for _, window_s, limit in tiers)))
    start = w.loop.now
    state: dict[str, Any] = {"done": 0, "invoked": 0, "minutes": 0, "scheduler_s": 0.0, "worker_s": 0.0}

    def worker(message: Any, accepted_at: float, place: int) -> None:
        """One worker Lambda: its call reaches the API after its start and the outbound network leg."""
        outbound, total = api_latency.sample(rng)
        arrive_at = accepted_at + SEED_START_S + 0.001 * place + outbound

        def arrive() -> None:
            with w.meter.section(WORKER):
                payload = json.loads(message.body)["payload"]
                response = w.session.request(payload["method"], payload["url"], headers={"Idempotency-Key": message.message_id})
            ok = 200 <= response.status_code < 300
            w.loop.at(arrive_at - outbound + total, lambda: finish(ok))

        def finish(ok: bool) -> None:
            if ok:
                with w.meter.section(WORKER), w.requests.as_caller(WORKER):
                    w.requests.add("sqs", "DeleteMessage", chunks=1)
                    with w.meter.section(TWIN):
                        w.sqs.delete_message_batch(w.queue_name, [message.receipt])
                state["done"] += 1
            state["worker_s"] += SEED_START_S + total + (SEED_DELETE_S if ok else 0.0)

        w.loop.at(arrive_at, arrive)

    def minute(n: int) -> None:
        """The scheduled function: receives of 10 up to the minute's quota, one async invoke per message."""
        state["minutes"] += 1
        received = 0
        t = w.loop.now
        with w.meter.section(STRATEGY):
            while received < per_minute:
                messages = w.queue.receive(min(10, per_minute - received), QUEUE_VISIBILITY_S)
                t += SEED_RECEIVE_S
                if not messages:
                    break
                for place, message in enumerate(messages):
                    w.requests.add("lambda", "Invoke")
                    state["invoked"] += 1
                    worker(message, t + SEED_INVOKE_S, place)
                t += SEED_INVOKE_S
                received += len(messages)
        state["scheduler_s"] += t - w.loop.now

    low, high = SEED_TRIGGER_S
    minutes = int(budget_s // 60)
    for n in range(minutes):
        w.loop.at(start + 60 * n + low + (high - low) * ((n * 0.6180339887) % 1.0), functools.partial(minute, n))
    wall = time.perf_counter()
    _quiet_heap()
    try:
        w.loop.run_until(start + budget_s, stop=lambda: state["done"] >= jobs)
    finally:
        gc.unfreeze()
    cpu = w.meter.close()
    done = state["done"]
    per_job = max(1, done)
    drained = done >= jobs
    elapsed = (w.api.last_success_at - start) if w.api.last_success_at is not None else None
    drain_s = elapsed if drained else (jobs * budget_s / done if done else None)
    invocations = state["minutes"] + state["invoked"]
    requests = w.requests
    producer = sum(n for (s, _), n in requests.counts.items() if s == "producer")
    money = bill(
        sqs_chunks=requests.sqs_chunks,
        rru=0.0,
        wru=0.0,
        lambda_invocations=invocations,
        gb_s=(state["scheduler_s"] + state["worker_s"]) * SEED_MEMORY_GB,
        producer_sqs_requests=round(producer * done / jobs),  # only the completed jobs are billed to the run
    )
    return {
        "jobs": jobs,
        "completed": done,
        "drained": drained,
        "drain_s": _round(drain_s, 1),
        "drain_projected": not drained,
        "ideal_s": _round(best.drain_s, 2),
        "binding_tier": best.binding_tier,
        "budget_s": budget_s,
        "quota_use": _round(best.drain_s / drain_s, 4) if drain_s else None,
        "violations": w.api.violations,
        "api_429s": sum(1 for c in w.api.calls if c.status == 429),
        "api_calls": len(w.api.calls),
        "order_violations": w.api.order_violations,
        "aws_requests": requests.total(),
        "aws_requests_per_job": round(requests.total() / per_job, 4),
        "aws_requests_by_action": requests.by_action(),
        "aws_requests_per_job_by_action": {a: round(n / per_job, 4) for a, n in requests.by_action().items()},
        "own_cpu_ms_per_job": round(1000 * cpu.get(STRATEGY, 0.0) / per_job, 4),
        "worker_cpu_ms_per_job": round(1000 * cpu.get(WORKER, 0.0) / per_job, 4),
        "sim_cpu_ms_per_job": {k: round(1000 * v / per_job, 4) for k, v in sorted(cpu.items())},
        "reservation_writes": None,
        "reservation_writes_per_s": None,
        "lambda_invocations": invocations,
        "throttler_billed_s": round(state["scheduler_s"], 2),
        "worker_billed_s": round(state["worker_s"], 2),
        "usd": money,
        "wall_s": round(time.perf_counter() - wall, 1),
    }


# ---------------------------------------------------------------------------------------------- floor
def run_floor(jobs: int, groups: int, tiers: Tiers) -> dict[str, Any]:
    """Receive 10 and delete them in one request, until the queue is empty: what draining costs at the least."""
    w = _seed_world(tiers, job_list(jobs, groups))
    done = 0
    wall = time.perf_counter()
    _quiet_heap()
    try:
        with w.meter.section(STRATEGY):
            while done < jobs:
                messages = w.queue.receive(10, 30)
                if not messages:
                    w.loop.run_until(w.loop.now + 1)
                    continue
                failed = w.queue.delete([m.receipt for m in messages])
                done += len(messages) - len(failed)
    finally:
        gc.unfreeze()
    cpu = w.meter.close()
    requests = w.requests
    return {
        "jobs": jobs,
        "completed": done,
        "drained": True,
        "drain_s": None,
        "drain_projected": False,
        "ideal_s": _round(ideal(jobs, tiers).drain_s, 2),
        "quota_use": None,
        "violations": 0,
        "api_429s": 0,
        "api_calls": 0,
        "aws_requests": requests.total(),
        "aws_requests_per_job": round(requests.total() / jobs, 4),
        "aws_requests_by_action": requests.by_action(),
        "aws_requests_per_job_by_action": {a: round(n / jobs, 4) for a, n in requests.by_action().items()},
        "own_cpu_ms_per_job": round(1000 * cpu.get(STRATEGY, 0.0) / jobs, 4),
        "sim_cpu_ms_per_job": {k: round(1000 * v / jobs, 4) for k, v in sorted(cpu.items())},
        "reservation_writes": None,
        "reservation_writes_per_s": None,
        "wall_s": round(time.perf_counter() - wall, 1),
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def request_count_check(jobs: int = 300, tiers: Tiers | None = None, seed: int = 2) -> dict[str, Any]:
    """The same small drain (one job per group) on the counting twins and on moto through the real
    adapters (a boto3 `before-call` hook counts): requests by action side by side."""
    from contextlib import ExitStack

    from throttler_tools.bench.model import parse_tiers
    from throttler_tools.bench.moto import moto_aws, moto_backends

    tiers = tiers or parse_tiers("second=20 minute=600")
    spec = ThrottlerSpec(jobs, jobs, tiers, ApiLatency(), seed=seed)
    twins, _ = run_throttler(spec)
    with moto_aws() as frozen, ExitStack() as stack:
        backends, _holder = moto_backends(stack)
        quotas = {name: limit for name, _, limit in tiers}
        config = WorldConfig(
            seed=seed, quotas=quotas, default_quotas=tiers_text(tiers), api_tiers=[(float(w), n) for _, w, n in tiers]
        )
        world = BenchWorld(config, spec.api_latency, backends=backends, on_advance=lambda s: frozen.tick(s))
        on_moto, _ = run_throttler(spec, world)
    actions = sorted(set(twins["aws_requests_by_action"]) | set(on_moto["aws_requests_by_action"]))
    rows = {
        a: {"twins": twins["aws_requests_by_action"].get(a, 0), "moto": on_moto["aws_requests_by_action"].get(a, 0)}
        for a in actions
    }
    total_t, total_m = twins["aws_requests"], on_moto["aws_requests"]
    return {
        "jobs": jobs,
        "groups": jobs,
        "tiers": tiers_text(tiers),
        "by_action": rows,
        "total": {"twins": total_t, "moto": total_m},
        "relative_difference": round(abs(total_t - total_m) / max(1, total_m), 4),
        "moto_completed": on_moto["completed"],
        "moto_violations": on_moto["violations"],
    }
