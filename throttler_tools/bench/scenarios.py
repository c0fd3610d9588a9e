"""The benchmark's scenarios beyond the headline drain: a quiet stage's latency and idle cost, a slow API,
per-key quotas at scale, and learned limits against an API whose limit is hidden.
"""

from __future__ import annotations

import functools
import random
from collections import defaultdict
from typing import Any

from throttler_tools.bench import cost
from throttler_tools.bench.model import (
    SHIPPED_MAX_PARALLEL,
    ApiLatency,
    Tiers,
    jain,
    key_weight,
    parse_tiers,
    percentile,
    water_fill,
    zipf_backlog,
)
from throttler_tools.bench.stage import bench_job
from throttler_tools.bench.strategies import ThrottlerSpec, run_throttler, throttler_world

IDLE_TIERS = parse_tiers("second=20 minute=600")
SLOW_TIERS = parse_tiers("second=200")


# ---------------------------------------------------------------------------------------------- a quiet stage
def idle_latency(
    mode: str, jobs: int = 120, span_s: float = 1800.0, api_latency: ApiLatency | None = None, seed: int = 7
) -> dict[str, Any]:
    """Jobs enqueued one by one at random times on an idle stage: from enqueue to the API's arrival."""
    latency = api_latency or ApiLatency()
    spec = ThrottlerSpec(jobs, jobs, IDLE_TIERS, latency, seed=seed, latency_mode=mode, stop_at_s=span_s + 120)
    world = throttler_world(spec)
    rng = random.Random(seed)
    start = world.loop.now
    times = sorted(rng.uniform(30.0, span_s) for _ in range(jobs))
    for i, at in enumerate(times):
        body = bench_job(f"q{i}", 0)
        world.loop.at(start + at, functools.partial(world.enqueue, [(body, f"q{i}", f"idle-{i}")]))
    world.start_schedule()
    world.run_until(start + span_s + 120)
    arrivals = {c.key: c.at for c in world.api.calls if c.status == 200 and c.key is not None}
    waits = [arrivals[j] - world.enqueued_at[j] for j in world.enqueued_at if j in arrivals]
    return {
        "mode": mode,
        "jobs": jobs,
        "called": len(waits),
        "p50": _r(percentile(waits, 0.50), 3),
        "p99": _r(percentile(waits, 0.99), 3),
        "max": _r(max(waits) if waits else None, 3),
        "violations": world.api.violations,
        "_waits": waits,
    }


def idle_cost(mode: str, span_s: float = 1800.0) -> dict[str, Any]:
    """An empty stage for `span_s`, scaled to a month: what each latency mode costs when nothing happens."""
    spec = ThrottlerSpec(0, 1, IDLE_TIERS, ApiLatency(), latency_mode=mode, stop_at_s=span_s)
    world = throttler_world(spec)
    world.start_schedule()
    world.run_until(world.loop.now + span_s)
    billed = sum(r.billed_s for r in world.run_stats)
    open_runs = [r for r in world.runs if r.summary.ended_at == 0.0]
    billed += sum(world.loop.now - r.summary.started_at for r in open_runs if r.summary.started_at)
    requests = world.requests
    gb_s = billed * cost.configured_memory_mb("throttler") / 1024
    bill = cost.bill(
        sqs_chunks=requests.sqs_chunks, rru=requests.rru, wru=requests.wru, lambda_invocations=len(world.runs), gb_s=gb_s
    )
    month = cost.monthly(bill, span_s)
    return {
        "mode": mode,
        "measured_s": span_s,
        "requests_per_hour": {a: round(n * 3600 / span_s, 1) for a, n in requests.by_action().items()},
        "throttler_billed_s_per_hour": round(billed * 3600 / span_s, 1),
        "usd_per_month": month,
    }


