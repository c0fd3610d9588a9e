"""The local stack's logs: one short line per event for a person (default), or JSON lines as in CloudWatch.

Both functions run in one process here, and Powertools keeps the Lambda context of the last handler
invoked in its global keys: the throttler's lines would say `throttler-local-worker` once a worker had run.
So each line's function is decided here, per line: by the handler invocation running on that thread (the
local stack marks it), else by the thread (a worker's call threads) or the logger (the stack's own lines).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

_current = threading.local()

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_OURS = {"function_name", "function_request_id", "function_arn"}
# Counters of a run's summary worth a word on the terminal, in this order (zeros are left out).
SUMMARY_FIELDS = ("received", "dispatched", "succeeded", "retried", "dead_lettered", "invalid", "throttled",
                  "missed_slots", "hidden", "released", "worker_failures", "reservation_conflicts")
COLOURS = {"throttler": "36", "worker": "35", "local": "32", "echo-api": "33"}
LEVEL_COLOURS = {"WARNING": "33", "ERROR": "31", "CRITICAL": "31"}
MAX_VALUE_CHARS = 80


@contextlib.contextmanager
def invocation(role: str, function_name: str, request_id: str, arn: str) -> Iterator[None]:
    """Mark this thread as running one handler invocation, for the lines it logs meanwhile."""
    before = getattr(_current, "value", None)
    _current.value = (role, function_name, request_id, arn)
    try:
        yield
    finally:
        _current.value = before


class FunctionFilter(logging.Filter):
    """Puts the right function on every record (Powertools' JSON takes a record's own attributes last)."""

    def __init__(self, names: dict[str, str]):
        super().__init__()
        self.names = names  # role -> function name, e.g. {"throttler": "throttler-local-throttler", ...}

    def role(self, record: logging.LogRecord) -> tuple[str, str | None, str | None]:
        if record.name.startswith("throttler_tools.echoapi"):
            return "echo-api", None, None
        if record.name.startswith("throttler_tools"):
            return "local", None, None
        current = getattr(_current, "value", None)
        if current is not None:
            return current[0], current[2], current[3]
        thread = threading.current_thread().name
        if thread.startswith(("call", "worker")):
            return "worker", None, None
        return "throttler", None, None

    def filter(self, record: logging.LogRecord) -> bool:
        role, request_id, arn = self.role(record)
        record.function_name = self.names.get(role, role)
        record.function_role = role
        if request_id is not None:
            record.function_request_id = request_id
        if arn is not None:
            record.function_arn = arn
        return True


def _value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".")
    elif isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, separators=(",", ":"), default=str)
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def summary_fields(summary: dict[str, Any]) -> list[str]:
    """A run's summary in a few words: why it ended, what it did, how long it took."""
    parts = []
    if summary.get("end_reason"):
        parts.append(f"end={summary['end_reason']}")
    parts += [f"{name}={summary[name]}" for name in SUMMARY_FIELDS if summary.get(name)]
    if summary.get("handed_over_to"):
        parts.append("handed over")
    if summary.get("paused_until"):
        from throttler_tools.status import duration_text

        left = max(0.0, summary["paused_until"] - time.time())
        parts.append("paused until resume" if left > 365 * 86400 else f"paused {duration_text(left)} more")
    if summary.get("invalid_config"):
        parts.append("INVALID quota configuration (last good one kept)")
    if summary.get("no_config"):
        parts.append("no quota configuration: nothing dispatched")
    if summary.get("started_at") and summary.get("ended_at"):
        parts.append(f"{summary['ended_at'] - summary['started_at']:.1f} s")
    return parts


def human_formatter(colour: bool = False) -> logging.Formatter:
    """A Powertools formatter (the handlers append and clear keys on it) that writes one short line per event:
    `12:00:01.234 throttler run finished  end=successor dispatched=3 succeeded=3 10.2 s`."""
    from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

    class HumanFormatter(LambdaPowertoolsFormatter):
        def format(self, record: logging.LogRecord) -> str:
            return human_line(record, colour)

    return HumanFormatter()


def human_line(record: logging.LogRecord, colour: bool) -> str:
    return _Human(colour).format(record)


class _Human:
    def __init__(self, colour: bool):
        self.colour = colour

    def _paint(self, code: str | None, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        role = getattr(record, "function_role", None) or "local"
        parts = [self._paint("2", clock), self._paint(COLOURS.get(role), f"{role:<9}")]
        if record.levelno >= logging.WARNING:
            parts.append(self._paint(LEVEL_COLOURS.get(record.levelname), record.levelname))
        parts.append(record.getMessage())
        fields: list[str] = []
        for name, value in record.__dict__.items():
            if name in _STANDARD or name in _OURS or name == "function_role" or value is None or value == "":
                continue
            if name == "summary" and isinstance(value, dict):
                fields += summary_fields(value)
            else:
                fields.append(f"{name}={_value(value)}")
        line = " ".join(parts) + ("  " + " ".join(fields) if fields else "")
        if record.exc_info and record.exc_info[1] is not None:
            line += "  " + self._paint("31", f"{type(record.exc_info[1]).__name__}: {_value(str(record.exc_info[1]))}")
        return line


@contextlib.contextmanager
def local_logs(names: dict[str, str], *, json_lines: bool = False, stream: TextIO | None = None,
               level: str | int | None = None) -> Iterator[None]:
    """Route the handlers' logs (Powertools) and the stack's own to `stream` (stderr), in the chosen format,
    with the right function on every line; everything is put back on exit."""
    from throttler.observability import logger as powertools_logger

    stream = stream or sys.stderr
    handler = powertools_logger.registered_handler
    function_filter = FunctionFilter(names)
    old_formatter = handler.formatter
    old_stream = handler.setStream(stream) if isinstance(handler, logging.StreamHandler) else None
    old_level = powertools_logger.log_level
    colour = bool(getattr(stream, "isatty", lambda: False)())
    formatter: logging.Formatter = old_formatter if json_lines and old_formatter is not None else human_formatter(colour)
    handler.setFormatter(formatter)
    handler.addFilter(function_filter)
    if level is not None:
        powertools_logger.setLevel(level)
    tools = logging.getLogger("throttler_tools")
    tools_handler = logging.StreamHandler(stream)
    tools_handler.setFormatter(formatter)
    tools_handler.addFilter(function_filter)
    saved_tools = (tools.level, tools.propagate)
    tools.addHandler(tools_handler)
    tools.setLevel(powertools_logger.log_level if level is None else level)
    tools.propagate = False
    try:
        yield
    finally:
        tools.removeHandler(tools_handler)
        tools.setLevel(saved_tools[0])
        tools.propagate = saved_tools[1]
        handler.removeFilter(function_filter)
        handler.setFormatter(old_formatter)  # type: ignore[arg-type]
        powertools_logger.setLevel(old_level)
        if old_stream is not None and isinstance(handler, logging.StreamHandler):
            handler.setStream(old_stream)
