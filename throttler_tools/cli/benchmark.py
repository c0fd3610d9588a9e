"""`bench`: the benchmark in virtual time."""

from __future__ import annotations

import click

from throttler_tools.cli.base import (
    Failure,
    cli,
)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--full", is_flag=True, help="The full benchmark (longer) instead of the quick one.")
@click.option("--jobs", type=click.IntRange(min=1), metavar="N", help="Jobs per scenario (default: the benchmark's own).")
@click.option(
    "--groups",
    type=click.IntRange(min=1),
    metavar="G",
    help="Message groups per scenario (default: the benchmark's own).",
)
@click.option("--plot", type=click.Path(dir_okay=False, writable=True), metavar="FILE.png", help="Also draw the results.")
def bench(as_json: bool, full: bool, jobs: int | None, groups: int | None, plot: str | None) -> None:
    """Benchmark dispatch against the quotas (virtual time: quick, no AWS needed)."""
    try:
        from throttler_tools import bench as bench_module
    except ImportError as exc:
        raise Failure(f"the benchmark is not available: {exc}") from None
    code = bench_module.main(jobs=jobs, groups=groups, as_json=as_json, full=full, plot=plot)
    if isinstance(code, int) and code:
        raise click.exceptions.Exit(code)
