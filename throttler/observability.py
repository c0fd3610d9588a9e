"""The one Powertools logger and metrics the handlers share, and the decorator that instruments a handler.

No tracer: tracing is off in every stage, and Powertools' `Tracer` imports `aws_xray_sdk` even when disabled,
which is not a runtime dependency (requirements.txt) and so is not in the Lambda zip. Turning tracing on means
adding `aws-xray-sdk` to requirements.txt, a Tracer here, and `tracing` plus X-Ray permissions in serverless.yml.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast

from aws_lambda_powertools import Logger, Metrics

SERVICE = "throttler"
# Lambda gives a function CPU in proportion to its memory: one vCPU at 1,769 MB.
VCPU_MB = 1769
# An invocation that keeps more of its CPU share busy than this is close to falling behind its quota.
CPU_SHARE_WARN = 0.7
# Shorter invocations say nothing about a rate (start-up, an idle run's first look).
CPU_WATCH_MIN_S = 5.0
NAMESPACE = "Throttler"
# Every metric carries `service` (Powertools) and `stage`, so that two stages in one account keep separate
# series and the alarms of serverless.yml (dimensions service + stage) see only their own stage.
STAGE_DIMENSION = "stage"
STAGE_ENV = "THROTTLER_STAGE"

logger = Logger(service=SERVICE, log_uncaught_exceptions=True)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

# A worker batch that ran no job has nothing to publish: that is normal, not worth a warning per invocation.
warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)
# The handler sets the stage again from its settings (the environment may not have it): not worth a warning.
warnings.filterwarnings("ignore", message="Dimension 'stage' has already been added")

Result = TypeVar("Result")


def set_stage_dimension(stage: str | None = None) -> str:
    """Put the stage (default: THROTTLER_STAGE) on every metric from now on; returns it."""
    stage = stage or os.environ.get(STAGE_ENV) or "unknown"
    metrics.set_default_dimensions(**{STAGE_DIMENSION: stage})
    return stage


def instrumented(handler: Callable[[Any, Any], Result]) -> Callable[[Any, Any], Result]:
    """A Lambda handler with the Lambda context in its logs and its metrics (with the stage) flushed at the end.

    The stage dimension is set when the handler runs, not at import, so that a test or the local stack that
    changes THROTTLER_STAGE gets the right one.
    """

    @functools.wraps(handler)
    def with_context(event: Any, context: Any) -> Result:
        set_stage_dimension()
        # The Lambda context's keys are kept per thread: when both handlers run in one process (the local
        # stack), the throttler's lines must not carry the worker's function name, nor the other way round.
        logger.thread_safe_clear_keys()
        logger.thread_safe_append_keys(**lambda_keys(context))
        try:
            return handler(event, context)
        finally:
            logger.thread_safe_clear_keys()

    # (Any context: the local stack and the tests pass a stand-in for Lambda's.)
    return cast(Callable[[Any, Any], Result], metrics.log_metrics(with_context))


_cold = [True]


def lambda_keys(context: Any) -> dict[str, Any]:
    """What Powertools' inject_lambda_context would add, for this thread only."""
    cold, _cold[0] = _cold[0], False
    return {
        "function_name": getattr(context, "function_name", None),
        "function_request_id": getattr(context, "aws_request_id", None),
        "function_arn": getattr(context, "invoked_function_arn", None),
        "function_memory_size": getattr(context, "memory_limit_in_mb", None),
        "cold_start": cold,
    }


def composed_handler(compose: Callable[[], Any], body: Callable[[Any, Any, Any], Result]) -> Callable[[Any, Any], Result]:
    """An instrumented handler whose composition is built on the first invocation and kept while the
    container is warm; `body(composition, event, context)` is the handler's one call into the library."""
    built: list[Any] = []

    @instrumented
    def handler(event: Any, context: Any) -> Result:
        if not built:
            built.append(compose())
        set_stage_dimension(built[0].settings.stage)
        cpu, wall = time.process_time(), time.monotonic()
        try:
            return body(built[0], event, context)
        finally:
            with contextlib.suppress(Exception):  # a diagnostic: it must never change the handler's outcome
                warn_when_cpu_bound(time.process_time() - cpu, time.monotonic() - wall, context)

    return handler


def cpu_share_used(cpu_s: float, wall_s: float, memory_mb: int) -> float:
    """The part of its CPU share (from its memory size) an invocation kept busy."""
    return cpu_s / (wall_s * memory_mb / VCPU_MB)


def warn_when_cpu_bound(cpu_s: float, wall_s: float, context: Any) -> float | None:
    """Log a warning when the function's memory size gives it too little CPU for its rate: the throttler
    would plan late and the worker call late, so the stage falls short of its quota (never over it)."""
    try:
        memory = int(getattr(context, "memory_limit_in_mb", None) or 0)
    except (TypeError, ValueError):  # a stand-in context: nothing to compare with
        return None
    if memory <= 0 or wall_s < CPU_WATCH_MIN_S:
        return None
    used = cpu_share_used(cpu_s, wall_s, memory)
    if used > CPU_SHARE_WARN:
        logger.warning(
            "CPU-bound: this invocation kept %d%% of its %s MB's CPU share busy; raise the function's memory "
            "(serverless.yml params throttlerMemory, workerMemory; README, section Cost)",
            round(100 * used),
            memory,
            extra={"cpu_s": round(cpu_s, 3), "wall_s": round(wall_s, 3), "cpu_share_used": round(used, 3)},
        )
    return used


def remaining_s(context: Any) -> float | None:
    """Seconds left before Lambda's timeout (None for a context that does not say)."""
    getter = getattr(context, "get_remaining_time_in_millis", None)
    return getter() / 1000 if callable(getter) else None
