"""`dashboard`: a live page of one stage in the browser, with pause, resume and quota set (throttler_tools/dashboard)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from throttler_tools.cli.base import PROG, Failure, _aws, cli, stage_option

DEFAULT_PORT = 8566


@cli.command()
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="Port to serve the page on (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The page has no login of its own: keep it on 127.0.0.1 (or 'localhost').")
@click.option("--read-only", is_flag=True, help="Refuse pause, resume and quota changes from the page.")
@stage_option
def dashboard(port: int, host: str, read_only: bool, stage: str | None) -> None:
    """Serve a live dashboard of the stage until Ctrl-C, at http://127.0.0.1:PORT/.

    \b
    It shows, refreshed every second: each tier's sliding window against its limit (configured, learned,
    and what the API said), calls per second, the queue, in flight and the DLQ, the busiest keys, the
    pause (the operator's and a 429's) and the latest dead letters with their reasons. From the page an
    operator can pause (for a while or until resume), resume and change tiers, validated as `quota set`
    validates them. Writes use this process's AWS credentials: a change they may not make is refused by
    AWS and the page shows why. No login of its own: it listens on 127.0.0.1 unless --host says otherwise.
    """
    from throttler_tools.dashboard import Dashboard, DashboardServer
    from throttler_tools.dashboard.server import LOOPBACK

    aws = _aws(stage)
    board = Dashboard(aws, read_only=read_only)
    first = board.state(force=True)
    if first.get("error"):
        raise Failure(first["error"])
    try:
        server = DashboardServer(board, host, port)
    except OSError as exc:
        raise Failure(f"cannot listen on {host}:{port}: {exc.strerror or exc}: pass another --port") from None
    if host not in LOOPBACK:
        click.echo(f"warning: listening on {host}, beyond this machine: the page has no login of its own, and anyone who "
                   "reaches it can pause the stage and change its quotas with this process's AWS credentials", err=True)
    mode = "read-only" if read_only else "pause, resume and quota set allowed (with this process's AWS credentials)"
    click.echo(f"dashboard of stage {aws.stage} at {server.url} ({mode}); Ctrl-C stops it")
    _serve_until_signal(server)
    click.echo("dashboard stopped", err=True)


def _serve_until_signal(server: Any) -> None:
    """Serve until SIGINT or SIGTERM (the port is closed on return)."""
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    server.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


__all__ = ["DEFAULT_PORT", "PROG", "dashboard"]
