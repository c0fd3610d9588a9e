"""Lambda entry point of the throttler: decorators and one call into the library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from throttler.composition import Composition
from throttler.dispatch.run import drive
from throttler.dispatch.summary import RunSummary
from throttler.observability import instrumented, logger, metrics, set_stage_dimension

# Leave room after the last dispatch to settle batches in flight before Lambda's own timeout.
SETTLE_MARGIN_S = 5.0

COUNTERS = {
    "Dispatched": "dispatched",
    "Succeeded": "succeeded",
    "Retried": "retried",
    "DeadLettered": "dead_lettered",
    "Throttled": "throttled",
    "InvalidMessages": "invalid",
    "MissedSlots": "missed_slots",
    "ReservationConflicts": "reservation_conflicts",
    "WorkerFailures": "worker_failures",
}


def run_deadline(now: float, budget_s: float, worker_timeout_s: float, remaining_ms: int | None) -> float:
    """Plan until the budget ends, or early enough to settle the last batches within Lambda's timeout."""
    deadline = now + budget_s
    if remaining_ms is not None:
        deadline = min(deadline, now + remaining_ms / 1000 - worker_timeout_s - SETTLE_MARGIN_S)
    return deadline


def emit_metrics(summary: RunSummary) -> None:
    for name, attr in COUNTERS.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=getattr(summary, attr))
    if summary.invalid_config:
        metrics.add_metric(name="InvalidQuotaConfig", unit=MetricUnit.Count, value=1)
    if summary.secrets_unavailable:
        metrics.add_metric(name="SecretsUnavailable", unit=MetricUnit.Count, value=summary.secrets_unavailable)
    if summary.lease_held_elsewhere:
        metrics.add_metric(name="LeaseContention", unit=MetricUnit.Count, value=1)


def make_handler(compose: Callable[[], Composition]) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """The handler for a composition (built on the first invocation, kept while the container is warm)."""
    built: list[Composition] = []

    @instrumented
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if not built:
            built.append(compose())
        set_stage_dimension(built[0].settings.stage)
        composition = built[0]
        run = composition.run(owner=getattr(context, "aws_request_id", None))
        remaining = context.get_remaining_time_in_millis() if hasattr(context, "get_remaining_time_in_millis") else None
        s = composition.settings
        summary = drive(run, run_deadline(run.clock.now(), s.run_budget_s, s.worker_timeout_s, remaining))
        emit_metrics(summary)
        logger.info("run finished", extra={"summary": summary.to_dict()})
        return summary.to_dict()

    return handler


handler = make_handler(Composition.from_env)
