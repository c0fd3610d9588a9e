"""Lambda entry point of the throttler: decorators and one call into the library."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from throttler import composition
from throttler.dispatcher import RunSummary
from throttler.observability import instrumented, logger, metrics
from throttler.settings import Settings

# Leave room after the last dispatch to settle in-flight batches before Lambda's own timeout.
SETTLE_MARGIN_S = 5.0

COUNTERS = {
    "Dispatched": "dispatched",
    "Succeeded": "succeeded",
    "Retried": "retried",
    "DeadLettered": "dead_lettered",
    "Throttled": "throttled",
    "InvalidMessages": "invalid",
    "ReservationConflicts": "reservation_conflicts",
}


def run_deadline(now: float, settings: Settings, remaining_ms: int | None) -> float:
    deadline = now + settings.run_budget_s
    if remaining_ms is not None:
        deadline = min(deadline, now + remaining_ms / 1000 - settings.worker_timeout_s - SETTLE_MARGIN_S)
    return deadline


def emit_metrics(summary: RunSummary) -> None:
    for name, attr in COUNTERS.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=getattr(summary, attr))
    if summary.invalid_config:
        metrics.add_metric(name="InvalidQuotaConfig", unit=MetricUnit.Count, value=1)
    if summary.lease_held_elsewhere:
        metrics.add_metric(name="LeaseContention", unit=MetricUnit.Count, value=1)


@instrumented
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = Settings.from_env()
    run = composition.build_run(settings, owner=getattr(context, "aws_request_id", None))
    remaining = context.get_remaining_time_in_millis() if hasattr(context, "get_remaining_time_in_millis") else None
    summary = run.run(run_deadline(run.clock.now(), settings, remaining))
    emit_metrics(summary)
    logger.info("run finished", extra={"summary": summary.to_dict()})
    return summary.to_dict()
