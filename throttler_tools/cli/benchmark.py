"""`bench`: the benchmark in virtual time."""

from __future__ import annotations

import click

from throttler_tools.cli.base import Failure, Invalid, cli


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Also print the results as one JSON object (the last line).")
@click.option("--jobs", type=click.IntRange(min=1), default=20_000, show_default=True, metavar="N", help="The headline backlog.")
@click.option(
    "--groups", type=click.IntRange(min=1), default=100, show_default=True, metavar="G", help="Message groups of the backlog."
)
@click.option(
    "--tiers", default="second=20 minute=600 hour=30000", show_default=True, metavar='"T=N ..."', help="The quota tiers."
)
@click.option(
    "--api-latency-ms",
    type=click.FloatRange(min=1.0),
    default=100.0,
    show_default=True,
    metavar="MS",
    help="The API's median latency (lognormal tail); the slow-API scenario uses at least 250.",
)
@click.option(
    "--keys",
    type=click.IntRange(min=1),
    metavar="K",
    help="Run the per-key scenario at K keys only (default 10; 1,000 and 10,000 too with --full).",
)
@click.option(
    "--full",
    is_flag=True,
    help="Add ten times the backlog, 1,000 and 10,000 keys, a longer slow-API run and its variants (about an hour).",
)
@click.option(
    "--plot", type=click.Path(file_okay=False, writable=True), metavar="DIR", help="Draw the plots into DIR (bench-*.png)."
)
@click.option("--profile", is_flag=True, help="Also profile the throttler's own code (at a tenth of the backlog).")
@click.option("--smoke", is_flag=True, hidden=True, help="Tiny sizes everywhere (tests).")
def bench(
    as_json: bool,
    jobs: int,
    groups: int,
    tiers: str,
    api_latency_ms: float,
    keys: int | None,
    full: bool,
    plot: str | None,
    profile: bool,
    smoke: bool,
) -> None:
    """Benchmark the throttler against the 2019 design and a bare receive+delete floor (virtual time)."""
    try:
        from throttler_tools.bench import main
        from throttler_tools.bench.model import parse_tiers
    except ImportError as exc:
        raise Failure(f"the benchmark is not available: {exc}") from None
    try:
        parse_tiers(tiers)
    except Exception as exc:  # noqa: BLE001 - a bad tier is a usage error
        raise Invalid(f"--tiers: {exc}") from None
    code = main(
        jobs=jobs,
        groups=groups,
        tiers=tiers,
        api_latency_ms=api_latency_ms,
        keys=keys,
        full=full,
        as_json=as_json,
        plot=plot,
        smoke=smoke,
        profile=profile,
    )
    if code:
        raise click.exceptions.Exit(code)
