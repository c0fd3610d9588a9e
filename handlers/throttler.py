"""Lambda entry point of the throttler: decorators and one call into the library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from throttler.composition import Composition
from throttler.dispatch.run import drive
from throttler.dispatch.summary import RunSummary
from throttler.observability import composed_handler, logger, metrics, remaining_s

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


def run_deadline(now: float, budget_s: float, worker_timeout_s: float, left_s: float | None) -> float:
    """Plan until the budget ends, or early enough to settle the last batches within Lambda's timeout."""
    deadline = now + budget_s
    if left_s is not None:
        deadline = min(deadline, now + left_s - worker_timeout_s - SETTLE_MARGIN_S)
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


def run_once(composition: Composition, event: Any, context: Any) -> dict[str, Any]:
    run = composition.run(owner=getattr(context, "aws_request_id", None))
    left = remaining_s(context)
    s = composition.settings
    summary = drive(run, run_deadline(run.clock.now(), s.run_budget_s, s.worker_timeout_s, left))
    emit_metrics(summary)
    logger.info("run finished", extra={"summary": summary.to_dict()})
    return summary.to_dict()


def make_handler(compose: Callable[[], Composition]) -> Callable[[Any, Any], dict[str, Any]]:
    """The handler for a composition (built on the first invocation, kept while the container is warm)."""
    return composed_handler(compose, run_once)


handler = make_handler(Composition.from_env)
