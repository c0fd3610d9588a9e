"""The demo: the whole pipeline on this machine against a fake API that enforces its quotas strictly.

It starts the local stack and a fake third-party API on 127.0.0.1 (sliding windows, every call over a
tier counted as a violation), sets two tiers that both bind, enqueues jobs across groups (a few fail
for good, one fails once, one is answered 429), shows live progress and ends with a report and,
optionally, a chart. Progress goes to stderr, so `--json` leaves stdout with one JSON line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from throttler_tools.fakeapi import Call, FakeApi, FakeApiServer

logger = logging.getLogger(__name__)

# Two tiers that both bind: calls are spaced 100 ms apart (second=10), and a 10-second window lets 60
# through, so the demo alternates ~6 s bursts with ~4 s waits.
TIERS = {"second": 10, "10s": 60}
WINDOWS_S = {"second": 1, "10s": 10}
# Each window is widened by this much against the jitter between a call's reserved send time and its
# arrival at the API. Here everything shares one Python process: on two cores arrivals came up to ~20 ms
# late (see SWITCH_INTERVAL_S in throttler/local.py), so 50 ms leaves more than twice that.
MARGIN_MS = 50
TICK_S = 5.0  # the scheduler's tick: short, so a job waiting for its retry is picked up quickly
LOCAL_ENV = {"RETRY_BASE_S": "2"}  # the flaky job's retry comes 2 s after its failure
PAUSE_429_S = 2  # the fake API's Retry-After for the job answered 429
TIMEOUT_S = 170.0
FAILING_STATUS = 400


@dataclass(frozen=True)
class PlannedJob:
    index: int
    group: str
    seq: int
    path: str
    job_id: str

    @property
    def fails(self) -> bool:
        return self.path == f"/status/{FAILING_STATUS}"


def plan_jobs(jobs: int, groups: int, run_id: str) -> list[PlannedJob]:
    """Jobs round-robin over the groups, each with its sequence number in its group; a few special ones."""
    width = len(str(groups))
    special: dict[int, str] = {}

    def place(index: int, path: str) -> None:
        while index in special:
            index = (index + 1) % jobs
        special[index] = path

    place(min(2, jobs - 1), "/flaky/1")  # 500 once, then 200: a retry
    place(jobs // 3, f"/throttle/{PAUSE_429_S}")  # 429 with Retry-After once, then 200: a pause
    for fraction in (0.2, 0.5, 0.8) if jobs >= 30 else (0.5,):
        place(int(jobs * fraction), f"/status/{FAILING_STATUS}")  # permanent failure: dead-lettered
    return [
        PlannedJob(i, f"customer-{i % groups + 1:0{width}d}", i // groups, special.get(i, "/ok"), f"demo-{run_id}-{i:05d}")
        for i in range(jobs)
    ]


def quota_item() -> dict[str, Any]:
    return {**TIERS, "margin_ms": MARGIN_MS}


def ideal_seconds(calls: int) -> float:
    """How long `calls` calls take at best under the demo's quotas, from a cold start (the pacer's own answer)."""
    from throttler.core.pacing import Pacer, Usage
    from throttler.core.quotas import parse_quota_item

    if calls < 2:
        return 0.0
    pacer = Pacer(parse_quota_item(quota_item()), Usage())
    first = t = 0.0
    for n in range(calls):
        slot = pacer.next_slot(t)
        assert slot is not None
        pacer.take(slot)
        first, t = (slot if n == 0 else first), slot
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


def build_report(
    api: FakeApi,
    plan: list[PlannedJob],
    dead_letters: list[Any],
    *,
    groups: int,
    complete: bool,
    wall_s: float,
) -> dict[str, Any]:
    calls = sorted(api.calls, key=lambda c: c.at)
    by_status = Counter(c.status for c in calls)
    total_429 = by_status.get(429, 0)
    ordered, order_problems = verify_order(calls, plan)
    elapsed_s = calls[-1].at - calls[0].at if len(calls) > 1 else 0.0
    ideal_s = ideal_seconds(len(calls))
    reasons = Counter(d.error_reason for d in dead_letters)
    expected_reasons = Counter(f"http {FAILING_STATUS}" for j in plan if j.fails)
    successes = api.successes_by_key()
    report: dict[str, Any] = {
        "jobs": len(plan),
        "groups": groups,
        "quotas": quota_item(),
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
            name: {
                "limit": limit,
                "window_s": WINDOWS_S[name],
                "max_calls_in_any_window": api.max_in_window(WINDOWS_S[name]),
            }
            for name, limit in TIERS.items()
        },
        "dlq": {
            "count": len(dead_letters),
            "reasons": dict(reasons),
            "expected_reasons": dict(expected_reasons),
            "as_expected": reasons == expected_reasons,
        },
        "elapsed_s": round(elapsed_s, 2),
        "ideal_s": round(ideal_s, 2),
        "pause_asked_by_api_s": PAUSE_429_S,
        # Against the best the quotas allow plus the pause the API asked for (which no scheduler may skip).
        "efficiency": round(min(1.0, (ideal_s + PAUSE_429_S) / elapsed_s), 3) if elapsed_s > 0 else None,
        "wall_s": round(wall_s, 1),
    }
    report["ok"] = bool(
        complete
        and report["quota_violations"] == 0
        and report["ordering_verified"]
        and report["duplicate_calls"] == 0
        and report["dlq"]["as_expected"]
    )
    return report


# ---------------------------------------------------------------------------- live progress
def progress_view(api: FakeApi, plan: list[PlannedJob], depth: dict[str, int], started: float) -> Any:
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    now = time.time()
    with api._lock:  # a consistent copy while the API's threads append
        calls = list(api.calls)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_column()
    for name, limit in TIERS.items():
        used = in_window(calls, now, WINDOWS_S[name])
        table.add_row(
            f"{name} tier",
            ProgressBar(total=limit, completed=min(used, limit), width=30),
            f"{used:>3}/{limit} calls in the last {WINDOWS_S[name]} s",
        )
    resolved = len(api.successes_by_key()) + depth.get("dlq", 0)
    table.add_row(
        "jobs",
        ProgressBar(total=len(plan), completed=resolved, width=30),
        f"{resolved}/{len(plan)} done (succeeded or dead-lettered)",
    )
    table.add_row(
        "queue",
        "",
        f"{depth.get('waiting', 0)} waiting, {depth.get('in_flight', 0)} in flight, {depth.get('dlq', 0)} in the DLQ",
    )
    statuses = Counter(c.status for c in calls)
    api_line = f"{len(calls)} calls: {statuses.get(200, 0)} ok, {statuses.get(429, 0)} x 429, " + (
        f"{sum(v for k, v in statuses.items() if k >= 500)} x 5xx, {statuses.get(FAILING_STATUS, 0)} x {FAILING_STATUS}"
    )
    table.add_row("API", "", api_line)
    violations = Text(f"{api.violations} quota violations, {api.order_violations} ordering errors")
    violations.stylize("bold red" if api.violations or api.order_violations else "green")
    table.add_row("checks", "", violations)
    title = Text(f"throttler demo: {len(plan)} jobs, {time.monotonic() - started:.0f} s", style="bold cyan")
    return Group(title, table)


def queue_depths(stack: Any) -> dict[str, int]:
    sqs = stack.client("sqs")
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    jobs = sqs.get_queue_attributes(QueueUrl=stack.env["JOBS_QUEUE_URL"], AttributeNames=names)["Attributes"]
    dlq = sqs.get_queue_attributes(QueueUrl=stack.env["DLQ_URL"], AttributeNames=names)["Attributes"]
    return {
        "waiting": int(jobs[names[0]]) + int(jobs[names[2]]),
        "in_flight": int(jobs[names[1]]),
        "dlq": sum(int(dlq[n]) for n in names),
    }


# ---------------------------------------------------------------------------- the run
def run(jobs: int, groups: int, show_progress: bool = True) -> tuple[dict[str, Any], FakeApi]:
    from rich.console import Console
    from rich.live import Live

    from throttler.client import Producer
    from throttler.queue.dead_letters import DeadLetters
    from throttler_tools.local import DEFAULT_PORT, LocalStack, logs_to_stderr, port_is_free
    from throttler.store import DynamoStateStore

    started = time.monotonic()
    console = Console(stderr=True)
    api = FakeApi(tiers=[(WINDOWS_S[name], limit) for name, limit in TIERS.items()])
    server = FakeApiServer(api).start()
    stack = LocalStack(DEFAULT_PORT if port_is_free(DEFAULT_PORT) else 0, TICK_S, env=LOCAL_ENV)
    plan = plan_jobs(jobs, groups, uuid.uuid4().hex[:8])
    complete = False
    dead_letters: list[Any] = []
    with logs_to_stderr("ERROR"):  # stop() lets the last run finish: its logs stay quiet too
        try:
            stack.start(schedule=False)
            console.print(f"local stack at {stack.endpoint}, fake API at {server.url}, quotas {quota_item()}")
            DynamoStateStore(stack.client("dynamodb"), stack.env["STATE_TABLE"]).put_quotas(quota_item())
            producer = Producer(stack.client("sqs"), stack.env["JOBS_QUEUE_URL"], stack.env["ALLOWED_HOSTS"].split(","),
                                stage="local")
            producer.send_many(
                {
                    "task": "http",
                    "group": job.group,
                    "id": job.job_id,
                    "payload": {
                        "method": "POST",
                        "url": f"{server.url}{job.path}?group={job.group}&seq={job.seq}",
                        "json": {"n": job.index},
                    },
                }
                for job in plan
            )
            stack.start_scheduler()
            depth = queue_depths(stack)
            with Live(progress_view(api, plan, depth, started), console=console, refresh_per_second=4, transient=False) as live:
                while time.monotonic() - started < TIMEOUT_S:
                    time.sleep(0.5)
                    depth = queue_depths(stack)
                    if show_progress:
                        live.update(progress_view(api, plan, depth, started))
                    if depth["waiting"] + depth["in_flight"] == 0:
                        complete = True
                        break
                live.update(progress_view(api, plan, depth, started))
            dead_letters = DeadLetters(stack.client("sqs"), stack.env["DLQ_URL"], stack.env["JOBS_QUEUE_URL"]).peek(1000)
        finally:
            stack.stop()
            server.stop()
    report = build_report(api, plan, dead_letters, groups=groups, complete=complete, wall_s=time.monotonic() - started)
    return report, api


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="throttler demo report", show_header=False, title_style="bold")
    table.add_column(style="bold")
    table.add_column()

    def mark(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[bold red]NO[/bold red]"

    table.add_row("jobs", f"{report['jobs']} across {report['groups']} groups; all resolved: {mark(report['complete'])}")
    table.add_row(
        "API calls",
        f"{report['calls']} ({report['succeeded']} jobs succeeded, {report['retried_calls']} retried after a 5xx)",
    )
    for name, tier in report["tiers"].items():
        ok = tier["max_calls_in_any_window"] <= tier["limit"]
        table.add_row(
            f"{name} tier",
            f"at most {tier['max_calls_in_any_window']} calls in any {tier['window_s']} s window, "
            f"limit {tier['limit']}: {mark(ok)}",
        )
    table.add_row(
        "429s",
        f"{report['api_429s']} asked for by the API (Retry-After honoured), {report['violation_429s']} for exceeding a quota",
    )
    table.add_row("quota violations", f"{report['quota_violations']} {mark(report['quota_violations'] == 0)}")
    table.add_row(
        "ordering",
        f"per-group order kept, every job once: {mark(report['ordering_verified'] and report['duplicate_calls'] == 0)}",
    )
    reasons = ", ".join(f"{n} x {r!r}" for r, n in report["dlq"]["reasons"].items()) or "none"
    table.add_row("dead letters", f"{report['dlq']['count']}: {reasons}; as expected: {mark(report['dlq']['as_expected'])}")
    table.add_row(
        "time",
        f"{report['elapsed_s']:.1f} s from first to last call; at best the quotas allow {report['ideal_s']:.1f} s, "
        f"{report['ideal_s'] + report['pause_asked_by_api_s']:.1f} s with the {report['pause_asked_by_api_s']} s "
        f"pause the API asked for: {report['efficiency']:.0%} of the ideal; wall clock {report['wall_s']:.0f} s",
    )
    console.print(table)
    console.print(
        "[bold green]OK[/bold green]: the API never saw more calls than its quotas allow"
        if report["ok"]
        else "[bold red]FAILED[/bold red]"
    )


def plot_calls(api: FakeApi, path: str) -> None:
    """Calls per second against the per-second limit, and the sliding 10-second count against its limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = sorted(api.calls, key=lambda c: c.at)
    if not calls:
        raise ValueError("no calls to plot")
    t0 = calls[0].at
    seconds = int(calls[-1].at - t0) + 1
    kinds = {
        "2xx": lambda s: 200 <= s < 300,
        "429": lambda s: s == 429,
        "other errors": lambda s: not (200 <= s < 300) and s != 429,
    }
    colors = {"2xx": "tab:blue", "429": "tab:red", "other errors": "tab:orange"}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    bottom_stack = [0] * seconds
    for kind, test in kinds.items():
        counts = [0] * seconds
        for c in calls:
            if test(c.status):
                counts[int(c.at - t0)] += 1
        top.bar([s + 0.5 for s in range(seconds)], counts, width=0.9, bottom=bottom_stack, color=colors[kind], label=kind)
        bottom_stack = [a + b for a, b in zip(bottom_stack, counts, strict=True)]
    top.axhline(TIERS["second"], color="black", linestyle="--", label=f"second limit ({TIERS['second']})")
    for n, call in enumerate(c for c in calls if c.status == 429 and c.path.startswith("/throttle/")):
        for axis in (top, bottom):  # the pause the API asked for with Retry-After
            axis.axvspan(
                call.at - t0,
                call.at - t0 + PAUSE_429_S,
                color="tab:red",
                alpha=0.12,
                lw=0,
                label="pause (Retry-After)" if n == 0 and axis is top else None,
            )
    top.set_ylabel("calls per second")
    top.set_ylim(0, TIERS["second"] * 1.4)
    top.legend(loc="upper right", ncol=5, fontsize="small")
    top.set_title(
        f"throttler demo: {len(calls)} calls, {api.violations} quota violations, {api.order_violations} ordering errors"
    )
    window = WINDOWS_S["10s"]
    xs, ys = [], []
    times = [c.at - t0 for c in calls]
    step = 0.05
    t = 0.0
    while t <= seconds:
        xs.append(t)
        ys.append(sum(1 for x in times if t - window < x <= t))
        t += step
    bottom.plot(xs, ys, color="tab:green", label="calls in the last 10 s (sliding)")
    bottom.axhline(TIERS["10s"], color="black", linestyle="--", label=f"10s limit ({TIERS['10s']})")
    bottom.set_ylim(0, TIERS["10s"] * 1.3)
    bottom.set_ylabel("calls in 10 s")
    bottom.set_xlabel("seconds since the first call")
    bottom.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(jobs: int = 200, groups: int = 8, as_json: bool = False, plot: str | None = None) -> int:
    """Run the demo; returns the exit code (0 when the API saw no violation and every check passed)."""
    report, api = run(jobs, groups)
    if plot:
        plot_calls(api, plot)
        report["plot"] = plot
    if as_json:
        sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
        sys.stdout.flush()
    else:
        print_report(report)
        if plot:
            print(f"chart written to {plot}")
    return 0 if report["ok"] else 1
