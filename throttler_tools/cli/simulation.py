"""`sim`: the simulation, seeds of days of production in virtual time, every promise checked at the end."""

from __future__ import annotations

import json
import time

import click

from throttler_tools.cli.base import Failure, cli


@cli.command()
@click.option("--seed", type=int, metavar="N", help="One seed: live through it and print what it broke (the replay).")
@click.option("--seeds", type=click.IntRange(min=1), metavar="COUNT", help="Run COUNT seeds, from --first on.")
@click.option("--first", type=int, default=1, show_default=True, metavar="N", help="The first of --seeds.")
@click.option("--regression", is_flag=True, help="Run the regression set (seeds that once broke a promise).")
@click.option("--days", type=click.FloatRange(min=0.01), default=1.0, show_default=True, help="Simulated days per seed.")
@click.option("--jobs", type=click.IntRange(min=1), metavar="N", help="Jobs per seed (default: the profile's own).")
@click.option("--profile", metavar="NAME", help="Force a profile (daily, bursts, keys, auto, storms, edits, big, chaos).")
@click.option("--scale", type=click.FloatRange(min=0.01), help="Jobs per seed as a share of each profile's full size.")
@click.option("--processes", type=click.IntRange(min=1), metavar="P", help="Processes (default: one per core).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON line.")
@click.option("--results", type=click.Path(dir_okay=False, writable=True), metavar="FILE.jsonl",
              help="Also write every seed's result, one JSON line each, as it comes.")
def sim(seed: int | None, seeds: int | None, first: int, regression: bool, days: float, jobs: int | None,
        profile: str | None, scale: float | None, processes: int | None, as_json: bool, results: str | None) -> None:
    """The simulation: seeded, deterministic days of production (faults, storms, quota edits) against the
    real throttler and worker code; exit 1 when a seed breaks a promise (each failure prints its replay)."""
    try:
        from throttler_tools.sim import runner
        from throttler_tools.sim.regression import REGRESSION
        from throttler_tools.sim.scenario import JOB_SCALE, PROFILES
    except ImportError as exc:
        raise Failure(f"the simulation is not available: {exc}") from None
    if profile is not None and profile not in PROFILES:
        raise click.UsageError(f"--profile must be one of {', '.join(PROFILES)}")
    share = JOB_SCALE if scale is None else scale
    if seed is not None:
        result = runner.run_seed(seed, days, jobs, profile, share)
        click.echo(result.description)
        for line in result.violations:
            click.echo(line)
        click.echo(json.dumps(result.figures, sort_keys=True))
        click.echo(f"{'ok' if result.ok else 'BROKEN'}: {result.replay}")
        if not result.ok:
            raise click.exceptions.Exit(1)
        return
    started = time.monotonic()
    sink = open(results, "w", encoding="utf-8") if results else None

    def progress(result: object) -> None:
        _progress(result, as_json)
        if sink is not None:
            sink.write(json.dumps(result.to_dict(), sort_keys=True) + "\n")  # type: ignore[attr-defined]
            sink.flush()

    if regression:
        done = []
        for case in REGRESSION:
            result = runner.run_seed(case.seed, case.days, case.jobs, case.profile, case.scale)
            done.append(result)
            progress(result)
    else:
        count = seeds or 100
        done = runner.run_many(range(first, first + count), days, jobs, profile, processes, on_result=progress, scale=share)
    if sink is not None:
        sink.close()
    summary = runner.summarize(done, time.monotonic() - started)
    if as_json:
        click.echo(runner.to_json_line(summary))
    else:
        click.echo(_describe(summary))
    if summary["failed"]:
        raise click.exceptions.Exit(1)


def _progress(result: object, as_json: bool) -> None:
    from throttler_tools.sim.runner import SeedResult

    assert isinstance(result, SeedResult)
    if not result.ok:
        click.echo(f"seed {result.seed} BROKE: {'; '.join(result.violations[:3])}\n  replay: {result.replay}", err=True)


def _describe(summary: dict[str, object]) -> str:
    figures = summary["figures"]
    assert isinstance(figures, dict)
    failed = summary["failed"]
    assert isinstance(failed, list)
    lines = [
        f"seeds: {summary['seeds']}  passed: {summary['passed']}  failed: {len(failed)}",
        f"simulated: {summary['simulated_days']} days in {summary['wall_s']} s ({summary['cpu_s']} s of CPU)",
        f"profiles: {json.dumps(summary['profiles'], sort_keys=True)}",
        f"figures: {json.dumps(figures, sort_keys=True)}",
        f"checked: {json.dumps(summary['promises_checked'], sort_keys=True)}",
    ]
    for f in failed:
        lines.append(f"BROKEN seed {f['seed']}: {f['replay']}")
    return "\n".join(lines)
