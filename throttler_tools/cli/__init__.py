"""The command line, `python -m throttler COMMAND` (or `throttler COMMAND` once installed).

Exit codes: 0 success, 2 usage or validation error (one line on stderr), 1 any other failure (one line).
Commands live in small modules by audience: operator.py (enqueue, quota, pause, resume, status, dlq),
stack.py (local, demo), benchmark.py (bench); base.py holds the group and the shared helpers.
"""

from throttler_tools.cli import benchmark, dashboard, operator, stack  # noqa: F401 - they register their commands
from throttler_tools.cli.base import PROG, cli


def main() -> None:
    cli(prog_name=PROG)


__all__ = ["cli", "main"]
