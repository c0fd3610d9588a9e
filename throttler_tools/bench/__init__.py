"""The benchmark in virtual time (`python -m throttler bench`; BENCHMARKS.md explains every figure).

Three strategies drain the same backlog side by side (runner.py, strategies.py): `throttler` (this
project's ThrottlerRun and worker state machines in the simulation's World), `seed-2019` (the 2019
post's design) and `floor` (a bare receive+batch-delete loop). AWS requests are counted as the real
adapters would send them (twins.py, checked against moto), CPU is measured per section (meters.py)
with the client side of each request calibrated on moto (moto.py), and the bill follows from both
(cost.py). Scenarios (scenarios.py): a quiet stage's latency and idle cost in each latency mode, a
slow API, per-key quotas at 10 to 10,000 keys, and learned limits against a hidden limit.
"""

from __future__ import annotations

import sys

from throttler_tools.bench.runner import Options, run_bench


def main(
    *,
    jobs: int = 20_000,
    groups: int = 100,
    tiers: str = "second=20 minute=600 hour=30000",
    api_latency_ms: float = 100.0,
    keys: int | None = None,
    full: bool = False,
    as_json: bool = False,
    plot: str | None = None,
    smoke: bool = False,
    profile: bool = False,
) -> int:
    """Run, print the tables (stdout) and, with `as_json`, one JSON object as the last line."""
    import logging

    from rich.console import Console

    from throttler_tools.bench.report import json_line, plots, render

    logging.disable(logging.WARNING)  # the runs log every 429 and redelivery: the report counts them
    err = Console(stderr=True)
    opts = Options(
        jobs=jobs, groups=groups, tiers=tiers, api_latency_ms=api_latency_ms, keys=keys, full=full, smoke=smoke, profile=profile
    )
    try:
        report = run_bench(opts, progress=lambda line: err.print(f"[dim]{line}[/]"))
    finally:
        logging.disable(logging.NOTSET)
    render(report, Console(width=max(140, Console().width)))
    if plot:
        for path in plots(report, plot):
            err.print(f"plot written to {path}")
    if as_json:
        sys.stdout.flush()
        print(json_line(report))
    return 0


__all__ = ["Options", "main", "run_bench"]
