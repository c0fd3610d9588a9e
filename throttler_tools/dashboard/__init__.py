"""The live dashboard of a stage: `python -m throttler dashboard`, or `serve_dashboard()` from the local stack.

A page on the standard library's HTTP server (no build step) showing each tier's window against its limit, calls
per second, the queue and the DLQ, the busiest keys, the pause and the latest dead letters, with pause, resume and
`quota set` for operators whose AWS credentials allow the writes. See server.py for what it guards against.
"""

from throttler_tools.dashboard.model import Dashboard, Outcome
from throttler_tools.dashboard.server import DashboardServer, serve_dashboard

__all__ = ["Dashboard", "DashboardServer", "Outcome", "serve_dashboard"]
