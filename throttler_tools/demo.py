"""The demo: the whole pipeline on this machine against a fake API that enforces its quotas strictly.

It starts the local stack and a fake third-party API on 127.0.0.1 (sliding windows; a call over a stated
limit is a violation), writes the scenario's quota item, enqueues jobs across groups, shows live progress
and ends with a report and, optionally, a chart. Three scenarios:

- `tiers` (default): two tiers that both bind; a few jobs fail for good, one fails once, one is answered 429;
- `keys`: per-key quotas, a heavy tenant and four light ones, each within its own limit and the global one;
- `unknown-limit`: the API enforces a limit the quota item does not state (`second=auto:MAX`); the
  throttler learns it from the API's 429s.

Progress goes to stderr, so `--json` leaves stdout with one JSON line.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from throttler_tools.fakeapi import Call, FakeApi, FakeApiServer, max_in_window

MARGIN_MS = 50  # see LOCAL_MARGIN_MS in local.py: one process hosts everything here
TICK_S = 10.0  # the scheduler's tick: each run hands over to the next every 10 s
LOCAL_ENV = {"RETRY_BASE_S": "2", "DEFAULT_LATENCY": "low"}  # a retry 2 s after its failure; runs wait on the queue
PAUSE_429_S = 2  # the fake API's Retry-After for the job answered 429
TIMEOUT_S = 240.0
FAILING_STATUS = 400
HEAVY = "heavy"
LIGHTS = ("light-1", "light-2", "light-3", "light-4")
HIDDEN_LIMIT = 8  # calls per second the API allows in the unknown-limit scenario
AUTO_MAX = 40


# ---------------------------------------------------------------------------- the API
@dataclass
class DemoApi(FakeApi):
    """The fake API, plus what a scenario needs: limits per tenant (stated in the quota item: going over is a
    violation) and hidden limits (not stated: going over draws a 429, the API's word, not a violation)."""

    key_tiers: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # tenant -> (window_s, limit)
    hidden: list[tuple[float, int]] = field(default_factory=list)
    hidden_429s: int = 0
    key_violations: Counter[str] = field(default_factory=Counter)
    _key_windows: dict[tuple[str, float], list[float]] = field(default_factory=lambda: defaultdict(list))
    _hidden_windows: dict[float, list[float]] = field(default_factory=lambda: defaultdict(list))
    _tenant: threading.local = field(default_factory=threading.local)

    def handle(self, method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        query = parse_qs(urlsplit(url).query)
        tenants = query.get("tenant")
        self._tenant.value = tenants[0] if tenants else None
        return super().handle(method, url, headers)

    def _count_arrival(self, now: float, api_key: str | None, cost: int) -> tuple[bool, float]:  # under the API's lock
        over, wait_s = super()._count_arrival(now, api_key, cost)  # the stage's stated tiers: counts a violation
        tenant = getattr(self._tenant, "value", None)
        for window_s, limit in self.key_tiers.get(tenant or "", []):
            if _arrive(self._key_windows[(tenant or "", window_s)], now, window_s) > limit:
                self.key_violations[tenant or ""] += 1
                if not over:
                    self.violations += 1
                over = True
        hidden_over = False
        for window_s, limit in self.hidden:
            hidden_over = _arrive(self._hidden_windows[window_s], now, window_s) > limit or hidden_over
        if hidden_over and not over:
            self.hidden_429s += 1
            over = True
        return over, max(wait_s, 1.0) if over else wait_s  # the demo's API says "Retry-After: 1" at least

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)


def _arrive(arrivals: list[float], now: float, window_s: float) -> int:
    while arrivals and arrivals[0] <= now - window_s:
        arrivals.pop(0)
    arrivals.append(now)
    return len(arrivals)


# ---------------------------------------------------------------------------- the scenarios
@dataclass(frozen=True)
class PlannedJob:
    index: int
    group: str
    seq: int
    path: str
    job_id: str
    key: str | None = None

    @property
    def fails(self) -> bool:
        return self.path == f"/status/{FAILING_STATUS}"


@dataclass(frozen=True)
class Limit:
    name: str
    window_s: float
    limit: int


@dataclass
class Scenario:
    name: str
    title: str
    quota_item: dict[str, Any]
    api: DemoApi
    jobs: list[PlannedJob]
    groups: int
    tiers: list[Limit]  # the stage's limits the API enforces and the quota item states
    key_limits: dict[str, Limit] = field(default_factory=dict)  # per key: its finest stated tier
    weights: dict[str, int] = field(default_factory=dict)
    pause_asked_s: float = 0.0
    ideal_item: dict[str, Any] | None = None  # the quota an oracle would use (unknown-limit: the hidden one)

    @property
    def expected_reasons(self) -> Counter[str]:
        return Counter(f"http {FAILING_STATUS}" for j in self.jobs if j.fails)


def _spread(jobs: int, groups: int, run_id: str, special: dict[int, str], key: str | None = None,
            first_index: int = 0, group_prefix: str = "customer") -> list[PlannedJob]:
    """Jobs round-robin over the groups, each with its sequence number in its group."""
    width = len(str(groups))
    prefix = f"{key}-g" if key else f"{group_prefix}-"
    return [
        PlannedJob(first_index + i, f"{prefix}{i % groups + 1:0{width}d}", i // groups, special.get(i, "/ok"),
                   f"demo-{run_id}-{first_index + i:05d}", key)
        for i in range(jobs)
    ]


def _place(special: dict[int, str], jobs: int, index: int, path: str) -> None:
    index = max(0, min(index, jobs - 1))
    while index in special:
        index = (index + 1) % jobs
    special[index] = path


def tiers_scenario(jobs: int, groups: int, run_id: str) -> Scenario:
    """Two tiers that both bind: calls 100 ms apart (second=10), and any 10 s window holds at most 60, so
    bursts of about 6 s alternate with waits of about 4 s. A few jobs fail for good, one fails once, one is
    answered 429 with Retry-After."""
    special: dict[int, str] = {}
    _place(special, jobs, 2, "/flaky/1")  # 500 once, then 200: a retry
    _place(special, jobs, jobs // 3, f"/throttle/{PAUSE_429_S}")  # 429 with Retry-After once, then 200: a pause
    for fraction in (0.2, 0.5, 0.8) if jobs >= 30 else (0.5,):
        _place(special, jobs, int(jobs * fraction), f"/status/{FAILING_STATUS}")  # permanent failure: dead-lettered
    tiers = [Limit("second", 1, 10), Limit("10s", 10, 60)]
    item = {**{t.name: t.limit for t in tiers}, "margin_ms": MARGIN_MS}
    return Scenario("tiers", f"{jobs} jobs, two tiers that both bind", item,
                    DemoApi(tiers=[(t.window_s, t.limit) for t in tiers]), _spread(jobs, groups, run_id, special), groups,
                    tiers, pause_asked_s=PAUSE_429_S)


def keys_scenario(jobs: int, groups: int, run_id: str) -> Scenario:
    """Per-key quotas: the stage allows 12 calls a second, each key 2 (the per-key default), the heavy tenant 8
    with weight 3. The heavy tenant has most of the jobs; the light ones must not wait behind it."""
    heavy_jobs = max(1, jobs * 3 // 5)
    light_jobs = [(jobs - heavy_jobs) // len(LIGHTS) + (1 if i < (jobs - heavy_jobs) % len(LIGHTS) else 0)
                  for i in range(len(LIGHTS))]
    heavy_groups = max(1, groups - len(LIGHTS)) if groups > len(LIGHTS) else max(1, groups // 2)
    special: dict[int, str] = {}
    _place(special, heavy_jobs, heavy_jobs // 2, f"/status/{FAILING_STATUS}")
    planned = _spread(heavy_jobs, heavy_groups, run_id, special, HEAVY)
    for i, (name, n) in enumerate(zip(LIGHTS, light_jobs, strict=True)):
        special = {}
        if i == 0 and n > 2:
            _place(special, n, 1, "/flaky/1")
        planned += _spread(n, 1, run_id, special, name, first_index=len(planned))
    item = {"second": 12, "margin_ms": MARGIN_MS, "per_key": {"second": 2}, "keys": {HEAVY: {"second": 8, "weight": 3}}}
    key_limits = {HEAVY: Limit("second", 1, 8), **{k: Limit("second", 1, 2) for k in LIGHTS}}
    api = DemoApi(tiers=[(1, 12)], key_tiers={k: [(lim.window_s, lim.limit)] for k, lim in key_limits.items()})
    return Scenario("keys", f"{jobs} jobs, a heavy tenant and four light ones", item, api, planned,
                    heavy_groups + len(LIGHTS), [Limit("second", 1, 12)], key_limits,
                    {HEAVY: 3, **dict.fromkeys(LIGHTS, 1)})


def unknown_limit_scenario(jobs: int, groups: int, run_id: str) -> Scenario:
    """The API allows HIDDEN_LIMIT calls a second and says so only with 429s; the quota item says
    second=auto:AUTO_MAX, so the throttler starts at AUTO_MAX/4 and learns the rest."""
    item = {"second": f"auto:{AUTO_MAX}", "margin_ms": MARGIN_MS}
    api = DemoApi(tiers=[], hidden=[(1, HIDDEN_LIMIT)])
    return Scenario("unknown-limit", f"{jobs} jobs, a limit the quotas do not state", item, api,
                    _spread(jobs, groups, run_id, {}), groups, [Limit("second", 1, AUTO_MAX)],
                    ideal_item={"second": HIDDEN_LIMIT, "margin_ms": MARGIN_MS})


SCENARIOS = {"tiers": tiers_scenario, "keys": keys_scenario, "unknown-limit": unknown_limit_scenario}


def ideal_seconds(item: dict[str, Any], call_keys: list[str | None]) -> float:
    """From the first call to the last, at best, for these calls (one key each) under these quotas (the
    pacer's own answer from a cold start): each call goes at the earliest slot any key with calls left has."""
    from throttler.core.pacing import Meter, Pacer
    from throttler.core.quotas import parse_quota_item

    if len(call_keys) < 2:
        return 0.0
    meters: dict[str, Meter] = {}
    pacer = Pacer(parse_quota_item(item), Meter(), lambda key: meters.setdefault(key, Meter()))
    left = Counter(call_keys)
    t = first = 0.0
    for n in range(len(call_keys)):
        options = [(slot, key) for key in left if left[key] and (slot := pacer.next_slot(t, key)) is not None]
        if not options:
            return float("inf")
        slot, key = min(options, key=lambda o: o[0])
        pacer.take(slot, key)
        left[key] -= 1
        first = slot if n == 0 else first
        t = max(t, slot)
    return t - first


# ---------------------------------------------------------------------------- what the API saw
def in_window(calls: list[Call], now: float, window_s: float) -> int:
    return sum(1 for c in calls if now - window_s < c.at <= now)


def verify_order(calls: list[Call], plan: list[PlannedJob]) -> tuple[bool, list[str]]:
    """Per group: calls arrive in sequence order (a retry repeats a number), every job that should succeed did."""
    problems = []
    seen: dict[str, list[int]] = defaultdict(list)
    succeeded: dict[str, list[int]] = defaultdict(list)
    for call in calls:
        if call.group is None or call.seq is None:
            continue
        seen[call.group].append(call.seq)
        if 200 <= call.status < 300:
            succeeded[call.group].append(call.seq)
    expected: dict[str, list[int]] = defaultdict(list)
    for job in plan:
        if not job.fails:
            expected[job.group].append(job.seq)
    for group in sorted({j.group for j in plan}):
        if seen[group] != sorted(seen[group]):
            problems.append(f"{group}: calls out of order {seen[group]}")
        if succeeded[group] != expected[group]:
            problems.append(f"{group}: succeeded {succeeded[group]}, expected {expected[group]}")
    return not problems, problems


def key_of(plan: list[PlannedJob]) -> dict[str, str | None]:
    return {j.group: j.key for j in plan}


@dataclass
class LearnedTrace:
    """The learned limit of the stage's `second` tier, read from the state table while the demo runs."""

    points: list[tuple[float, int]] = field(default_factory=list)

    def sample(self, store: Any, tier: str = "second") -> None:
        from throttler.core.pacing import Meter

        meter = Meter.from_json(store.load_usage().stage_meter)
        learned = meter.learned.get(tier)
        if learned is not None:
            self.points.append((time.time(), learned.limit))


def build_report(scenario: Scenario, dead_letters: list[Any], *, complete: bool, wall_s: float,
                 learned: LearnedTrace | None = None) -> dict[str, Any]:
    api, plan = scenario.api, scenario.jobs
    calls = sorted(api.snapshot(), key=lambda c: c.at)
    by_status = Counter(c.status for c in calls)
    total_429 = by_status.get(429, 0)
    ordered, order_problems = verify_order(calls, plan)
    elapsed_s = calls[-1].at - calls[0].at if len(calls) > 1 else 0.0
    keys = key_of(plan)
    ideal_s = ideal_seconds(scenario.ideal_item or scenario.quota_item, [keys.get(c.group or "") for c in calls])
    reasons = Counter(d.error_reason for d in dead_letters)
    successes = api.successes_by_key()
    bound_s = ideal_s + scenario.pause_asked_s
    report: dict[str, Any] = {
        "scenario": scenario.name,
        "jobs": len(plan),
        "groups": scenario.groups,
        "quotas": scenario.quota_item,
        "complete": complete,
        "calls": len(calls),
        "succeeded": len(successes),
        "calls_by_status": {str(k): v for k, v in sorted(by_status.items())},
        "api_429s": total_429 - api.violations,
        "violation_429s": api.violations,
        "quota_violations": api.violations,
        "order_violations": api.order_violations,
        "ordering_verified": ordered and api.order_violations == 0,
        "order_problems": order_problems[:5],
        "duplicate_calls": sum(n - 1 for n in successes.values() if n > 1),
        "retried_calls": sum(v for k, v in by_status.items() if k >= 500),
        "tiers": {
            t.name: {"limit": t.limit, "window_s": t.window_s, "max_calls_in_any_window": api.max_in_window(t.window_s)}
            for t in scenario.tiers
        },
        "dlq": {
            "count": len(dead_letters),
            "reasons": dict(reasons),
            "expected_reasons": dict(scenario.expected_reasons),
            "as_expected": reasons == scenario.expected_reasons,
            "attempts": sorted({d.attempts for d in dead_letters if d.attempts is not None}),
        },
        "elapsed_s": round(elapsed_s, 2),
        "ideal_s": round(ideal_s, 2),
        "pause_asked_by_api_s": scenario.pause_asked_s,
        # Against the best the quotas allow plus any pause the API asked for (an upper bound: the pause may
        # fall within a wait the quotas impose anyway, and then it costs nothing).
        "efficiency": round(min(1.0, bound_s / elapsed_s), 3) if elapsed_s > 0 else None,
        "within_ideal": elapsed_s <= bound_s + 0.05,
        "wall_s": round(wall_s, 1),
    }
    if scenario.key_limits:
        report["keys"] = key_report(scenario, calls)
    if learned is not None:
        report["learned"] = learned_report(scenario, calls, learned)
    keys_ok = all(k["max_calls_in_any_window"] <= k["limit"] for k in report.get("keys", {}).values())
    report["ok"] = bool(
        complete
        and report["quota_violations"] == 0
        and keys_ok
        and report["ordering_verified"]
        and report["duplicate_calls"] == 0
        and report["dlq"]["as_expected"]
    )
    return report


def key_report(scenario: Scenario, calls: list[Call]) -> dict[str, dict[str, Any]]:
    keys = key_of(scenario.jobs)
    t0 = calls[0].at if calls else 0.0
    out: dict[str, dict[str, Any]] = {}
    for key, limit in scenario.key_limits.items():
        mine = [c for c in calls if keys.get(c.group or "") == key]
        out[key] = {
            "jobs": sum(1 for j in scenario.jobs if j.key == key),
            "calls": len(mine),
            "limit": limit.limit,
            "window_s": limit.window_s,
            "weight": scenario.weights.get(key, 1),
            "max_calls_in_any_window": max_in_window([c.at for c in mine], limit.window_s) if mine else 0,
            "violations": scenario.api.key_violations.get(key, 0),
            "first_call_s": round(mine[0].at - t0, 2) if mine else None,
            "last_call_s": round(mine[-1].at - t0, 2) if mine else None,
        }
    return out


def learned_report(scenario: Scenario, calls: list[Call], learned: LearnedTrace) -> dict[str, Any]:
    t0 = calls[0].at if calls else time.time()
    end = calls[-1].at if calls else t0
    tail_from = t0 + (end - t0) / 2
    tail = [c for c in calls if c.at >= tail_from]
    settled = [c for c in calls if c.at >= end - 10.0]
    span_s = max(1e-9, min(10.0, end - t0))
    return {
        "max": AUTO_MAX,
        "true_limit": HIDDEN_LIMIT,
        "start": max(1, AUTO_MAX // 4),
        "final": learned.points[-1][1] if learned.points else None,
        "history": [[round(t - t0, 2), v] for t, v in learned.points if not calls or t >= t0 - 1][::5][-60:],
        "hidden_429s": scenario.api.hidden_429s,
        "share_429_second_half": round(sum(1 for c in tail if c.status == 429) / len(tail), 3) if tail else None,
        "rate_last_10s": round(sum(1 for c in settled if 200 <= c.status < 300) / span_s, 2),
    }


# ---------------------------------------------------------------------------- live progress
def progress_view(scenario: Scenario, depth: dict[str, int], started: float, learned: LearnedTrace | None) -> Any:
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    api, plan = scenario.api, scenario.jobs
    now = time.time()
    calls = api.snapshot()
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_column()
    for tier in scenario.tiers:
        used = in_window(calls, now, tier.window_s)
        what = f"auto, at most {tier.limit}" if scenario.name == "unknown-limit" else f"limit {tier.limit}"
        table.add_row(f"{tier.name} tier", ProgressBar(total=tier.limit, completed=min(used, tier.limit), width=30),
                      f"{used:>3} calls in the last {tier.window_s:g} s ({what})")
    keys = key_of(plan)
    for key, limit in scenario.key_limits.items():
        used = sum(1 for c in calls if keys.get(c.group or "") == key and now - limit.window_s < c.at <= now)
        done = sum(1 for c in calls if keys.get(c.group or "") == key and 200 <= c.status < 300)
        total = sum(1 for j in plan if j.key == key)
        table.add_row(f"  key {key}", ProgressBar(total=limit.limit, completed=min(used, limit.limit), width=30),
                      f"{used:>3}/{limit.limit} in the last {limit.window_s:g} s; {done}/{total} jobs done")
    if learned is not None:
        value = learned.points[-1][1] if learned.points else max(1, AUTO_MAX // 4)
        table.add_row("learned limit", ProgressBar(total=AUTO_MAX, completed=value, width=30),
                      f"{value}/s (the API's true limit: {HIDDEN_LIMIT}/s, never above {AUTO_MAX})")
    resolved = len(api.successes_by_key()) + depth.get("dlq", 0)
    table.add_row("jobs", ProgressBar(total=len(plan), completed=min(resolved, len(plan)), width=30),
                  f"{resolved}/{len(plan)} done (succeeded or dead-lettered)")
    table.add_row("queue", "", f"{depth.get('waiting', 0)} waiting, {depth.get('in_flight', 0)} in flight, "
                  f"{depth.get('dlq', 0)} in the DLQ")
    statuses = Counter(c.status for c in calls)
    api_line = (f"{plural(len(calls), 'call')}: {statuses.get(200, 0)} ok, {statuses.get(429, 0)} x 429, "
                f"{sum(v for k, v in statuses.items() if k >= 500)} x 5xx, {statuses.get(FAILING_STATUS, 0)} x {FAILING_STATUS}")
    table.add_row("API", "", api_line)
    violations = Text(f"{plural(api.violations, 'quota violation')}, {plural(api.order_violations, 'ordering error')}")
    violations.stylize("bold red" if api.violations or api.order_violations else "green")
    table.add_row("checks", "", violations)
    title = Text(f"throttler demo ({scenario.name}): {scenario.title}, {time.monotonic() - started:.0f} s", style="bold cyan")
    return Group(title, table)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def queue_depths(stack: Any) -> dict[str, int]:
    sqs = stack.client("sqs")
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"]
    jobs = sqs.get_queue_attributes(QueueUrl=stack.env["JOBS_QUEUE_URL"], AttributeNames=names)["Attributes"]
    dlq = sqs.get_queue_attributes(QueueUrl=stack.env["DLQ_URL"], AttributeNames=names)["Attributes"]
    return {
        "waiting": int(jobs[names[0]]) + int(jobs[names[2]]),
        "in_flight": int(jobs[names[1]]),
        "dlq": sum(int(dlq[n]) for n in names),
    }


# ---------------------------------------------------------------------------- the run
def run(scenario: Scenario, show_progress: bool = True) -> tuple[dict[str, Any], LearnedTrace | None]:
    from rich.console import Console
    from rich.live import Live

    from throttler.queue import SqsJobQueue
    from throttler.queue.dead_letters import DeadLetters
    from throttler.store import DynamoStateStore
    from throttler_tools.local import DEFAULT_PORT, LocalStack, logs_to_stderr, port_is_free

    started = time.monotonic()
    console = Console(stderr=True)
    server = FakeApiServer(scenario.api).start()
    stack = LocalStack(DEFAULT_PORT if port_is_free(DEFAULT_PORT) else 0, TICK_S, env=LOCAL_ENV)
    learned = LearnedTrace() if scenario.name == "unknown-limit" else None
    complete = False
    dead_letters: list[Any] = []
    with logs_to_stderr("ERROR"):  # the runs' own lines would break the live view
        try:
            stack.start(schedule=False)
            console.print(f"local stack at {stack.endpoint}, fake API at {server.url}, quotas {json.dumps(scenario.quota_item)}")
            store = DynamoStateStore(stack.client("dynamodb"), stack.env["STATE_TABLE"])
            store.put_quotas(scenario.quota_item)
            # Straight onto the queue, as any producer may (the envelope's `key` is not in the Python client yet).
            SqsJobQueue(stack.client("sqs"), stack.env["JOBS_QUEUE_URL"], "").send(
                [(_body(job, server.url), job.group, job.job_id) for job in scenario.jobs])
            stack.start_scheduler()
            depth = queue_depths(stack)
            with Live(progress_view(scenario, depth, started, learned), console=console, refresh_per_second=4,
                      transient=False) as live:
                while time.monotonic() - started < TIMEOUT_S:
                    time.sleep(0.5)
                    depth = queue_depths(stack)
                    if learned is not None:
                        learned.sample(store)
                    if show_progress:
                        live.update(progress_view(scenario, depth, started, learned))
                    if depth["waiting"] + depth["in_flight"] == 0:
                        complete = True
                        break
                live.update(progress_view(scenario, depth, started, learned))
            dead_letters = DeadLetters(stack.client("sqs"), stack.env["DLQ_URL"], stack.env["JOBS_QUEUE_URL"]).peek(1000)
        finally:
            stack.stop()
            server.stop()
    report = build_report(scenario, dead_letters, complete=complete, wall_s=time.monotonic() - started, learned=learned)
    return report, learned


def _body(job: PlannedJob, api_url: str) -> str:
    query = f"group={job.group}&seq={job.seq}" + (f"&tenant={job.key}" if job.key else "")
    envelope: dict[str, Any] = {
        "task": "http",
        "id": job.job_id,
        "payload": {"method": "POST", "url": f"{api_url}{job.path}?{query}", "json": {"n": job.index}},
    }
    if job.key is not None:
        envelope["key"] = job.key
    return json.dumps(envelope, separators=(",", ":"))


# ---------------------------------------------------------------------------- the report
def time_sentence(report: dict[str, Any]) -> str:
    elapsed, ideal, pause = report["elapsed_s"], report["ideal_s"], report["pause_asked_by_api_s"]
    best = f"at best the quotas allow {ideal:.1f} s"
    if pause:
        best += f" ({ideal + pause:.1f} s if the {pause:g} s pause the API asked for adds to it)"
    if report["within_ideal"]:
        verdict = "as fast as the quotas allow"
        if pause and elapsed > ideal + 0.05:
            verdict += " (the pause fell within a wait the quotas imposed anyway)"
    else:
        verdict = f"{report['efficiency']:.0%} of that speed"
    return f"{elapsed:.1f} s from first to last call; {best}: {verdict}; wall clock {report['wall_s']:.0f} s"


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"throttler demo report ({report['scenario']})", show_header=False, title_style="bold")
    table.add_column(style="bold")
    table.add_column()

    def mark(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[bold red]NO[/bold red]"

    table.add_row("jobs", f"{plural(report['jobs'], 'job')} across {plural(report['groups'], 'group')}; "
                  f"all resolved: {mark(report['complete'])}")
    retried = f", {plural(report['retried_calls'], 'call')} retried after a 5xx" if report["retried_calls"] else ""
    table.add_row("API calls", f"{plural(report['calls'], 'call')} ({plural(report['succeeded'], 'job')} succeeded{retried})")
    learned = report.get("learned")
    for name, tier in report["tiers"].items():
        ok = tier["max_calls_in_any_window"] <= tier["limit"]
        what = f"auto, at most {tier['limit']}" if learned else f"limit {tier['limit']}"
        table.add_row(f"{name} tier", f"at most {plural(tier['max_calls_in_any_window'], 'call')} in any "
                      f"{tier['window_s']:g} s window, {what}: {mark(ok)}")
    for key, k in report.get("keys", {}).items():
        ok = k["max_calls_in_any_window"] <= k["limit"]
        table.add_row(f"key {key}", f"{plural(k['calls'], 'call')} (weight {k['weight']}), at most "
                      f"{k['max_calls_in_any_window']} in any {k['window_s']:g} s window, its limit {k['limit']}: {mark(ok)}; "
                      f"calls from {k['first_call_s']} s to {k['last_call_s']} s")
    if learned:
        table.add_row("learned limit", f"{learned['final']}/s at the end (started at {learned['start']}/s, at most "
                      f"{learned['max']}/s; the API's hidden limit: {learned['true_limit']}/s); "
                      f"{learned['rate_last_10s']:.1f} calls/s over the last 10 s")
        share = learned["share_429_second_half"]
        table.add_row("429s", f"{plural(learned['hidden_429s'], '429')} from the hidden limit while learning "
                      f"({share:.1%} of the calls in the second half)" if share is not None else "none")
    else:
        table.add_row("429s", f"{report['api_429s']} asked for by the API (Retry-After honoured), "
                      f"{report['violation_429s']} for exceeding a quota")
    table.add_row("quota violations", f"{report['quota_violations']} {mark(report['quota_violations'] == 0)}")
    table.add_row("ordering", f"per-group order kept, every job once: "
                  f"{mark(report['ordering_verified'] and report['duplicate_calls'] == 0)}")
    reasons = ", ".join(f"{n} x {r!r}" for r, n in report["dlq"]["reasons"].items()) or "none"
    table.add_row("dead letters", f"{report['dlq']['count']}: {reasons}; as expected: {mark(report['dlq']['as_expected'])}")
    table.add_row("time", time_sentence(report))
    console.print(table)
    console.print("[bold green]OK[/bold green]: the API never saw more calls than the quotas allow"
                  if report["ok"] else "[bold red]FAILED[/bold red]")


def main(jobs: int = 200, groups: int = 8, as_json: bool = False, plot: str | None = None, scenario: str = "tiers") -> int:
    """Run the demo; returns the exit code (0 when the API saw no violation and every check passed)."""
    from throttler_tools.demoplot import plot_scenario

    built = SCENARIOS[scenario](jobs, groups, uuid.uuid4().hex[:8])
    report, learned = run(built)
    if plot:
        plot_scenario(built, report, learned, plot)
        report["plot"] = plot
    if as_json:
        sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
        sys.stdout.flush()
    else:
        print_report(report)
        if plot:
            print(f"chart written to {plot}")
    return 0 if report["ok"] else 1
