"""The benchmark's report: tables on the console, plots, and the JSON line."""

from __future__ import annotations

import json
from typing import Any


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

    s = report["scenario"]
    head = report["strategies"]
    table = Table(
        title=f"{head['throttler']['jobs']:,} jobs over {s['groups']} groups, tiers {s['tiers']}, API {s['api_latency']}"
    )
    for column in (
        "strategy",
        "drain s",
        "ideal s",
        "quota use",
        "violat.",
        "429s",
        "AWS req/job",
        "CPU ms/job",
        "of it client",
        "x floor",
        "$/M jobs",
    ):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    floor = head["floor"]["cpu_ms_per_job"]
    for name, r in head.items():
        drain = _fmt(r["drain_s"], 1) + ("*" if r.get("drain_projected") else "")
        money = r.get("usd_per_million_jobs")
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
            _fmt(r["cpu_ms_per_job"] / floor if floor else None, 2),
            _fmt(money["total"] if money else None, 3),
        )
    console.print(table)

    actions = sorted({a for r in head.values() for a in r["aws_requests_per_job_by_action"]})
    by_action = Table(title="AWS requests per job, by service and action")
    by_action.add_column("action")
    for name in head:
        by_action.add_column(name, justify="right")
    for action in actions:
        by_action.add_row(action, *(_fmt(r["aws_requests_per_job_by_action"].get(action), 4) for r in head.values()))
    console.print(by_action)

    scaling = Table(title="Each backlog size")
    for column in ("jobs", "strategy", "drain s", "quota use", "AWS req/job", "CPU ms/job", "$/M jobs", "wall s"):
        scaling.add_column(column, justify="left" if column == "strategy" else "right")
    for scale in report["scales"]:
        for name, r in scale["strategies"].items():
            money = r.get("usd_per_million_jobs")
            scaling.add_row(
                _fmt(scale["jobs"]),
                name,
                _fmt(r["drain_s"], 1) + ("*" if r.get("drain_projected") else ""),
                _fmt(r["quota_use"], 4),
                _fmt(r["aws_requests_per_job"], 3),
                _fmt(r["cpu_ms_per_job"], 3),
                _fmt(money["total"] if money else None, 3),
                _fmt(r["wall_s"], 1),
            )
    console.print(scaling)

    check = report["request_count_check"]
    counts = Table(title=f"Requests counted: twins vs moto ({check['jobs']} jobs, real adapters on moto)")
    for column in ("action", "twins", "moto"):
        counts.add_column(column, justify="left" if column == "action" else "right")
    for action, row in check["by_action"].items():
        counts.add_row(action, _fmt(row["twins"]), _fmt(row["moto"]))
    console.print(counts)

    other = Table(title="Scenarios")
    other.add_column("scenario")
    other.add_column("figures")
    for mode, r in report["idle_latency_detail"].items():
        other.add_row(f"idle latency, latency={mode}", f"p50 {_fmt(r['p50'])} s, p99 {_fmt(r['p99'])} s ({r['called']} jobs)")
    for mode, r in report["idle_cost"].items():
        other.add_row(f"idle cost, latency={mode}", f"${r['usd_per_month']['total']:.2f} a month")
    for r in [report["slow_api"], *report.get("slow_api_tiers", []), *report["slow_api_variants"]]:
        other.add_row(
            f"slow API {r['tiers']}, {r['api_latency_ms']:g} ms, {r['jobs_per_group']}/group, "
            f"WORKER_MAX_PARALLEL={r['worker_max_parallel']}",
            f"quota use {_fmt(r['quota_use'], 4)} ({_fmt(r['steady_rate_per_s'])}/s), violations {r['violations']}, "
            f"late skips {r['late_skips']}",
        )
    for count, r in report["keys"].items():
        other.add_row(
            f"keys: {int(count):,}",
            f"violations {r['violations_stage']}+{r['violations_key']}, global use "
            f"{_fmt(r['global_quota_use'], 4)} (steady {_fmt(r['global_quota_use_steady'], 4)}), "
            f"Jain {_fmt(r['fairness_jain'], 3)}, light p99 {_fmt(r['light_wait_p99_s'])} s, "
            f"{_fmt(r['reservation_writes_per_s'])} reservations/s, ${_fmt(r['usd_per_million_jobs'], 3)}/M",
        )
    steady, halved = report["adaptive"]["steady"], report["adaptive"]["halved"]
    other.add_row(
        "adaptive: hidden 6/s, second=auto:20",
        f"learned {steady['learned_at_120_s']} at 2 min, {steady['after_2_min']['rate_per_s']}/s at 1:50-2:00, "
        f"429 share {steady['last_minute_of_first_2']['share_429']} over 1:00-2:00",
    )
    other.add_row(
        "adaptive: limit halved at 3:00",
        f"learned {halved['learned_60_s_after']} a minute later; 429 share {halved['minute_after']['share_429']} "
        f"(first minute), {halved['second_minute_after']['share_429']} (second)",
    )
    money = report["usd_per_million_jobs"]
    other.add_row("$ per million jobs", ", ".join(f"{k} {v:.3f}" for k, v in money.items()))
    console.print(other)

    goals = Table(title="Targets for throttler")
    for column in ("target", "measured", "bound", "met"):
        goals.add_column(column)
    for name, t in report["targets"].items():
        goals.add_row(name, _fmt(t["value"], 4), t["bound"], "[green]yes[/]" if t["met"] else "[red]NO[/]")
    console.print(goals)


def public(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the raw series kept for the plots."""
    return {k: v for k, v in report.items() if not k.startswith("_")}


def json_line(report: dict[str, Any]) -> str:
    return json.dumps(public(report), separators=(",", ":"), default=str)


def plots(report: dict[str, Any], directory: str) -> list[str]:
    """bench-idle-latency.png (the waits of each latency mode) and bench-slow-api.png (calls per second)."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(8, 4))
    for mode, waits in report["_idle_waits"].items():
        ordered = sorted(waits)
        if ordered:
            ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=f"latency={mode}")
    ax.set_xscale("log")
    ax.set_xlabel("seconds from enqueue to the API (log scale)")
    ax.set_ylabel("share of jobs")
    ax.axvline(2.0, linestyle="--", color="grey", linewidth=0.8)
    ax.annotate("2 s", (2.0, 0.05), color="grey", fontsize=8)
    ax.set_title("Idle stage: one job at a time at random times")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(directory, "bench-idle-latency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    calls = report["_slow_calls"]
    slow = report["slow_api"]
    fig, ax = plt.subplots(figsize=(8, 4))
    if calls:
        end = int(calls[-1]) + 1
        bins = [0] * (end + 1)
        for t in calls:
            bins[int(t)] += 1
        ax.plot(range(len(bins)), bins, label="successful calls reaching the API, per second")
    ax.axhline(slow["binding_rate_per_s"], linestyle="--", color="grey", linewidth=0.8, label=slow["tiers"])
    ax.set_ylim(0, slow["binding_rate_per_s"] * 1.15)
    ax.set_xlabel("virtual seconds since the backlog was there")
    ax.set_ylabel("calls per second")
    ax.set_title(
        f"Slow API ({slow['api_latency_ms']:g} ms median): quota use {slow['quota_use']}, violations {slow['violations']}"
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = os.path.join(directory, "bench-slow-api.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written
