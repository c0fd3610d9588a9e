"""`local` and `demo`: the whole stack on this machine."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

from throttler_tools.cli.base import (
    PROG,
    Invalid,
    cli,
)


@cli.command()
@click.option(
    "--port",
    default=4566,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port of the AWS emulator on 127.0.0.1 (0: any free port).",
)
@click.option(
    "--tick-seconds",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="How often the throttler runs (EventBridge's 1 minute); each run lasts at most one tick.",
)
def local(port: int, tick_seconds: float) -> None:
    """Run the whole stack on this machine until Ctrl-C: emulator, scheduled throttler, worker.

    Creates the queues and table of stage `local` (same names as serverless.yml) in moto's server on
    127.0.0.1:PORT, invokes the throttler handler every tick and runs the worker handler in-process.
    Point any boto3 producer, or this CLI, at the printed endpoint. Ctrl-C or SIGTERM ends the run in
    progress cleanly, stops the emulator and exits 0.
    """
    from throttler_tools.local import serve

    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        serve(port, tick_seconds, _print_ready, stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    click.echo("local stack stopped", err=True)


def _print_ready(stack: Any) -> None:
    names = stack.names
    env = f"AWS_ENDPOINT_URL={stack.endpoint} AWS_REGION={stack.region}"
    if stack.env.get("AWS_ACCESS_KEY_ID") == "testing":
        env += " AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing"
    lines = [
        f"throttler local stack ready at {stack.endpoint} (region {stack.region})",
        f"  jobs queue   {names['jobs_queue']}  {stack.env['JOBS_QUEUE_URL']}",
        f"  dead letters {names['dlq']}  {stack.env['DLQ_URL']}",
        f"  state table  {names['state_table']}",
        f"  throttler    {names['throttler_function']}: every {stack.tick_s:g} s, in-process",
        f"  worker       {names['worker_function']}: in-process when invoked",
        f"  allowed hosts for jobs: {stack.env['ALLOWED_HOSTS']}",
        "In another shell:",
        f"  export {env}",
        f"  {PROG} status",
        "Ctrl-C stops it.",
    ]
    click.echo("\n".join(lines))
    sys.stdout.flush()


@cli.command()
@click.option("--jobs", default=200, show_default=True, type=click.IntRange(10, 5000), help="How many jobs to enqueue.")
@click.option(
    "--groups",
    default=8,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Across how many message groups (ordering keys).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on the last line of stdout.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True),
    metavar="FILE.png",
    help="Also draw calls per second against the limits.",
)
def demo(jobs: int, groups: int, as_json: bool, plot: str | None) -> None:
    """Show the whole pipeline working, self-contained (about a minute).

    Starts the local stack and a fake third-party API that enforces its quotas strictly (sliding
    windows) and counts violations, enqueues jobs across groups (a few fail for good, one fails once,
    one is answered 429), shows live progress, and ends with a report: calls per tier against the
    limit, 429s, violations, ordering, dead letters, time against the ideal. Exits 1 if the API saw a
    violation or an ordering error.
    """
    from throttler_tools.demo import main as demo_main

    if jobs < groups:
        raise Invalid(f"--jobs ({jobs}) must be at least --groups ({groups})")
    code = demo_main(jobs=jobs, groups=groups, as_json=as_json, plot=plot)
    if code:
        raise click.exceptions.Exit(code)