# ---------------------------------------------------------------------------------------------- a slow API
def slow_api(
    median_ms: float = 250.0,
    tiers: Tiers = SLOW_TIERS,
    seconds: float = 60.0,
    depth: int = 1,
    max_parallel: int = SHIPPED_MAX_PARALLEL,
    seed: int = 3,
    jitter_ms: float = 0.25,
    margin_ms: float | None = None,
    client_ms: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A backlog at the finest tier's rate for `seconds`, over groups `depth` jobs deep, against an API with
    a median latency of `median_ms` and a long tail: the steady dispatch rate against the binding rate."""
    rate = min(limit / window for _, window, limit in tiers)
    jobs = int(rate * seconds) + int(rate * 3)
    groups = max(1, jobs // depth)
    latency = ApiLatency(median_ms=median_ms, jitter_ms=jitter_ms)
    quotas: dict[str, Any] = {name: limit for name, _, limit in tiers}
    if margin_ms is not None:
        quotas["margin_ms"] = margin_ms
    spec = ThrottlerSpec(
        jobs, groups, tiers, latency, seed=seed, max_parallel=max_parallel, quotas=quotas, client_ms=client_ms
    )
    figures, world = run_throttler(spec)
    start = world.config.start
    ok = sorted(c.at - start for c in world.api.calls if c.status == 200)
    steady = _steady_rate(ok)
    return {
        "api_latency_ms": median_ms,
        "api_latency": latency.describe(),
        "tiers": " ".join(f"{n}={limit}" for n, _, limit in tiers),
        "jobs": jobs,
        "groups": groups,
        "jobs_per_group": depth,
        "worker_max_parallel": max_parallel,
        "network_jitter_ms": jitter_ms,
        "margin_ms": margin_ms,
        "binding_rate_per_s": rate,
        "steady_rate_per_s": _r(steady, 2),
        "quota_use": _r(steady / rate if steady else None, 4),
        "drain_quota_use": figures["quota_use"],
        "violations": figures["violations"],
        "api_429s": figures["api_429s"],
        "order_violations": figures["order_violations"],
        "missed_slots": figures["missed_slots"],
        "late_skips": figures["late_skips"],
        "late_sends": figures["late_sends"],
        "aws_requests_per_job": figures["aws_requests_per_job"],
        "usd_per_million_jobs": figures["usd"].per_million(figures["completed"])["total"],
        "memory": figures["memory"],
        "_calls": ok,
    }


def _steady_rate(times: list[float], skip_s: float = 5.0) -> float | None:
    """Calls per second between `skip_s` after the first call and the last one (start-up left out)."""
    if len(times) < 10:
        return None
    a = times[0] + skip_s
    b = times[-1]
    n = sum(1 for t in times if a <= t <= b)
    return (n - 1) / (b - a) if b > a else None


# ---------------------------------------------------------------------------------------------- per-key quotas
KEYS_STAGE = parse_tiers("second=100")
KEYS_PER_KEY = (("second", 1, 25),)


def keys_scenario(
    keys: int,
    heaviest: int = 2000,
    seed: int = 5,
    api_latency: ApiLatency | None = None,
    jobs_per_group: int = 2,
    client_ms: dict[str, float] | None = None,
    least: int | None = None,
) -> dict[str, Any]:
    """A Zipf backlog over `keys` keys (heaviest / rank jobs each, at least `least`) with a stage tier and a
    per-key tier, some keys weighing 2 or 3; jobs enqueued shuffled (each group's order kept). The lightest
    tenth has one job each (the light keys whose wait is measured)."""
    backlog = [max(least or 1, jobs) for jobs in zipf_backlog(keys, heaviest)]
    for rank in range(max(1, keys - max(1, keys // 10)), keys):  # the lightest tenth: one job each
        backlog[rank] = 1
    names = [f"k{rank:05d}" for rank in range(1, keys + 1)]
    weights = {names[i]: key_weight(i + 1) for i in range(keys)}
    jobs: list[tuple[str, str, str]] = []
    queues = []
    for i, name in enumerate(names):
        groups = max(1, -(-backlog[i] // jobs_per_group))
        entries = [
            (bench_job(f"{name}-{j % groups}", j // groups, name), f"{name}-{j % groups}", f"{name}-{j:05d}")
            for j in range(backlog[i])
        ]
        queues.append(entries)
    rng = random.Random(seed)
    order = [i for i, q in enumerate(queues) for _ in q]
    rng.shuffle(order)
    cursor = [0] * keys
    for i in order:
        jobs.append(queues[i][cursor[i]])
        cursor[i] += 1
    quotas: dict[str, Any] = {n: limit for n, _, limit in KEYS_STAGE}
    quotas["per_key"] = {n: limit for n, _, limit in KEYS_PER_KEY}
    quotas["keys"] = {k: {"weight": w} for k, w in weights.items() if w != 1}
    spec = ThrottlerSpec(
        len(jobs),
        1,
        KEYS_STAGE,
        api_latency or ApiLatency(),
        seed=seed,
        quotas=quotas,
        key_tiers=[(float(w), limit) for _, w, limit in KEYS_PER_KEY],
        jobs_list=jobs,
        client_ms=client_ms,
    )
    figures, world = run_throttler(spec)
    start = world.config.start
    # Fairness: over the time it took to serve half the jobs, among the keys still backlogged then.
    ok = sorted((c.at, c.key) for c in world.api.calls if c.status == 200)
    job_key = {job_id: job_id.rsplit("-", 1)[0] for _, _, job_id in jobs}
    half_at = ok[len(jobs) // 2 - 1][0] if len(ok) >= len(jobs) // 2 else None
    served: dict[str, int] = defaultdict(int)
    first_ok: dict[str, float] = {}
    for at, job_id in ok:
        key = job_key.get(job_id or "", "")
        first_ok.setdefault(job_id or "", at)
        if half_at is not None and at <= half_at:
            served[key] += 1
    backlogged = [names[i] for i in range(keys) if half_at is not None and served[names[i]] < backlog[i]]
    stage_rate = min(limit / w for _, w, limit in KEYS_STAGE)
    key_rate = min(limit / w for _, w, limit in KEYS_PER_KEY)
    window = (half_at - start) if half_at is not None else None
    fairness = None
    detail: dict[str, Any] = {}
    if window and backlogged:
        capacity = sum(served[k] for k in backlogged)
        # Each key's fair share: weighted, at most its own tier's rate, and at most what it had to send.
        rank_of = {name: i for i, name in enumerate(names)}  # names.index per key was quadratic in the keys
        caps = [min(key_rate * window, float(backlog[rank_of[k]])) for k in backlogged]
        shares = water_fill(capacity, caps, [float(weights[k]) for k in backlogged])
        fairness = jain([served[k] / s for k, s in zip(backlogged, shares, strict=True) if s > 0])
        detail = {k: (served[k], round(s, 1), weights[k]) for k, s in zip(backlogged, shares, strict=True)}
    # Global use while every key's cap together exceeds the stage's: up to half the jobs. From the stage's
    # start (the first run's start-up weighs ~5% in 15 s), and steady: from 5 s after the first call, as the
    # slow-API scenario measures it (the figure the target uses).
    global_use = (len(jobs) // 2) / (window * stage_rate) if window else None
    steady = _steady_rate([at - start for at, _ in ok[: len(jobs) // 2]]) if half_at is not None else None
    single = {names[i] for i in range(keys) if backlog[i] == 1}
    light = [job_id for _, _, job_id in jobs if job_key[job_id] in single]
    waits = [first_ok[j] - start for j in light if j in first_ok]
    commits = world.requests.counts.get(("dynamodb", "TransactWriteItems"), 0)
    money = figures["usd"].per_million(figures["completed"])
    return {
        "keys": keys,
        "jobs": len(jobs),
        "heaviest_key_jobs": backlog[0],
        "tiers": " ".join(f"{n}={limit}" for n, _, limit in KEYS_STAGE),
        "per_key": " ".join(f"{n}={limit}" for n, _, limit in KEYS_PER_KEY),
        "weighted_keys": sum(1 for w in weights.values() if w != 1),
        "violations_stage": world.api.stage_violations,
        "violations_key": world.api.key_violations,
        "order_violations": world.api.order_violations,
        "drained": figures["drained"],
        "drain_s": figures["drain_s"],
        "global_quota_use": _r(global_use, 4),
        "global_quota_use_steady": _r(steady / stage_rate if steady else None, 4),
        "fairness_jain": _r(fairness, 4),
        "fairness_keys": len(backlogged),
        "fairness_window_s": _r(window, 1),
        "_fairness_detail": detail,
        "light_jobs": len(light),
        "light_wait_p50_s": _r(percentile(waits, 0.5), 2),
        "light_wait_p99_s": _r(percentile(waits, 0.99), 2),
        "reservation_writes": figures["reservation_writes"],
        "reservation_writes_per_s": figures["reservation_writes_per_s"],
        "key_transactions": commits,
        "aws_requests_per_job": figures["aws_requests_per_job"],
        "aws_requests_per_job_by_action": figures["aws_requests_per_job_by_action"],
        "dynamodb_rru_per_job": figures["dynamodb_rru_per_job"],
        "dynamodb_wru_per_job": figures["dynamodb_wru_per_job"],
        "usd_per_million_jobs": money["total"],
        "memory": figures["memory"],
        "wall_s": figures["wall_s"],
    }


# ---------------------------------------------------------------------------------------------- learned limits
def adaptive(
    hidden: int = 6, ceiling: int = 20, minutes: float = 5.0, halve_at_s: float | None = None, seed: int = 11
) -> dict[str, Any]:
    """`second=auto:CEILING` against an API whose real limit (`hidden` per second) the quota item does not
    state; optionally the API halves its limit at `halve_at_s`."""
    seconds = minutes * 60
    jobs = int(hidden * seconds * 1.2) + 100
    changes = [(0.0, [(1.0, hidden)])]
    if halve_at_s is not None:
        changes.append((halve_at_s, [(1.0, max(1, hidden // 2))]))
    spec = ThrottlerSpec(
        jobs,
        jobs // 2,
        parse_tiers(f"second={ceiling}"),
        ApiLatency(),
        seed=seed,
        quotas={"second": f"auto:{ceiling}"},
        api_tiers=[(1.0, hidden)],
        stop_at_s=seconds,
    )
    world = throttler_world(spec)
    start = world.config.start
    world.api.changes = [(start + at, tiers) for at, tiers in changes[1:]]
    learned: list[tuple[float, int]] = []

    def sample() -> None:  # the learned limit in force, as the latest run's pacer holds it
        run = next((r for r in reversed(world.runs) if r.pacer is not None), None)
        if run is not None and run.pacer is not None:
            limit = next((lim.limit for lim in run.pacer.stage.limits(world.loop.now) if lim.name == "second"), None)
            if limit is not None:
                learned.append((world.loop.now, limit))
        if world.loop.now < start + seconds:
            world.loop.at(world.loop.now + 1.0, sample)

    world.loop.at(start + 1.0, sample)
    figures, world = run_throttler(spec, world)
    calls = [(c.at - start, c.status) for c in world.api.calls]

    def window(a: float, b: float) -> dict[str, Any]:
        inside = [s for t, s in calls if a <= t < b]
        throttled = sum(1 for s in inside if s == 429)
        ok = len(inside) - throttled
        return {
            "from_s": a,
            "to_s": b,
            "calls": len(inside),
            "rate_per_s": round(ok / (b - a), 2),
            "share_429": round(throttled / len(inside), 4) if inside else None,
        }

    out: dict[str, Any] = {
        "hidden_limit_per_s": hidden,
        "tier": f"second=auto:{ceiling}",
        "after_2_min": window(110, 120),
        "last_minute_of_first_2": window(60, 120),
        "learned_at_120_s": _learned_at(learned, start + 120),
        "learned_history": [[round(t - start), v] for t, v in learned[::10]],
        "violations_are_429s": figures["api_429s"],
    }
    if halve_at_s is not None:
        out["halved_at_s"] = halve_at_s
        out["new_limit_per_s"] = max(1, hidden // 2)
        out["learned_60_s_after"] = _learned_at(learned, start + halve_at_s + 60)
        out["minute_after"] = window(halve_at_s, halve_at_s + 60)
        out["second_minute_after"] = window(halve_at_s + 60, halve_at_s + 120)
    return out


def _learned_at(history: list[tuple[float, int]], at: float) -> int | None:
    value = None
    for t, v in history:
        if t <= at:
            value = v
    return value


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
