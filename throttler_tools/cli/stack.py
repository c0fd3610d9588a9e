"""`local` and `demo`: the whole stack on this machine."""

from __future__ import annotations

import os
import shlex
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

ECHO_DEFAULT_PORT = 4567
DASHBOARD_DEFAULT_PORT = 8566  # as `dashboard` (throttler_tools.cli.dashboard.DEFAULT_PORT)


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
    help="How often the scheduler invokes the throttler (EventBridge's 1 minute); a run lasts until the next one takes over.",
)
@click.option(
    "--latency",
    type=click.Choice(["low", "cost"]),
    default="low",
    show_default=True,
    help="The stage's default latency mode: low keeps an idle run waiting on the queue (a new job is called within "
    "about 2 s); cost ends an idle run (a job waits for the next tick).",
)
@click.option("--echo-api", is_flag=True, help="Also serve an echo API on 127.0.0.1 (see --echo-port) to point jobs at.")
@click.option(
    "--echo-port",
    default=ECHO_DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port of the echo API (with --echo-api; 0: any free port).",
)
@click.option("--dashboard", "with_dashboard", is_flag=True,
              help="Also serve the stage's live dashboard on 127.0.0.1 (see --dashboard-port), as `dashboard` does.")
@click.option(
    "--dashboard-port",
    default=DASHBOARD_DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port of the dashboard (with --dashboard; 0: any free port).",
)
@click.option("--json-logs", is_flag=True, help="Log JSON lines, as in CloudWatch, instead of one short line per event.")
def local(port: int, tick_seconds: float, latency: str, echo_api: bool, echo_port: int, with_dashboard: bool,
          dashboard_port: int, json_logs: bool) -> None:
    """Run the whole stack on this machine until Ctrl-C: emulator, scheduled throttler, worker.

    Creates the queues and table of stage `local` (same names as serverless.yml) in moto's server on
    127.0.0.1:PORT, invokes the throttler handler every tick and runs the worker handler in-process.
    With --echo-api it also serves an echo API to point jobs at, with --dashboard the stage's live
    dashboard (`make local` passes both). Once ready it prints the variables to export in another shell,
    for boto3, the AWS CLI, a producer and this command line. Logs go to stderr. Ctrl-C or SIGTERM ends
    the runs in progress cleanly (they settle their calls in flight and put back the jobs they hold),
    stops the emulator and exits 0.
    """
    from throttler_tools.local import LocalStack, serve

    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        stack = LocalStack(port, tick_seconds, env={"DEFAULT_LATENCY": latency})
        serve(stack, _print_ready, stop, echo_port=echo_port if echo_api else None,
              dashboard_port=dashboard_port if with_dashboard else None, json_logs=json_logs)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    click.echo("local stack stopped", err=True)


def ready_banner(stack: Any, echo: Any = None, dashboard: Any = None) -> str:
    """What `local` prints once every resource exists: where things are, and what to export elsewhere."""
    names, env = stack.names, stack.env
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in stack.client_env.items())
    latency = env.get("DEFAULT_LATENCY", "cost")
    lines = [
        f"throttler local stack ready at {stack.endpoint} (region {stack.region})",
        f"  jobs queue    {names['jobs_queue']}  {env['JOBS_QUEUE_URL']}",
        f"  dead letters  {names['dlq']}  {env['DLQ_URL']}",
        f"  state table   {names['state_table']}",
        f"  throttler     {names['throttler_function']}: invoked every {stack.tick_s:g} s, in-process, latency={latency}",
        f"  worker        {names['worker_function']}: in-process when invoked",
        f"  jobs may call {', '.join(env['ALLOWED_HOSTS'].split(','))} (plain http, any port, those hosts only)",
    ]
    if echo is not None:
        lines.append(f"  echo API      {echo.url}  (answers 200 to anything; shows what it got: GET {echo.url}/requests)")
    if dashboard is not None:
        lines.append(f"  dashboard     {dashboard.url}  (live: tiers, calls/s, queue, keys, pause, dead letters)")
    lines += [
        "",
        "In another shell (boto3, the AWS CLI v2, a Producer and this command line read these):",
        f"  export {exports}",
        "The AWS CLI v1 ignores AWS_ENDPOINT_URL: give it the endpoint on each command, e.g.",
        f"  aws --endpoint-url {stack.endpoint} sqs get-queue-attributes --attribute-names All"
        f" --queue-url {env['JOBS_QUEUE_URL']}",
    ]
    if echo is not None:
        payload = f'{{"method": "POST", "url": "{echo.url}/hello", "json": {{"hi": 1}}}}'
        lines += [
            "Then:",
            f"  {PROG} enqueue --group customer-42 http '{payload}'",
            f"  {PROG} status",
            f"  curl -s {echo.url}/requests",
        ]
    lines.append("Ctrl-C stops it.")
    return "\n".join(lines)


def _print_ready(stack: Any, echo: Any = None, dashboard: Any = None) -> None:
    click.echo(ready_banner(stack, echo, dashboard))
    sys.stdout.flush()


SCENARIOS = ("tiers", "keys", "unknown-limit")


@cli.command()
@click.option("--jobs", default=200, show_default=True, type=click.IntRange(10, 5000), help="How many jobs to enqueue.")
@click.option(
    "--groups",
    default=8,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Across how many message groups (ordering keys).",
)
@click.option("--keys", "keys_scenario", is_flag=True,
              help="Per-key quotas: a heavy tenant and four light ones, each within its own limit and the global one.")
@click.option("--unknown-limit", "unknown_scenario", is_flag=True,
              help="The API enforces a limit the quotas do not state (second=auto:MAX): watch the throttler learn it.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object on the last line of stdout.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True),
    metavar="FILE.png",
    help="Also draw the calls over time against the limits.",
)
def demo(jobs: int, groups: int, keys_scenario: bool, unknown_scenario: bool, as_json: bool, plot: str | None) -> None:
    """Show the whole pipeline working, self-contained (under a minute).

    Starts the local stack and a fake third-party API that enforces its quotas strictly (sliding
    windows) and counts violations, enqueues jobs across groups (a few fail for good, one fails once,
    one is answered 429), shows live progress, and ends with a report: calls per tier against the
    limit, 429s, violations, ordering, dead letters, time against the ideal. Exits 1 if the API saw a
    violation or an ordering error.
    """
    from throttler_tools.demo import main as demo_main

    if keys_scenario and unknown_scenario:
        raise Invalid("--keys and --unknown-limit are separate scenarios: choose one")
    if jobs < groups:
        raise Invalid(f"--jobs ({jobs}) must be at least --groups ({groups})")
    if plot is not None:
        folder = os.path.dirname(os.path.abspath(plot))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise Invalid(f"--plot {plot}: the folder {folder} does not exist or is not writable")
    scenario = "keys" if keys_scenario else "unknown-limit" if unknown_scenario else "tiers"
    code = demo_main(jobs=jobs, groups=groups, as_json=as_json, plot=plot, scenario=scenario)
    if code:
        raise click.exceptions.Exit(code)
